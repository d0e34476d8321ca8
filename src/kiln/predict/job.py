"""`kiln predict`: label every row of a file with a run's verified artifact, on one machine.

The input is read in chunks (``chunk_rows``); each chunk is scored in batches of texts of similar
length and written as one part, atomically, into a hidden folder beside the output, with a small
record of its row and label counts. A job that is killed and run again skips the parts already
written; at the end the parts are joined into the output atomically and the folder is removed, so
the output is the same whether or not the job was interrupted. The folder's ``job.json`` records
the input, model and options; a rerun with anything different is refused (``fresh`` starts over).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import DataError, KilnError, shorten, shorten_list
from kiln.files import write_text_atomic
from kiln.models import read_manifest
from kiln.predict.formats import (
    MISSING,
    Chunk,
    InputFile,
    join_parts,
    open_input,
    output_format,
    read_chunks,
    write_part,
)
from kiln.predict.progress import Progress
from kiln.runtime import (
    Predictor,
    artifact_folder,
    default_artifact,
    load_predictor,
    pad_batch,
    softmax,
)

JOB_FORMAT = 1
ON_ERROR = ("stop", "skip")


@dataclass(frozen=True)
class PredictOptions:
    """How to score a file; defaults are the CLI's."""

    text_column: str | None = None  # None: the column the model was trained on
    artifact: str | None = None  # None: the verified artifact `kiln serve` would pick
    batch_size: int = 64  # texts per model call, grouped by length within a chunk
    chunk_rows: int = 10_000  # rows read, scored and written as one part
    probabilities: bool = False  # also one prob_<label> column per class
    on_error: str = "stop"  # an empty or non-text cell: "stop" (exit 2) or "skip" it
    prefix: str = ""  # put before the added columns' names (when the input has a `label` column)
    fresh: bool = False  # ignore parts left by an earlier run of the job
    threads: int | None = None  # CPU threads for the model (None: the runtime's default)
    progress: bool | None = None  # None: a bar on a terminal, plain lines otherwise; False: off


@dataclass
class PredictSummary:
    """What a job did: rows written, rows skipped as bad, seconds, label counts, files."""

    output: Path
    rows: int
    skipped: int
    seconds: float
    label_counts: dict[str, int]
    artifact: str
    errors_file: Path | None = None
    resumed_parts: int = 0  # parts found done from an earlier run
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class JobMismatch(KilnError):
    """The parts left beside the output belong to a job with a different input, model or options."""


def default_output(data: str | os.PathLike[str]) -> Path:
    """``<stem>.predictions.<ext>`` beside the input."""
    p = Path(data)
    return p.with_name(f"{p.stem}.predictions{p.suffix}")


def parts_folder(out: Path) -> Path:
    return out.with_name(f".{out.name}.parts")


