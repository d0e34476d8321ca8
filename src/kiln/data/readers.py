"""Read labeled text from CSV, TSV and JSONL files, failing on the first bad line with its number.

A file is read completely and checked before anything is returned, so training never starts on
half-read data. Every problem is a ``DataError`` naming the file and the physical line (a line ends
at LF, CRLF or CR) where the offending record starts, or where a bad quoted field opened.

All formats: UTF-8 with or without a byte-order mark, and LF, CRLF or CR line ends, are read.
Refused: bytes that are not UTF-8 (a UTF-16 file included), NUL characters, texts that are empty
or only spaces, and missing labels. Texts lose their surrounding whitespace; labels are kept
exactly as written (``labels`` refuses two spellings that differ only by surrounding spaces).

CSV is RFC 4180, with a header row whose names (stripped of surrounding spaces) must be unique:

- A field that starts with ``"`` is quoted: it may hold commas, line breaks and ``""`` (one
  quote), and ends at a ``"`` followed by a comma or the end of the line. A quoted field that spans
  lines is allowed; its record is numbered by the line where it starts.
- Refused, naming the line where the quoted field opened: a quoted field still open at the end of
  the file (an unbalanced quote that would swallow the lines after it), and a closing quote
  followed by anything but a comma or a line end (``"say "hi""``: inner quotes not doubled).
- RFC 4180 forbids a quote inside an unquoted field. Only a quote at the start of a field has a
  meaning, so such a quote is read as a plain character (``5" screen``), as Python's csv module
  does, except where quotes inside unquoted fields enclose a comma (``he said "hi, there"``): the
  writer meant them as quoting but the comma splits the field, so that line is refused.
- Every record has as many fields as the header; blank lines are skipped. A field may be at
  most 131,072 characters long (the csv module's limit).

TSV (GLUE style) is tab-separated with a header row and no quoting: ``"`` is a plain character.

JSONL is one JSON object per line (blank lines skipped). The text must be a string; the label a
string or an integer (``true``/``false`` are not labels; ``null`` is a missing label). Refused: a
line nested deeper than ``MAX_JSON_DEPTH``, the text or label key written twice, and ``\\ud800``
(a lone surrogate, not valid Unicode) or ``\\u0000`` escapes in the text or the label.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import DataError, shorten, shorten_list

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_JSON_DEPTH = 100  # deeper lines are refused before parsing, so json never recurses too far

# A quote inside an unquoted field (neither after a comma or line start, nor part of a ""), then a
# comma and a quote that ends a field, with no other quote between: `he said "hi, there",pos`.
# Inside a well-formed quoted field every quote is doubled or closes it: no match there.
# (It starts with the quote, so the search skips from quote to quote; no part of it can match in
# two ways, so a search takes linear time on any input.)
_QUOTES_AROUND_COMMA = re.compile(r'"(?<=[^,"\r\n]")[^,"\r\n][^,"\r\n]*,[^"\r\n]*"(?=[,\r\n]|\Z)')
# One CSV field, quoted or not; group 1 is empty for a quoted field that never closes.
_CSV_FIELD = re.compile(r'"[^"]*(?:""[^"]*)*("?)|[^,\r\n]*')
_decode_json = json.JSONDecoder().decode
# A JSON string (to the end of the line if it never closes: no retries, linear time) or a bracket.
_JSON_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')
_JSON_TYPES = {dict: "an object", list: "an array", bool: "a boolean", type(None): "null",
               str: "a string"}


@dataclass(frozen=True)
class RawExample:
    """One labeled text as found in a file; ``label`` is the raw value as a string, as written."""

    text: str
    label: str
    line: int


def read_examples(
    path: str | os.PathLike[str], text_column: str = "text", label_column: str = "label"
) -> list[RawExample]:
    """Read every example of a CSV (header row), TSV (header row) or JSONL file.

    Raises:
        DataError: unknown extension, unreadable, non-UTF-8 or NUL bytes, an empty file, a missing
            or repeated column, a malformed line, an empty text or a missing label; the message
            names the file and the line.
    """
    p = Path(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{p}: unknown file type {shorten(p.suffix)}; use one of {sorted(FORMATS)}")
    text = _read_text(p)
    rows = _jsonl_rows(p, text, text_column, label_column) if fmt == "jsonl" else _delimited_rows(
        p, text, text_column, label_column, delimiter="," if fmt == "csv" else "\t"
    )
    examples = [_check_row(p, line, t, lab, text_column) for line, t, lab in rows]
    if not examples:
        raise DataError(f"{p} has no examples")
    return examples


def split_holdout(
    examples: Sequence[RawExample], fraction: float, seed: int,
    path: str | os.PathLike[str] | None = None,
) -> tuple[list[RawExample], list[RawExample]]:
    """Hold out ``fraction`` of the examples (at least one) for evaluation, chosen by ``seed``.

    Raises:
        DataError: fewer than 2 examples; names ``path``, the file they came from.
    """
    if len(examples) < 2:
        source = path if path is not None else "the training data"
        raise DataError(f"{source} has {len(examples)} example(s); need at least 2 to hold out an "
                        "evaluation split (or set data.eval to an evaluation file)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    held_out = [e for i, e in enumerate(examples) if i in held]
    return train, held_out


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read: {exc.strerror}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path} is UTF-16 text (it starts with a UTF-16 byte-order mark); "
                        "save it as UTF-8")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path} line {_line_at(data, nul)}: NUL byte (\\x00); the file looks "
                        "binary or UTF-16: save it as UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} line {_line_at(data, exc.start)}: bytes {data[exc.start:exc.end]!r} are not "
            "valid UTF-8; save the file as UTF-8"
        ) from None


def _line_at(data: str | bytes, offset: int) -> int:
    """The 1-based line of ``offset``, counting LF, CRLF and CR as line ends."""
    head = data[:offset]
    text = head.decode("latin-1") if isinstance(head, bytes) else head  # line ends are ASCII
    return text.count("\n") + text.count("\r") - text.count("\r\n") + 1


def _delimited_rows(
    path: Path, text: str, text_column: str, label_column: str, delimiter: str
) -> Iterator[tuple[int, str, str]]:
    # TSV files (GLUE style) do not quote; CSV files follow RFC 4180 quoting (see the docstring).
    quoted = delimiter == ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True,
                        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
    start = 1  # the line where the record being read starts
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty: expected a header row naming the columns")
        width, i_text, i_label = _header_columns(path, header, text_column, label_column)
        # 0 = none; the search is one pass in C, so clean files pay nothing per row
        misquoted = _line_of_match(_QUOTES_AROUND_COMMA, text) if quoted else 0
        if 0 < misquoted <= reader.line_num:
            raise DataError(_bad_record(path, text, 1, reader.line_num, len(header), len(header)))
        start = reader.line_num + 1
        for row in reader:
            if row:  # blank lines are not examples
                end = reader.line_num
                if len(row) != width or start <= misquoted <= end:
                    raise DataError(_bad_record(path, text, start, end, width, len(row)))
                yield start, row[i_text], row[i_label]
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(_bad_quoting(path, text, start, exc)) from None


def _header_columns(
    path: Path, header: list[str], text_column: str, label_column: str
) -> tuple[int, int, int]:
    """The header's width and the indices of the text and label columns."""
    names = [h.strip() for h in header]
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in index:
            raise DataError(f"{path} line 1: column {shorten(name)} appears twice in the header "
                            f"(columns {index[name] + 1} and {i + 1}); rename one of them")
        index[name] = i
    for column, key in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in index:
            raise DataError(f"{path} line 1: no column {shorten(column)} in the header "
                            f"{shorten_list(names)}; set data.{key} to one of them")
    return len(names), index[text_column], index[label_column]


