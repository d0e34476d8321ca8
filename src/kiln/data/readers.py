"""Read labeled text from CSV, TSV and JSONL files, failing on the first bad line with its number.

A file is read completely and checked before anything is returned, so training never starts on
half-read data.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class RawExample:
    """One labeled text as found in a file; ``label`` is the raw value as a string."""

    text: str
    label: str
    line: int


def read_examples(
    path: str | os.PathLike[str], text_column: str = "text", label_column: str = "label"
) -> list[RawExample]:
    """Read every example of a CSV (header row), TSV (header row) or JSONL file.

    Raises:
        DataError: unknown extension, unreadable or non-UTF-8 bytes, an empty file, a missing
            column, a malformed line, an empty text or a missing label; the message names the file
            and the line.
    """
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{p}: unknown file type '{p.suffix}'; use one of {sorted(FORMATS)}")
    text = _read_utf8(p)
    rows = _jsonl_rows(p, text, text_column, label_column) if fmt == "jsonl" else _delimited_rows(
        p, text, text_column, label_column, delimiter="," if fmt == "csv" else "\t"
    )
    examples = [_check_row(p, line, t, lab, text_column) for line, t, lab in rows]
    if not examples:
        raise DataError(f"{p} has no examples")
    return examples


def split_holdout(
    examples: Sequence[RawExample], fraction: float, seed: int
) -> tuple[list[RawExample], list[RawExample]]:
    """Hold out ``fraction`` of the examples (at least one) for evaluation, chosen by ``seed``."""
    if len(examples) < 2:
        raise DataError("need at least 2 examples to hold out an evaluation split")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    held_out = [e for i, e in enumerate(examples) if i in held]
    return train, held_out


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: bytes {data[exc.start:exc.end]!r} are not valid UTF-8; "
            "save the file as UTF-8"
        ) from None


def _delimited_rows(
    path: Path, text: str, text_column: str, label_column: str, delimiter: str
) -> Iterator[tuple[int, str, str]]:
    # TSV files (GLUE style) do not quote; CSV files follow RFC 4180 quoting.
    stream = io.StringIO(text, newline="")
    reader = (csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE) if delimiter == "\t"
              else csv.reader(stream, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty: expected a header row naming the columns")
        header = [h.strip() for h in header]
        for column, key in ((text_column, "text_column"), (label_column, "label_column")):
            if column not in header:
                raise DataError(
                    f"{path} line 1: no column '{column}' in the header {header}; "
                    f"set data.{key} to one of them"
                )
        i_text, i_label = header.index(text_column), header.index(label_column)
        start = reader.line_num + 1
        for row in reader:
            if row:  # blank lines are not examples
                if len(row) != len(header):
                    raise DataError(
                        f"{path} line {start}: expected {len(header)} fields like the header, "
                        f"found {len(row)}"
                    )
                yield start, row[i_text], row[i_label]
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: malformed {path.suffix} ({exc})") from None


def _jsonl_rows(
    path: Path, text: str, text_column: str, label_column: str
) -> Iterator[tuple[int, str, str]]:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(obj).__name__}")
        for key, name in ((text_column, "text_column"), (label_column, "label_column")):
            if key not in obj:
                raise DataError(
                    f"{path} line {number}: no key '{key}' (keys: {sorted(obj)}); set data.{name}"
                )
        text_value, label = obj[text_column], obj[label_column]
        if not isinstance(text_value, str):
            raise DataError(f"{path} line {number}: '{text_column}' must be a string")
        if label is None:
            label = ""
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(
                f"{path} line {number}: label {label!r} must be a string or an integer"
            )
        yield number, text_value, str(label)


def _check_row(path: Path, line: int, text: str, label: str, text_column: str) -> RawExample:
    text, label = text.strip(), label.strip()
    if not text:
        raise DataError(f"{path} line {line}: empty text in '{text_column}'")
    if not label:
        raise DataError(f"{path} line {line}: missing label")
    return RawExample(text=text, label=label, line=line)
