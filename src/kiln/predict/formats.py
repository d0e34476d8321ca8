"""The files `kiln predict` reads and writes: CSV, TSV, JSONL and Parquet, read in chunks of rows
(so memory stays flat whatever the input's size) and written in parts that join into one file.

A row's place in the input is its physical line for CSV, TSV and JSONL (where its record starts;
the header is line 1) and its 1-based row number for Parquet.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import DataError, shorten, shorten_list
from kiln.files import write_atomic

INPUTS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
          ".parquet": "parquet", ".pq": "parquet"}
OUTPUTS = INPUTS
MISSING = object()  # the text cell of a JSONL object without the text key


@dataclass(frozen=True)
class InputFile:
    """An input file: its format, and how far along it a read is measured (bytes, or rows for
    Parquet, whose size in rows is known up front)."""

    path: Path
    fmt: str
    total: int
    unit: str  # "B" or "rows"

    @property
    def where(self) -> str:
        return "row" if self.fmt == "parquet" else "line"


@dataclass
class Chunk:
    """Consecutive rows of the input: their cells (``records``, or the Arrow ``table`` they were
    read as), each row's line, and how far into the input (in ``InputFile.unit``) the read is."""

    columns: list[str]
    lines: list[int]
    position: int
    records: list[dict[str, Any]] = field(default_factory=list)
    table: Any = None  # pyarrow.Table for Parquet input

    def texts(self, column: str) -> list[object]:
        if self.table is not None:
            if column not in self.table.column_names:
                return [MISSING] * len(self.lines)
            values: list[object] = self.table.column(column).to_pylist()
            return values
        return [r.get(column, MISSING) for r in self.records]

    def rows(self, keep: Sequence[int]) -> list[dict[str, Any]]:
        if self.table is not None:
            rows: list[dict[str, Any]] = self.table.take(list(keep)).to_pylist()
            return rows
        return [self.records[i] for i in keep]


def open_input(path: str | os.PathLike[str]) -> InputFile:
    """The input file at ``path``, checked to exist and to have a known extension.

    Raises:
        DataError: missing file, unknown extension or unreadable Parquet.
    """
    p = Path(path)
    fmt = INPUTS.get(p.suffix.lower())
    if fmt is None:
        raise DataError(f"{p}: unknown file type {shorten(p.suffix)}; use one of {sorted(INPUTS)}")
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    if fmt != "parquet":
        return InputFile(p, fmt, p.stat().st_size, "B")
    return InputFile(p, fmt, _parquet_file(p).metadata.num_rows, "rows")


def output_format(path: Path) -> str:
    """The output format chosen by ``path``'s extension.

    Raises:
        DataError: an extension kiln cannot write.
    """
    fmt = OUTPUTS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot write {shorten(path.suffix)} files; name the output "
                        f"with one of {sorted(OUTPUTS)}")
    return fmt


def read_chunks(source: InputFile, chunk_rows: int) -> Iterator[Chunk]:
    """The rows of ``source`` in chunks of ``chunk_rows``; at least one chunk, maybe empty.

    Raises:
        DataError: a malformed file (names the line); bad cells are the caller's to judge.
    """
    if source.fmt == "parquet":
        return _parquet_chunks(source.path, chunk_rows)
    if source.fmt == "jsonl":
        return _jsonl_chunks(source.path, chunk_rows)
    return _delimited_chunks(source.path, source.fmt, chunk_rows)


