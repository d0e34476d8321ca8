"""The inference core of `kiln serve`, free of any transport.

`InferenceCore` loads the model repository, batches requests, keeps the Prometheus metrics and
answers the Open Inference Protocol's questions (live? ready? which models? what do they take?).
Transports (the REST adapter in ``app.py``, a gRPC endpoint later) parse their own wire format into
an `InferRequest`, call the core, and turn its `InferResult` or `ServeError` into their answer.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

import kiln
from kiln.runtime import Predictor, load_predictor, softmax
from kiln.runtime.drift import DriftReference, RowBins
from kiln.serve.batcher import Batcher, QueueFull, TooManyRows, compute_pool
from kiln.serve.drift import DriftGauges, DriftMonitor, load_reference
from kiln.serve.errors import (
    NotFound,
    Overloaded,
    ServeError,
    TimedOut,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from kiln.serve.metrics import ModelMetrics, make_metrics, model_metrics
from kiln.serve.protocol import InferRequest
from kiln.serve.repository import Repository, latest_version
from kiln.serve.settings import ServeSettings
from kiln.serve.triton_metrics import (
    TritonSeries,
    make_triton_metrics,
    record_batch,
    record_request,
    series_of,
    split_families,
    statistics,
    triton_exposition,
)

RowScores = tuple[list[float], list[float], int]  # logits, probabilities, index of the label
# (rows, each request's seconds in the queue, compute seconds, what each run of the model returned)
BatchObserver = Callable[[int, list[float], float, list[Any]], None]


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model version, its batcher and its metric series."""

    name: str
    version: str
    predictor: Predictor
    batcher: Batcher
    metrics: ModelMetrics

    @property
    def max_length(self) -> int:
        """The most tokens a row may have (for parsing token-id inputs)."""
        return self.predictor.max_length

    @property
    def vocabulary(self) -> int:
        """Token ids a row may hold are 0 .. vocabulary - 1 (for parsing token-id inputs)."""
        return self.predictor.vocabulary


@dataclass(frozen=True)
class InferResult:
    """One request's answer, one entry per row, as plain lists (no numpy on the event loop)."""

    model: str
    version: str
    logits: list[list[float]]
    probabilities: list[list[float]]
    labels: list[str]


def infer_rows(predictor: Predictor, rows: list[str | list[int]],
               drift: DriftReference | None = None) -> list[RowScores]:
    """Logits, probabilities and label index of each row (a text, or token ids), and with a
    ``drift`` reference each row's drift bins (``Scores.bins``), here where its tokens are.

    Runs in the batcher's thread: the batch's texts are tokenised in one call (which releases the
    GIL), the model runs the rows in groups of similar lengths (`Predictor.logits_by_length`:
    a batch of mixed lengths is not all padded to its longest), the softmax is paid once per
    batch, and the results leave as plain lists, so the event
    loop never calls numpy (a numpy call there drops the GIL, and this thread may then hold it
    for a whole switch interval).
    """
    started = time.perf_counter()
    texts = [r for r in rows if isinstance(r, str)]
    encoded = iter(predictor.tokenizer.encode_batch(texts) if texts else [])
    ids = [next(encoded).ids[: predictor.max_length] if isinstance(r, str) else r for r in rows]
    encoded_at = time.perf_counter()
    logits = predictor.logits_by_length(ids)
    ran_at = time.perf_counter()
    probabilities = softmax(logits)
    listed, best = probabilities.tolist(), probabilities.argmax(-1).tolist()
    scores = Scores(zip(logits.tolist(), listed, best))
    if drift is not None:
        scores.bins = [drift.bin_row(*row) for row in zip(ids, listed, best)]
    scores.phases = (encoded_at - started, ran_at - encoded_at, time.perf_counter() - ran_at)
    return scores


