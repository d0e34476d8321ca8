"""`kiln predict --engine ray`: the job of `predict_file`, its chunks scored by Ray actors.

This process (the driver) reads the input, checks its rows and writes the parts and the output
exactly as the single-machine path does; only the scoring moves to Ray. A Ray Data pipeline reads
the same chunks' texts (one dataset row per chunk, so Ray never splits or merges a chunk) and
hands each to a pool of actors that load the model once and score a whole chunk with
`score_texts`: the model sees the same batches as on one machine, so it returns the same bits and
the output is byte for byte the single-machine one. Parts, resume and ``--fresh`` work as there (a
job stopped on one engine can be finished on the other).

On a cluster every node reads the run folder and the input at the same path (a shared
filesystem, or a copy on each node); the driver writes the output where it runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import ConfigError, DataError, KilnError
from kiln.predict.formats import InputFile, open_input, read_chunks
from kiln.predict.job import (
    PredictOptions,
    PredictSummary,
    _added_columns,
    _check_texts,
    _finish,
    _header,
    open_job,
    score_texts,
    write_scored_part,
)
from kiln.predict.progress import Progress
from kiln.runtime import Predictor, load_predictor

INSTALL = "pip install 'kiln[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray job runs; defaults are the CLI's."""

    address: str | None = None  # None: start a local Ray; "auto": the one on this node; "ray://.."
    num_workers: int | None = None  # scoring actors; None: the cluster's CPUs / threads per actor


@dataclass(frozen=True)
class ActorModel:
    """What an actor needs to load the model: paths valid on every node."""

    folder: str
    artifact: str
    threads: int  # per actor; also the CPUs Ray reserves for it
    batch_size: int


def import_ray() -> Any:
    """The ``ray`` module, with Ray Data loaded.

    Raises:
        ConfigError: Ray (with its Data library) is not installed.
    """
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"--engine ray needs Ray Data: {INSTALL}")
    try:
        import ray
        import ray.data  # noqa: F401  (ray[data]'s dependencies: pandas, fsspec)
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data ({exc}): {INSTALL}") from None
    return ray


def predict_file_on_ray(
    run: str | os.PathLike[str], data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None, options: PredictOptions | None = None,
    ray_options: RayOptions | None = None, *, after_part: Callable[[int], None] | None = None,
) -> PredictSummary:
    """`predict_file` with the scoring on Ray: the same output, the same summary.

    Joins the Ray instance this process already started (``ray.init``), else starts one at
    ``ray_options.address`` and shuts it down at the end. ``options.threads`` is per actor
    (default 1).

    Raises:
        ConfigError: Ray is not installed, or a worker count below 1.
        DataError: a malformed input, or a bad text cell when ``on_error`` is "stop".
        JobMismatch: parts of a different job are in the way (use ``fresh``).
        RunDirError: no model at ``run``, or an unusable artifact.
    """
    opts, where = options or PredictOptions(), ray_options or RayOptions()
    ray = import_ray()
    if where.num_workers is not None and where.num_workers < 1:
        raise ConfigError(f"--num-workers must be at least 1, not {where.num_workers}")
    job = open_job(run, data, out, opts)
    header = _header(next(read_chunks(job.source, 1)).columns, job.names, job.column, job.source)
    model = ActorModel(str(job.folder.resolve()), job.artifact, opts.threads or 1,
                       opts.batch_size)
    started = time.monotonic()
    with ray_session(ray, where.address):
        scored = scored_chunks(ray, job.source, job.column, opts.chunk_rows, job.done, model,
                               where.num_workers, len(job.labels))
        progress = Progress(job.source.total, job.source.unit, opts.progress,
                            enabled=opts.progress is not False)
        try:
            stats = _write_chunks(job.source, scored, job.labels, job.parts, job.fmt, job.column,
                                  job.names, opts, job.done, progress, after_part)
        finally:
            progress.close()
            scored.close()  # stops the Ray pipeline when the job stops early
    summary = _finish(job.target, job.fmt, job.parts, stats, header, job.source)
    summary.seconds, summary.artifact, summary.resumed_parts = (time.monotonic() - started,
                                                                job.artifact, job.done)
    return summary


@contextlib.contextmanager
def ray_session(ray: Any, address: str | None) -> Iterator[None]:
    """Ray, connected: the instance this process already joined, else one at ``address`` (None:
    a new local one) that is shut down on leaving.

    Raises:
        ConfigError: no Ray cluster answers at ``address``.
    """
    if ray.is_initialized():
        yield
        return
    if address is None:
        # "local": a new instance even where RAY_ADDRESS names a cluster; no dashboard (its web
        # server is seconds of start-up that a batch job does not use)
        ray.init(address="local", include_dashboard=False)
    else:
        try:
            ray.init(address=address)
        except ConnectionError as exc:
            raise ConfigError(f"cannot join the Ray cluster at {address!r} ({exc}); check the "
                              "address (`ray status` on a node of the cluster prints it) and "
                              "Ray's access token there") from None
    try:
        yield
    finally:
        ray.shutdown()