def _line_of_match(pattern: re.Pattern[str], text: str) -> int:
    found = pattern.search(text) if '"' in text else None
    return _line_at(text, found.start()) if found else 0


def _lines(text: str, first: int, last: int | None = None) -> str:
    """Physical lines ``first``..``last`` (1-based, inclusive; ``None``: to the end) of ``text``."""
    return "".join(itertools.islice(io.StringIO(text, newline=""), first - 1, last))


def _quoted_fields(record: str, line: int) -> Iterator[tuple[int, int, str]]:
    """(opening line, closing line, the character after the closing quote) of each quoted field of
    the CSV record at the start of ``record``, whose first line is ``line``; closing line 0 when
    the field is never closed."""
    pos = 0
    while True:
        field = _CSV_FIELD.match(record, pos)
        assert field is not None  # the pattern matches the empty string
        pos = field.end()
        if field.group().startswith('"'):
            if not field.group(1):
                yield line, 0, ""
                return
            opened, line = line, line + _line_at(field.group(), len(field.group())) - 1
            yield opened, line, record[pos:pos + 1]
        if not record.startswith(",", pos):  # a line end, the end of the file, or a stray char
            return
        pos += 1


def _bad_quoting(path: Path, text: str, start: int, exc: csv.Error) -> str:
    """The message for a CSV record the csv module refused, naming where its quoted field opened."""
    for opened, closed, after in _quoted_fields(_lines(text, start), start):
        if not closed:
            return (f"{path} line {opened}: a quoted field opens here and is never closed, so it "
                    "would swallow every line after it; close it with \" (write a quote inside "
                    "it as \"\")")
        if after not in ("", ",", "\r", "\n"):
            where = "" if closed == opened else f" on line {closed}"
            return (f"{path} line {opened}: the quoted field opened here ends{where} with a \" "
                    f"followed by {after!r}; inside a quoted field write a quote as \"\"")
    if "field limit" in str(exc):
        return f"{path} line {start}: a field is longer than {csv.field_size_limit():,} characters"
    return f"{path} line {start}: malformed {path.suffix} ({exc})"