class Scores(list[RowScores]):
    """A batch's rows' scores, with the seconds its phases took: (tokenising and padding, the
    model, softmax and results), Triton's compute input, infer and output."""

    phases: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bins: list[RowBins] | tuple[()] = ()  # each row's drift bins, when drift is monitored


def row_length(row: str | list[int]) -> int:
    """A row's length in tokens, estimated for a text from its characters (about 4 per token for
    English subword vocabularies): enough to group similar lengths without tokenising on the
    event loop."""
    return len(row) // 4 + 2 if isinstance(row, str) else len(row)


def outcome_of(error: BaseException | None) -> str:
    """The ``outcome`` label of kiln_requests_total for a request that ended with ``error``."""
    if error is None:
        return "success"
    if isinstance(error, asyncio.CancelledError):
        return "canceled"
    if isinstance(error, Overloaded):
        return "rejected"
    if isinstance(error, TimedOut):
        return "timeout"
    if isinstance(error, ServeError):
        return "bad_request" if error.status < 500 else "unavailable"
    return "error"


def metadata(model: LoadedModel, versions: list[str]) -> dict[str, Any]:
    """The protocol's model metadata: what the model takes and gives."""
    predictor = model.predictor
    n = len(predictor.label_names)
    return {
        "name": model.name, "versions": versions, "platform": f"kiln_{predictor.backend.name}",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                   {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                   {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, n]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                    {"name": "label", "datatype": "BYTES", "shape": [-1]}],
        "parameters": {"labels": predictor.label_names, "max_length": predictor.max_length},
    }


def model_config(model: LoadedModel, settings: ServeSettings) -> dict[str, Any]:
    """The model configuration extension's answer, in Triton's model-config terms (what
    ``GET /v2/models/{m}/config`` gives and a Triton client reads): the batch dimension is
    implicit (``max_batch_size``), so ``dims`` are per row; -1 is a variable size."""
    predictor = model.predictor
    n = len(predictor.label_names)
    return {
        "name": model.name, "platform": f"kiln_{predictor.backend.name}", "backend": "kiln",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": settings.max_batch_size,
        "input": [{"name": "text", "data_type": "TYPE_STRING", "dims": [1],
                   "optional": True},
                  {"name": "input_ids", "data_type": "TYPE_INT64", "dims": [-1],
                   "optional": True},
                  {"name": "attention_mask", "data_type": "TYPE_INT64", "dims": [-1],
                   "optional": True}],
        "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [n]},
                   {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [n]},
                   {"name": "label", "data_type": "TYPE_STRING", "dims": [1]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000),
            "default_queue_policy": {
                "max_queue_size": settings.max_queue_size,
                "default_timeout_microseconds": round(settings.timeout_s * 1e6)}},
        "instance_group": [{"name": model.name, "kind": "KIND_CPU", "count": settings.instances}],
        "parameters": {"labels": {"string_value": ",".join(predictor.label_names)},
                       "max_length": {"string_value": str(predictor.max_length)}},
    }