def predict_file(
    run: str | os.PathLike[str], data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None, options: PredictOptions | None = None,
    *, after_part: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Label every row of ``data`` (CSV, TSV, JSONL or Parquet) and write them with the added
    columns to ``out`` (its extension picks the format; default: `default_output`).

    ``after_part(i)`` is called once part ``i`` is written (tests use it to stop a job midway).

    Raises:
        DataError: a malformed input, or a bad text cell when ``on_error`` is "stop".
        JobMismatch: parts of a different job are in the way (use ``fresh``).
        RunDirError: no model at ``run``, or an unusable artifact.
    """
    opts = options or PredictOptions()
    job = open_job(run, data, out, opts)
    predictor = load_predictor(job.folder, job.artifact, threads=opts.threads)
    started = time.monotonic()
    progress = Progress(job.source.total, job.source.unit, opts.progress,
                        enabled=opts.progress is not False)
    try:
        stats, header = _run_chunks(job.source, predictor, job.parts, job.fmt, job.column,
                                    job.names, opts, job.done, progress, after_part)
    finally:
        progress.close()
    summary = _finish(job.target, job.fmt, job.parts, stats, header, job.source)
    summary.seconds, summary.artifact, summary.resumed_parts = (time.monotonic() - started,
                                                                job.artifact, job.done)
    return summary


@dataclass(frozen=True)
class Job:
    """A prediction job resolved and checked before any scoring, whichever engine scores it."""

    source: InputFile
    target: Path  # the output file
    fmt: str  # the output's format
    folder: Path  # the model's artifact folder
    artifact: str
    column: str  # the text column
    labels: list[str]
    names: list[str]  # the columns it adds
    parts: Path  # the folder of finished parts
    done: int  # parts an earlier run of the same job finished


def open_job(run: str | os.PathLike[str], data: str | os.PathLike[str],
             out: str | os.PathLike[str] | None, opts: PredictOptions) -> Job:
    """Resolve the input, output, model and artifact of a job, and its parts folder (resumed,
    started or, with ``fresh``, started over).

    Raises:
        DataError, JobMismatch, RunDirError, KilnError: as `predict_file` says.
    """
    source = open_input(data)
    target = Path(out) if out is not None else default_output(source.path)
    fmt = output_format(target)
    _check_options(opts)
    folder = artifact_folder(run)
    manifest = read_manifest(folder)
    artifact = opts.artifact or default_artifact(folder, manifest)
    column = opts.text_column or manifest.get("data", {}).get("text_column", "text")
    labels = list(manifest["labels"])
    parts = parts_folder(target)
    done = _open_parts(parts, _job_record(source, folder, artifact, column, fmt, opts), opts.fresh)
    return Job(source=source, target=target, fmt=fmt, folder=folder, artifact=artifact,
               column=column, labels=labels, names=_added_names(labels, opts), parts=parts,
               done=done)


def _check_options(opts: PredictOptions) -> None:
    if opts.on_error not in ON_ERROR:
        raise KilnError(f"on_error must be one of {list(ON_ERROR)}, not {opts.on_error!r}")
    if opts.batch_size < 1 or opts.chunk_rows < 1:
        raise KilnError("batch size and chunk rows must be at least 1")


def _job_record(source: InputFile, folder: Path, artifact: str, column: str, fmt: str,
                opts: PredictOptions) -> dict[str, Any]:
    """What makes two runs the same job: the input file, the model and every option that
    changes what is written."""
    stat = source.path.stat()
    model = hashlib.sha256((folder / "kiln.json").read_bytes()).hexdigest()
    return {"format": JOB_FORMAT, "input": str(source.path.resolve()), "input_bytes": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns, "model": str(folder.resolve()),
            "model_manifest_sha256": model, "artifact": artifact, "text_column": column,
            "output_format": fmt, "batch_size": opts.batch_size, "chunk_rows": opts.chunk_rows,
            "probabilities": opts.probabilities, "on_error": opts.on_error, "prefix": opts.prefix}


def _open_parts(parts: Path, job: dict[str, Any], fresh: bool) -> int:
    """Make ``parts`` ready for ``job``; returns how many parts an earlier run finished."""
    record = parts / "job.json"
    if fresh and parts.exists():
        shutil.rmtree(parts)
    if parts.exists() and record.exists() and (parts / "part-000000.json").exists():
        old = json.loads(record.read_text(encoding="utf-8"))
        changed = sorted(k for k in job.keys() | old.keys() if job.get(k) != old.get(k))
        if changed:
            shown = ", ".join(f"{k}: {old.get(k)!r} -> {job.get(k)!r}" for k in changed[:3])
            raise JobMismatch(f"{parts} holds parts of an earlier job with a different "
                              f"{', '.join(changed)} ({shown}); pass --fresh to start over, or "
                              "rerun with the earlier job's input and options")
        done = 0
        while (parts / f"part-{done:06d}.json").exists():
            done += 1
        return done
    if parts.exists():  # an earlier job that finished no part: nothing to keep
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    write_text_atomic(record, json.dumps(job, indent=1) + "\n")
    return 0


def _added_names(labels: list[str], opts: PredictOptions) -> list[str]:
    names = [f"{opts.prefix}label", f"{opts.prefix}probability"]
    return names + ([f"{opts.prefix}prob_{label}" for label in labels] if opts.probabilities
                    else [])


def _run_chunks(source: InputFile, predictor: Predictor, parts: Path, fmt: str, column: str,
                names: list[str], opts: PredictOptions, done: int, progress: Progress,
                after_part: Callable[[int], None] | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Score and write every chunk not yet done; returns each part's record and the header."""
    stats, header = [], names
    for i, chunk in enumerate(read_chunks(source, opts.chunk_rows)):
        if i == 0:
            header = _header(chunk.columns, names, column, source)
        record = parts / f"part-{i:06d}.json"
        if i < done:
            stats.append(json.loads(record.read_text(encoding="utf-8")))
            progress.update(len(chunk.lines), chunk.position, scored=False)
            continue
        keep, texts, errors = _check_texts(source, chunk, column, opts.on_error)
        probs = score_texts(predictor, texts, opts.batch_size)
        stats.append(write_scored_part(parts, i, fmt, chunk, keep, errors,
                                       _added_columns(predictor.label_names, probs, names)))
        progress.update(len(keep), chunk.position)
        if after_part is not None:
            after_part(i)
    return stats, header


def write_scored_part(parts: Path, i: int, fmt: str, chunk: Chunk, keep: list[int],
                      errors: list[dict[str, Any]], added: dict[str, list[Any]]) -> dict[str, Any]:
    """Write part ``i`` (the kept rows of ``chunk`` with the ``added`` columns), then its record,
    both atomically: the part is done once its record exists. Returns the record."""
    write_part(parts / f"part-{i:06d}.{fmt}", fmt, chunk, keep, added)
    label_column = next(iter(added))
    stat = {"rows": len(keep), "labels": dict(Counter(added[label_column])), "errors": errors}
    write_text_atomic(parts / f"part-{i:06d}.json", json.dumps(stat) + "\n")
    return stat


def _header(columns: list[str], names: list[str], column: str, source: InputFile) -> list[str]:
    if source.fmt in ("csv", "tsv", "parquet") and column not in columns:
        raise DataError(f"{source.path} {source.where} 1: no column {shorten(column)} in "
                        f"{shorten_list(columns)}; pass --text-column with one of them")
    taken = [n for n in names if n in columns]
    if taken:
        raise DataError(f"{source.path} already has the column(s) {shorten_list(taken)} that "
                        "kiln predict adds; pass --prefix (e.g. --prefix predicted_) to name "
                        "the added columns apart")
    return columns + names


def _check_texts(source: InputFile, chunk: Chunk, column: str,
                 on_error: str) -> tuple[list[int], list[str], list[dict[str, Any]]]:
    """The rows to score, their texts, and the rows skipped as bad (each with its line).

    Raises:
        DataError: the first bad row, when ``on_error`` is "stop".
    """
    keep, texts, errors = [], [], []
    for i, value in enumerate(chunk.texts(column)):
        if isinstance(value, str) and value.strip():
            keep.append(i)
            texts.append(value)
            continue
        problem = _problem(value, column)
        if on_error == "stop":
            raise DataError(f"{source.path} {source.where} {chunk.lines[i]}: {problem}; fix the "
                            "row, or pass --on-error skip to skip such rows (listed in a side "
                            "file)")
        errors.append({"file": str(source.path), source.where: chunk.lines[i], "problem": problem})
    return keep, texts, errors


def _problem(value: object, column: str) -> str:
    if value is MISSING:
        return f"no {shorten(column)} key"
    if value is None:
        return f"no value in {shorten(column)}"
    if isinstance(value, str):
        return f"empty text in {shorten(column)}"
    return f"{shorten(column)} is not text ({type(value).__name__}: {shorten(str(value), 40)})"


def score_texts(predictor: Predictor, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Class probabilities [len(texts), classes] in the texts' order, the texts run in batches of
    similar length (less padding: a batch is as long as its longest text)."""
    encoded = [e.ids[: predictor.max_length]
               for e in predictor.tokenizer.encode_batch(list(texts))]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    probs = np.zeros((len(encoded), len(predictor.label_names)), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = pad_batch([encoded[i] for i in rows], predictor.pad_id)
        probs[rows] = softmax(predictor.logits(ids, mask))
    return probs


def _added_columns(labels: list[str], probs: np.ndarray, names: list[str]) -> dict[str, list[Any]]:
    """The label, its probability and (when ``names`` has them) every class's probability.

    Probabilities are float32; written as the shortest decimal that reads back as the same
    float32 (0.97312 rather than 0.9731199741363525)."""
    best = probs.argmax(axis=-1)
    added: dict[str, list[Any]] = {names[0]: [labels[i] for i in best],
                                   names[1]: _floats(probs[np.arange(len(best)), best])}
    for k, name in enumerate(names[2:]):
        added[name] = _floats(probs[:, k])
    return added


def _floats(values: np.ndarray) -> list[float]:
    return [float(str(v)) for v in values.astype(np.float32)]


def _finish(target: Path, fmt: str, parts: Path, stats: list[dict[str, Any]], header: list[str],
            source: InputFile) -> PredictSummary:
    """Join the parts into ``target``, write the side file of skipped rows, remove the parts."""
    files = [parts / f"part-{i:06d}.{fmt}" for i in range(len(stats))]
    join_parts(target, fmt, files, header)
    errors = [e for s in stats for e in s["errors"]]
    errors_file = target.with_name(f"{target.name}.errors.jsonl")
    if errors:
        write_text_atomic(errors_file, "".join(json.dumps(e) + "\n" for e in errors))
    else:
        errors_file.unlink(missing_ok=True)  # from an earlier run; it no longer applies
    shutil.rmtree(parts)
    counts: Counter[str] = Counter()
    for s in stats:
        counts.update(s["labels"])
    return PredictSummary(output=target, rows=sum(s["rows"] for s in stats), skipped=len(errors),
                          seconds=0.0, label_counts=dict(sorted(counts.items())), artifact="",
                          errors_file=errors_file if errors else None, errors=errors[:10])