def default_workers(ray: Any, threads: int) -> int:
    """One actor per ``threads`` CPUs of the cluster (2 when it reports none, as an autoscaling
    cluster with no worker up yet does)."""
    cpus = float(ray.cluster_resources().get("CPU", 0))
    return max(1, int(cpus // threads)) if cpus else 2


def scored_chunks(ray: Any, source: InputFile, column: str, chunk_rows: int, first: int,
                  model: ActorModel, workers: int | None, classes: int,
                  ) -> Generator[tuple[int, np.ndarray], None, None]:
    """``(chunk index, probabilities [kept rows, classes])`` for each chunk from ``first`` on,
    in order, scored by ``workers`` actors.

    Raises:
        KilnError: raised in a Ray task (the input missing on a node, say), unwrapped.
    """
    ds = ray.data.from_items([{"first": first}])
    ds = ds.map_batches(read_texts, batch_size=1, batch_format="pyarrow", num_cpus=0,
                        fn_kwargs={"path": str(source.path.resolve()), "column": column,
                                   "chunk_rows": chunk_rows})
    size = workers or default_workers(ray, model.threads)
    # min_size 1: a file of fewer chunks than actors is not worth Ray's warning
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size)
    ds = ds.map_batches(ChunkScorer, fn_constructor_args=(model,), batch_size=1,
                        batch_format="pyarrow", compute=pool, num_cpus=model.threads)
    ds.context.execution_options.preserve_order = True
    ds.context.target_max_block_size = 1  # a block per chunk (a row), so chunks spread over actors
    ds.context.enable_progress_bars = False  # the driver's own bar counts rows written
    ds.context.raise_original_map_exception = True  # a KilnError, not "UDF failed" around it
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))  # a generator
    try:
        for batch in batches:
            for index, blob in zip(batch.column("chunk").to_pylist(),
                                   batch.column("probs").to_pylist()):
                yield index, np.frombuffer(blob, dtype=np.float32).reshape(-1, classes)
    except Exception as exc:
        cause = _kiln_cause(exc)
        if cause is None:
            raise
        raise cause from None
    finally:
        batches.close()  # shuts the pipeline down now, not when garbage-collected


def read_texts(batch: Any, *, path: str, column: str, chunk_rows: int) -> Iterator[Any]:
    """Ray task: the kept texts of every chunk from ``batch``'s ``first`` on, one row per chunk.

    A malformed row ends the texts early: the driver reads the same file and reports it.

    Raises:
        DataError: the input is not at ``path`` on this node.
    """
    import pyarrow as pa

    if not Path(path).is_file():
        raise DataError(f"{path} is not on Ray node {socket.gethostname()}: with --engine ray "
                        "every node reads the input at the same path (a shared filesystem)")
    source, first = open_input(path), int(batch.column("first")[0].as_py())
    try:
        for i, chunk in enumerate(read_chunks(source, chunk_rows)):
            if i >= first:
                texts = _check_texts(source, chunk, column, "skip")[1]
                yield pa.table({"chunk": pa.array([i], pa.int64()),
                                "texts": pa.array([texts], pa.large_list(pa.large_string()))})
    except DataError:
        return


class ChunkScorer:
    """Ray actor: loads the model once, then scores whole chunks as `predict_file` does."""

    def __init__(self, model: ActorModel) -> None:
        self.batch_size = model.batch_size
        self.predictor: Predictor | None = None
        self.error: KilnError | None = None
        try:
            if not Path(model.folder).is_dir():
                raise DataError(f"{model.folder} is not on Ray node {socket.gethostname()}: with "
                                "--engine ray every node reads the run folder at the same path")
            self.predictor = load_predictor(model.folder, model.artifact, threads=model.threads)
        except KilnError as exc:  # raised by the first call: Ray hands a task's exception back
            self.error = exc  # to the driver, but only the text of a constructor's

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        if self.predictor is None:
            raise self.error or RuntimeError("no model")
        probs = [score_texts(self.predictor, texts, self.batch_size).tobytes()
                 for texts in batch.column("texts").to_pylist()]
        return pa.table({"chunk": batch.column("chunk"), "probs": pa.array(probs, pa.binary())})


def _kiln_cause(exc: BaseException) -> KilnError | None:
    """The KilnError a Ray task raised, from the exceptions Ray wraps it in."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KilnError) and type(current).__module__.startswith("kiln."):
            return current
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return None


def _write_chunks(source: InputFile, scored: Iterator[tuple[int, np.ndarray]], labels: list[str],
                  parts: Path, fmt: str, column: str, names: list[str], opts: PredictOptions,
                  done: int, progress: Progress,
                  after_part: Callable[[int], None] | None) -> list[dict[str, Any]]:
    """Write every chunk not yet done with its scores from ``scored`` (the driver's half of
    `job._run_chunks`); returns each part's record."""
    stats = []
    for i, chunk in enumerate(read_chunks(source, opts.chunk_rows)):
        record = parts / f"part-{i:06d}.json"
        if i < done:
            stats.append(json.loads(record.read_text(encoding="utf-8")))
            progress.update(len(chunk.lines), chunk.position, scored=False)
            continue
        keep, _, errors = _check_texts(source, chunk, column, opts.on_error)
        index, probs = next(scored, (-1, np.zeros((0, len(labels)), np.float32)))
        if index != i or len(probs) != len(keep):
            raise RuntimeError(f"Ray returned chunk {index} with {len(probs)} rows where chunk "
                               f"{i} with {len(keep)} rows was due")
        stats.append(write_scored_part(parts, i, fmt, chunk, keep, errors,
                                       _added_columns(labels, probs, names)))
        progress.update(len(keep), chunk.position)
        if after_part is not None:
            after_part(i)
    return stats