class InferenceCore:
    """Every model version of ``repository`` (see discover_models), served with batching and
    metrics; not ready until `start` has loaded them all.

    The methods raise `ServeError` subclasses (with the status to answer) for requests they cannot
    answer: `Unauthorized`, `NotFound`, `Unavailable`, `Overloaded`, `TimedOut`.
    """

    def __init__(self, repository: Repository, settings: ServeSettings = ServeSettings(),
                 peers_ready: Callable[[], bool] = lambda: True) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = make_metrics()
        self.triton = make_triton_metrics(self.metrics.registry)
        self._triton: dict[tuple[str, str], TritonSeries] = {}  # served labels only: bounded
        self.drift = DriftGauges(self.metrics.registry)
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self._ready = False
        self._peers_ready = peers_ready  # the other worker processes' say (see serve/server.py)

    @property
    def live(self) -> bool:
        """The server answers (always, while it runs)."""
        return True

    @property
    def ready(self) -> bool:
        """Every model is loaded, the server is not shutting down, and ``peers_ready`` agrees."""
        return self._ready and self._peers_ready()

    async def start(self) -> None:
        """Load and warm up every model version, then become ready.

        Raises:
            KilnError: a model folder or artifact cannot be served (the message names it).
        """
        for name, versions in self.repository.items():
            for version, folder in versions.items():
                self.models[(name, version)] = await self._load(name, version, folder)
        self._ready = True

    async def stop(self) -> None:
        """Stop being ready, finish the running batches and fail what still waits."""
        self._ready = False
        for model in self.models.values():
            await model.batcher.stop()

    async def _load(self, name: str, version: str, folder: Path) -> LoadedModel:
        settings, start = self.settings, time.monotonic()
        # loaded and warmed up at the inference threads' priority: the threads a runtime starts
        # now (ONNX Runtime's and OpenVINO's pools) inherit it
        with compute_pool(1, settings.compute_nice, "kiln-load") as pool:
            loop = asyncio.get_running_loop()
            predictor = await loop.run_in_executor(pool, functools.partial(
                load_predictor, folder, settings.artifact, threads=settings.threads,
                spin_wait=settings.spin_wait, concurrency=settings.instances))
            await loop.run_in_executor(pool, predictor.predict,
                                       ["warm up"] * min(4, settings.max_batch_size))
        series = model_metrics(self.metrics, name)
        drift = self._drift_monitor(name, version, folder)
        reference = drift.window.reference if drift is not None else None
        batcher = Batcher(lambda rows: infer_rows(predictor, rows, reference), length=row_length,
                          max_batch_size=settings.max_batch_size,
                          max_delay_ms=settings.max_queue_delay_ms,
                          max_queue_size=settings.max_queue_size, instances=settings.instances,
                          nice=settings.compute_nice,
                          on_batch=_batch_observer(series, self._triton_series((name, version)),
                                                   drift))
        series.load_seconds.set(time.monotonic() - start)
        return LoadedModel(name, version, predictor, batcher, series)

    def _drift_monitor(self, name: str, version: str, folder: Path) -> DriftMonitor | None:
        """The drift window of model ``name``'s latest version (the one requests without a
        version get; drift series are labelled by model only), if drift is monitored and the
        model's manifest holds a reference."""
        if not self.settings.drift_window or version != latest_version(self.repository[name]):
            return None
        reference = load_reference(folder, name)
        if reference is None:
            return None
        return DriftMonitor(self.drift, name, reference, self.settings.drift_window)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "kiln", "version": kiln.__version__, "extensions": ["binary_tensor_data"]}

    def check_api_key(self, authorization: str | None) -> None:
        """Check the raw ``Authorization`` value against the API key, if one is set.

        Raises:
            Unauthorized: the key is missing or wrong.
        """
        if self.settings.api_key is None:
            return
        expected = f"Bearer {self.settings.api_key}".encode()
        if not hmac.compare_digest((authorization or "").encode(), expected):
            raise Unauthorized("missing or wrong API key (Authorization: Bearer ...)")

    def resolve(self, name: str, version: str | None = None) -> str:
        """The version of model ``name`` that a request for ``version`` (None: the latest) gets.

        Raises:
            NotFound: no model ``name``, or it has no ``version``.
        """
        if name not in self.repository:
            raise NotFound(f"unknown model '{name}'; serving {sorted(self.repository)}")
        versions = self.repository[name]
        version = version or latest_version(versions)
        if version not in versions:
            raise NotFound(f"model '{name}' has no version '{version}'; versions: "
                           f"{sorted(versions, key=int)}")
        return version

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model a request for ``name`` (and ``version``, None: the latest) goes to.

        Raises:
            NotFound: see `resolve`.
            Unavailable: the models are still loading (or the server is stopping).
        """
        version = self.resolve(name, version)
        if not self._ready:
            raise Unavailable("model is loading")
        return self.models[(name, version)]

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model answers requests now (raises `NotFound` for an unknown one)."""
        self.resolve(name, version)
        return self._ready

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The model configuration extension's answer (raises as `model` does)."""
        return model_config(self.model(name, version), self.settings)

    def repository_index(self) -> list[dict[str, str]]:
        """The repository index extension's answer: every model version served, with its state
        (READY once loaded, UNAVAILABLE while loading or stopping, with the reason)."""
        index = []
        for name, versions in sorted(self.repository.items()):
            for version in sorted(versions, key=int):
                entry = {"name": name, "version": version,
                         "state": "READY" if self._ready else "UNAVAILABLE"}
                if not self._ready:
                    entry["reason"] = "loading" if not self.models else "stopping"
                index.append(entry)
        return index

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The protocol's model metadata (raises as `model` does)."""
        model = self.model(name, version)
        return metadata(model, sorted(self.repository[name], key=int))

    @asynccontextmanager
    async def request(
        self, name: str, version: str | None = None, authorization: str | None = None,
    ) -> AsyncIterator[LoadedModel]:
        """One inference request, from the model lookup to the answer, counted in the metrics.

        Checks the key, resolves the model and counts the request in flight; on leaving, counts it
        under its outcome (from the exception that ended it, if any) with its duration. A transport
        reads and parses its request body inside, so that time and those errors are counted too.

        Raises:
            Unauthorized, NotFound, Unavailable: as `check_api_key` and `model`.
            Overloaded: the model's queue is full (before the transport reads the body).
        """
        started, model = time.monotonic(), None
        # metric labels name served models only: anything else a client sends is one series
        labels = self._served_labels(name, version)
        try:
            self.check_api_key(authorization)
            found = self.model(name, version)
            _refuse_if_full(found)  # before its body is read or parsed: cheap under load
            model = found
            model.metrics.inflight.inc()
            yield model
        except BaseException as exc:
            self._count(labels, outcome_of(exc), time.monotonic() - started)
            raise
        else:
            self._count(labels, "success", time.monotonic() - started)
        finally:
            if model is not None:
                model.metrics.inflight.dec()
                model.metrics.request_seconds.observe(time.monotonic() - started)
                model.metrics.queue_depth.set(model.batcher.queued_rows)
                self._triton_series(labels).pending.set(len(model.batcher.waiting))

    def _count(self, labels: tuple[str, str], outcome: str, seconds: float) -> None:
        """Count a request under kiln's outcome and, for a served model, Triton's series."""
        self.metrics.requests.labels(*labels, outcome).inc()
        if labels[0]:
            record_request(self._triton_series(labels), outcome, seconds)

    def _triton_series(self, labels: tuple[str, str]) -> TritonSeries:
        """A served (model, version)'s Triton series, labelled on first use."""
        found = self._triton.get(labels)
        if found is None:
            found = self._triton[labels] = series_of(self.triton, *labels)
        return found

    def refusal(self, name: str, version: str | None, authorization: str | None) -> ServeError | None:
        """Why an inference request for ``name`` must be refused now, judged from its headers
        alone (None: take it). Only a full queue is judged here, for a transport to answer before
        it reads the body; the refusal is counted as `request` counts it. A request with a wrong
        key, or for a model not served, gets None: `request` answers it as usual.
        """
        try:
            self.check_api_key(authorization)
            found = self.model(name, version)
        except ServeError:
            return None
        try:
            _refuse_if_full(found)
        except Overloaded as exc:
            self._count((found.name, found.version), outcome_of(exc), 0.0)
            return exc
        return None

    def _served_labels(self, name: str, version: str | None) -> tuple[str, str]:
        """(model, version) metric labels of a request: the served model and version it goes to,
        or ("", "") for a name or version that is not served."""
        versions = self.repository.get(name)
        if versions is None:
            return "", ""
        version = version or latest_version(versions)
        return (name, version) if version in versions else ("", "")

    async def predict(self, model: LoadedModel, request: InferRequest) -> InferResult:
        """Run ``request`` on ``model`` through its batcher (inside `request`, for the metrics).

        Raises:
            TooLarge: more rows than the queue can ever hold (413).
            Overloaded: the queue is full, or would not reach the request within its timeout
                (503, with the estimated wait as Retry-After).
            TimedOut: no result within the request's (or the server's) timeout.
        """
        rows: list[Any] = (request.input_ids if request.input_ids is not None
                           else list(request.texts or []))
        try:
            out = await model.batcher.submit(rows, request.timeout_s or self.settings.timeout_s)
        except TooManyRows as exc:
            raise TooLarge(str(exc)) from None
        except QueueFull as exc:
            raise Overloaded(f"server busy: {exc}; retry later", exc.retry_after_s) from None
        except asyncio.TimeoutError:
            raise TimedOut("request timed out") from None
        logits, probabilities, best = zip(*out)
        labels = [model.predictor.label_names[i] for i in best]
        return InferResult(model.name, model.version, list(logits), list(probabilities), labels)

    async def infer(
        self, name: str, request: InferRequest, version: str | None = None,
        authorization: str | None = None,
    ) -> InferResult:
        """`predict` for an already parsed request, with the key check, lookup and metrics."""
        async with self.request(name, version, authorization) as model:
            return await self.predict(model, request)

    def metrics_exposition(self) -> bytes:
        """The Prometheus text exposition of the metrics (every worker's, summed, if several)."""
        kiln_families, triton_families = split_families(self._families())
        return generate_latest(_Families(kiln_families)) + triton_exposition(triton_families)

    def statistics(self, name: str | None = None,
                   version: str | None = None) -> dict[str, Any]:
        """The statistics extension's answer: every served model version's cumulative counts and
        times (all workers'), or those of model ``name`` (``version``: one version only).

        Raises:
            NotFound: no model ``name``, or no such version.
        """
        if name is None:
            served = [(m, v) for m, versions in sorted(self.repository.items())
                      for v in sorted(versions, key=int)]
        elif version is None:
            self.resolve(name)
            served = [(name, v) for v in sorted(self.repository[name], key=int)]
        else:
            served = [(name, self.resolve(name, version))]
        return statistics(split_families(self._families())[1], served)

    def _families(self) -> list[Metric]:
        """Every metric family, summed over the worker processes when there are several."""
        registry = self.metrics.registry
        if self.settings.metrics_dir is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.settings.metrics_dir)
        return list(registry.collect())


