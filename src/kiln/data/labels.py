"""Label names and class indices: names kept in one fixed order that the model and manifest share."""

from __future__ import annotations

import os
from collections.abc import Sequence

from kiln.data.readers import RawExample
from kiln.errors import DataError


def infer_label_names(
    examples: Sequence[RawExample], configured: Sequence[str] | None
) -> tuple[str, ...]:
    """The label names in class-index order.

    Configured names win. Otherwise integer labels sort numerically (so 0..K-1 keep their index)
    and names sort alphabetically, which makes the order independent of the file's row order.

    Raises:
        DataError: fewer than two distinct labels.
    """
    if configured is not None:
        return tuple(configured)
    found = {e.label for e in examples}
    if len(found) < 2:
        raise DataError(f"the training data has only the label(s) {sorted(found)}; need at least 2")
    if all(_is_int(label) for label in found):
        return tuple(sorted(found, key=int))
    return tuple(sorted(found))


def encode_labels(
    examples: Sequence[RawExample], names: Sequence[str], path: str | os.PathLike[str]
) -> list[int]:
    """Map each example's label to its class index: by name, or an integer indexing ``names``.

    Raises:
        DataError: a label that is neither a known name nor an index in range, naming file and line.
    """
    index = {name: i for i, name in enumerate(names)}
    out = []
    for e in examples:
        if e.label in index:
            out.append(index[e.label])
        elif _is_int(e.label) and 0 <= int(e.label) < len(names) and not any(map(_is_int, names)):
            out.append(int(e.label))
        else:
            raise DataError(f"{path} line {e.line}: label '{e.label}' is not one of {list(names)}")
    return out


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