def _bad_record(path: Path, text: str, start: int, end: int, width: int, found: int) -> str:
    """The message for a record with the wrong number of fields or misplaced quotes."""
    record = _lines(text, start, end)
    misquoted = _QUOTES_AROUND_COMMA.search(record)
    if misquoted:
        line = start + _line_at(record, misquoted.start()) - 1
        return (f"{path} line {line}: quotes inside an unquoted field enclose a comma "
                f"({shorten(misquoted.group())}), which splits the field; start the field "
                "with a quote and double the quotes inside it")
    message = f"{path} line {start}: expected {width} fields like the header, found {found}"
    spanning = [(o, c) for o, c, _ in _quoted_fields(record, start) if c != o]
    if spanning:
        opened, closed = spanning[0]
        message += (f"; the quoted field opened on line {opened} runs to line {closed}: is its "
                    "closing quote missing?")
    return message


def _jsonl_rows(
    path: Path, text: str, text_column: str, label_column: str
) -> Iterator[tuple[int, str, str]]:
    if "\r" in text:  # CRLF and CR line ends; a raw CR is not allowed inside a JSON string anyway
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    objects = len(lines) - lines.count("")  # at most; each needs at least one "{"
    # Whole-file counts (one pass in C each) skip per-line checks that cannot fire: a key can be
    # repeated only if written more often than there are objects, deep nesting needs brackets,
    # and only \u escapes put surrogates or NULs into decoded strings.
    repeated = [k for k in dict.fromkeys((text_column, label_column))
                if text.count(json.dumps(k, ensure_ascii=False)) > objects]
    deep = text.count("[") + text.count("{") > objects + MAX_JSON_DEPTH - 1
    escapes = "\\u" in text
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = _json_object(path, number, line, repeated, deep)
        if text_column not in obj or label_column not in obj:
            key, name = ((text_column, "text_column") if text_column not in obj
                         else (label_column, "label_column"))
            raise DataError(f"{path} line {number}: no key {shorten(key)} "
                            f"(keys: {shorten_list(sorted(obj))}); set data.{name}")
        text_value, label = obj[text_column], obj[label_column]
        if type(text_value) is not str:
            raise DataError(f"{path} line {number}: {shorten(text_column)} must be a string, "
                            f"not {_json_type(text_value)}")
        if type(label) is not str:
            label = _json_label(path, number, label)
        if escapes and "\\u" in line:
            _check_unicode(path, number, text_column, text_value)
            _check_unicode(path, number, label_column, label)
        yield number, text_value, label


def _json_label(path: Path, number: int, label: object) -> str:
    """A JSON label that is not a string, as a string: an integer, or "" for null (missing)."""
    if label is None:
        return ""
    if type(label) is int:  # not bool, which is an int too
        return str(label)
    shown = f" ({label!r})" if isinstance(label, float) else ""
    raise DataError(f"{path} line {number}: label must be a string or an integer, not "
                    f"{_json_type(label)}{shown}")


def _json_object(
    path: Path, number: int, line: str, repeated: list[str], deep: bool
) -> dict[str, object]:
    """The JSON object on ``line``, refusing non-objects, nesting deeper than ``MAX_JSON_DEPTH``
    (checked when ``deep``: some line may be) and a key of ``repeated`` written twice."""
    if deep and line.count("[") + line.count("{") > MAX_JSON_DEPTH and _nests_too_deep(line):
        raise _too_deep(path, number)
    try:
        obj = _decode_json(line)
    except RecursionError:  # a backstop: the whole-file test above assumes well-formed lines
        raise _too_deep(path, number) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
                        ) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        reason = str(exc).split(":")[0]
        raise DataError(f"{path} line {number}: not valid JSON ({reason})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} line {number}: expected a JSON object, not "
                        f"{_json_type(obj)}")
    for key in repeated:
        if line.count(json.dumps(key, ensure_ascii=False)) > 1:
            pairs = json.loads(line, object_pairs_hook=lambda p: p)
            if [k for k, _ in pairs].count(key) > 1:
                raise DataError(f"{path} line {number}: key {shorten(key)} appears twice in the "
                                "object; keep one")
    return obj


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), "a number")


def _too_deep(path: Path, number: int) -> DataError:
    return DataError(f"{path} line {number}: JSON nested more than {MAX_JSON_DEPTH} levels deep; "
                     "the text must be a string and the label a string or an integer")


def _nests_too_deep(line: str) -> bool:
    """Whether the brackets of a JSON line, outside strings, nest deeper than MAX_JSON_DEPTH."""
    depth = 0
    for token in _JSON_STRING_OR_BRACKET.finditer(line):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif bracket in ("]", "}"):
            depth -= 1
    return False


def _check_unicode(path: Path, number: int, key: str, value: str) -> None:
    if "\x00" in value:
        raise DataError(f"{path} line {number}: {shorten(key)} holds a NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"{path} line {number}: {shorten(key)} holds a lone surrogate "
            f"({value[exc.start]!r}), which is not valid Unicode; write the character itself or "
            "a complete surrogate pair"
        ) from None


def _check_row(path: Path, line: int, text: str, label: str, text_column: str) -> RawExample:
    text = text.strip()
    if not text:
        raise DataError(f"{path} line {line}: empty text in {shorten(text_column)}")
    if not label.strip():
        raise DataError(f"{path} line {line}: missing label")
    return RawExample(text=text, label=label, line=line)