class _CountingReader(io.RawIOBase):
    """A binary file that counts the bytes read from it (progress through a text file)."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)
        self.count += n
        return n


def _delimited_chunks(path: Path, fmt: str, chunk_rows: int) -> Iterator[Chunk]:
    with open(path, "rb") as raw:
        counter = _CountingReader(raw)
        text = io.TextIOWrapper(io.BufferedReader(counter), encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter="," if fmt == "csv" else "\t", strict=True,
                            quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
        start = 1  # the line where the record being read starts
        try:
            columns = _header(path, next(reader, None))
            start = reader.line_num + 1
            chunk = Chunk(columns, [], 0)
            for row in reader:
                if row:  # blank lines are not rows
                    if len(row) != len(columns):
                        raise DataError(f"{path} line {start}: expected {len(columns)} fields "
                                        f"like the header, found {len(row)}")
                    chunk.records.append(dict(zip(columns, row)))
                    chunk.lines.append(start)
                    if len(chunk.lines) == chunk_rows:
                        chunk.position = counter.count
                        yield chunk
                        chunk = Chunk(columns, [], 0)
                start = reader.line_num + 1
            if chunk.lines or not chunk.position:
                chunk.position = counter.count
                yield chunk
        except csv.Error as exc:
            raise DataError(f"{path} line {start}: malformed {fmt.upper()} ({exc})") from None
        except UnicodeDecodeError:
            raise DataError(f"{path} line {start}: bytes that are not valid UTF-8; save the "
                            "file as UTF-8") from None


def _header(path: Path, header: list[str] | None) -> list[str]:
    if header is None:
        raise DataError(f"{path} is empty: expected a header row naming the columns")
    names = [h.strip() for h in header]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path} line 1: columns {shorten_list(repeated)} appear twice in the "
                        f"header; rename them")
    return names


def _jsonl_chunks(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    chunk, position, columns = Chunk([], [], 0), 0, None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            position += len(raw)
            line = _decode(path, number, raw)
            if not line.strip():
                continue
            obj = _json_object(path, number, line)
            if columns is None:
                columns = list(obj)
                chunk.columns = columns
            chunk.records.append(obj)
            chunk.lines.append(number)
            if len(chunk.lines) == chunk_rows:
                chunk.position = position
                yield chunk
                chunk = Chunk(columns, [], 0)
    chunk.position = position
    if chunk.lines or columns is None:
        yield chunk


def _decode(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} line {number}: bytes that are not valid UTF-8; save the file "
                        "as UTF-8") from None


def _json_object(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise DataError(f"{path} line {number}: not valid JSON ({reason})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} line {number}: expected a JSON object, not "
                        f"{type(obj).__name__}")
    return obj


def _parquet_file(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable Parquet file: {exc}") from None


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow as pa

    parquet = _parquet_file(path)
    columns, done = list(parquet.schema_arrow.names), 0
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        table = pa.Table.from_batches([batch])
        lines = list(range(done + 1, done + table.num_rows + 1))
        done += table.num_rows
        yield Chunk(columns, lines, done, table=table)
    if not done:
        yield Chunk(columns, [], 0, table=parquet.schema_arrow.empty_table())


def write_part(path: Path, fmt: str, chunk: Chunk, keep: Sequence[int],
               added: dict[str, list[Any]]) -> None:
    """Write the rows ``keep`` of ``chunk`` with the ``added`` columns (one value per kept row)
    to ``path`` atomically, as a part of the output (no CSV header: the join writes it).

    Raises:
        DataError: a TSV cell holding a tab or line break (TSV cannot quote).
    """
    if fmt == "parquet":
        write_atomic(path, lambda tmp: _write_parquet_part(tmp, chunk, keep, added))
    elif fmt == "jsonl":
        write_atomic(path, lambda tmp: _write_jsonl_part(tmp, chunk.rows(keep), added))
    else:
        write_atomic(path, lambda tmp: _write_delimited_part(tmp, fmt, chunk, keep, added))


def _write_parquet_part(tmp: Path, chunk: Chunk, keep: Sequence[int],
                        added: dict[str, list[Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if chunk.table is not None:
        table = chunk.table.take(list(keep))
    else:
        rows = chunk.rows(keep)
        table = (pa.Table.from_pylist(rows) if rows else
                 pa.table({c: pa.array([], pa.string()) for c in chunk.columns}))
    for i, (name, values) in enumerate(added.items()):  # the label, then probabilities
        table = table.append_column(name, pa.array(values, pa.string() if i == 0 else pa.float32()))
    pq.write_table(table, tmp)


def _write_jsonl_part(tmp: Path, rows: list[dict[str, Any]], added: dict[str, list[Any]]) -> None:
    names = list(added)
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for i, row in enumerate(rows):
            out = {**row, **{n: added[n][i] for n in names}}
            f.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")


def _write_delimited_part(tmp: Path, fmt: str, chunk: Chunk, keep: Sequence[int],
                          added: dict[str, list[Any]]) -> None:
    columns, names = chunk.columns, list(added)
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = _writer(f, fmt)
        try:
            for i, row in enumerate(chunk.rows(keep)):
                writer.writerow([_cell(row.get(c)) for c in columns]
                                + [added[n][i] for n in names])
        except csv.Error:
            raise DataError(f"input line {chunk.lines[keep[i]]}: a cell holds a tab or line break, which "
                            "TSV cannot write; name the output .csv, .jsonl or .parquet") from None


def _writer(f: Any, fmt: str) -> Any:
    if fmt == "csv":
        return csv.writer(f, lineterminator="\n")
    return csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None,
                      lineterminator="\n")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def join_parts(out: Path, fmt: str, parts: list[Path], header: list[str]) -> None:
    """Join ``parts`` (in order) into ``out`` atomically; ``header``: the output's columns, for
    a CSV/TSV header and for a Parquet file with no rows.

    Raises:
        DataError: Parquet parts whose columns' types do not agree (JSONL input with mixed types).
    """
    if fmt == "parquet":
        write_atomic(out, lambda tmp: _join_parquet(tmp, parts, header))
    else:
        write_atomic(out, lambda tmp: _join_text(tmp, fmt, parts, header))


def _join_text(tmp: Path, fmt: str, parts: list[Path], header: list[str]) -> None:
    with open(tmp, "wb") as f:
        if fmt != "jsonl":
            text = io.StringIO(newline="")
            _writer(text, fmt).writerow(header)
            f.write(text.getvalue().encode("utf-8"))
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)


def _join_parquet(tmp: Path, parts: list[Path], header: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [pq.ParquetFile(p) for p in parts if pq.ParquetFile(p).metadata.num_rows]
    schema = (files[0].schema_arrow if files else
              pa.schema([(c, pa.string()) for c in header]))
    with pq.ParquetWriter(tmp, schema) as writer:
        if not files:
            writer.write_table(schema.empty_table())
        for part in files:
            for batch in part.iter_batches():
                try:
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                    raise DataError(f"the rows' columns change type along the input ({exc}); "
                                    "name the output .csv or .jsonl instead") from None