@dataclass(frozen=True)
class _Families:
    """Metric families already collected, as the registry generate_latest reads."""

    families: list[Metric]

    def collect(self) -> list[Metric]:
        return self.families


def _refuse_if_full(model: LoadedModel) -> None:
    """Raises: Overloaded: no request can join ``model``'s queue now."""
    if model.batcher.full:
        raise Overloaded(f"server busy: queue full ({model.batcher.queued_rows} rows waiting); "
                         "retry later", model.batcher.estimated_wait_s(1))


def _batch_observer(series: ModelMetrics, triton: TritonSeries,
                    drift: DriftMonitor | None = None) -> BatchObserver:
    def on_batch(rows: int, queue_waits: list[float], compute: float,
                 outputs: list[Any]) -> None:
        series.batch_size.observe(rows)
        series.batch_compute_seconds.observe(compute)
        for waited in queue_waits:  # one observation per request, as Triton counts them
            series.queue_seconds.observe(waited)
            series.compute_seconds.observe(compute)
        # the phases of each run (several when a failing batch was split), summed
        timed = [out.phases for out in outputs if isinstance(out, Scores)]
        phases = tuple(map(sum, zip(*timed))) if timed else (0.0, compute, 0.0)
        record_batch(triton, rows, queue_waits, phases)  # type: ignore[arg-type]
        if drift is not None:
            drift.observe([b for out in outputs if isinstance(out, Scores) for b in out.bins])

    return on_batch
