"""Label names and class indices: names kept in one fixed order that the model and manifest share.

Labels are compared exactly as written. Two spellings that differ only by surrounding spaces
(``'positive'`` and ``' positive'``) would silently become two classes, so inferring the names
refuses them; a label that is not one of the configured names gets a hint when it differs from
one only by surrounding spaces or by case. Labels that differ by case stay distinct classes.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence

from kiln.data.readers import RawExample
from kiln.errors import DataError, shorten, shorten_list

_INTEGER = re.compile(r"-?[0-9]+")  # as written: no spaces, signs, underscores or other digits


def infer_label_names(
    examples: Sequence[RawExample], configured: Sequence[str] | None,
    path: str | os.PathLike[str] | None = None,
) -> tuple[str, ...]:
    """The label names in class-index order; ``path`` is the file the examples came from.

    Configured names win. Otherwise integer labels sort numerically (so 0..K-1 keep their index)
    and names sort alphabetically, which makes the order independent of the file's row order.

    Raises:
        DataError: fewer than two distinct labels, or two spellings of one label that differ only
            by surrounding spaces (naming both and a line of each).
    """
    if configured is not None:
        return tuple(configured)
    found = {e.label for e in examples}
    source = f"{path}: the training data" if path is not None else "the training data"
    if len(found) < 2:
        raise DataError(f"{source} has only the label(s) {shorten_list(sorted(found))}; need at "
                        "least 2 different labels")
    _refuse_spacing_variants(examples, found, path)
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
    by_position = not any(map(_is_int, names))  # integers index names only when no name is one
    out = []
    for e in examples:
        if e.label in index:
            out.append(index[e.label])
        elif by_position and _is_int(e.label) and 0 <= int(e.label) < len(names):
            out.append(int(e.label))
        else:
            raise DataError(f"{path} line {e.line}: label {shorten(e.label)} is not one of "
                            f"{shorten_list(list(names))}{_near_miss(e.label, names)}")
    return out


def _refuse_spacing_variants(
    examples: Sequence[RawExample], found: set[str], path: str | os.PathLike[str] | None
) -> None:
    if len({label.strip() for label in found}) == len(found):
        return
    first: dict[str, RawExample] = {}  # by the label without its surrounding spaces
    for e in examples:
        seen = first.setdefault(e.label.strip(), e)
        if seen.label != e.label:
            raise DataError(
                f"{path or 'the training data'} line {e.line}: label {shorten(e.label)} differs "
                f"from {shorten(seen.label)} (line {seen.line}) only by surrounding spaces, so "
                "they would become two classes; write the label the same way on every line"
            )


def _near_miss(label: str, names: Sequence[str]) -> str:
    """A hint for a label that is not one of ``names``: the name it most likely means."""
    for name in names:
        if name.strip() == label.strip():
            return f"; it differs from {shorten(name)} only by surrounding spaces"
    for name in names:
        if name.casefold() == label.casefold():
            return f"; it differs from {shorten(name)} only by case"
    if label != label.strip():
        return "; note the surrounding spaces"
    close = difflib.get_close_matches(label, names, n=1) if len(label) <= 200 else []
    return f"; did you mean {shorten(close[0])}?" if close else ""


def _is_int(text: str) -> bool:
    return _INTEGER.fullmatch(text) is not None
