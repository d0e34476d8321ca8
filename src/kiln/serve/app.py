"""`kiln serve`: an Open Inference Protocol (KServe v2) HTTP server over kiln models."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

import kiln
from kiln.runtime import Predictor, load_predictor, pad_batch, softmax
from kiln.serve.asgi import (
    ASGIApp,
    HttpError,
    HttpRequest,
    Reply,
    Route,
    asgi_app,
    error_reply,
    json_reply,
)
from kiln.serve.batcher import Batcher, QueueFull
from kiln.serve.metrics import ModelMetrics, make_metrics, model_metrics
from kiln.serve.protocol import build_infer_response, parse_infer_request
from kiln.serve.repository import Repository, latest_version


@dataclass(frozen=True)
class Served:
    """One loaded model version, its batcher and its metric series."""

    name: str
    version: str
    predictor: Predictor
    batcher: Batcher
    metrics: ModelMetrics


@dataclass(frozen=True)
class ServeSettings:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 512  # rows waiting; beyond it requests get 503 at once
    instances: int = 1
    timeout_s: float = 30.0
    max_request_bytes: int = 4 * 1024 * 1024
    api_key: str | None = None
    threads: int | None = None
    artifact: str | None = None
    # Idle inference threads sleep instead of spinning: request handling needs the CPU between
    # batches (ONNX Runtime's session.intra_op.allow_spinning).
    spin_wait: bool = False
    workers: int = 1  # processes, each with its own event loop, batcher and model copy
    metrics_dir: str | None = None  # set by run_server with several workers: metrics are summed


RowScores = tuple[list[float], list[float], int]  # logits, probabilities, index of the label


def infer_rows(predictor: Predictor, rows: list[str | list[int]]) -> list[RowScores]:
    """Logits, probabilities and label index of each row (a text, or token ids).

    Runs in the batcher's thread: the batch's texts are tokenised in one call (which releases the
    GIL), the softmax is paid once per batch, and the results leave as plain lists, so the event
    loop never calls numpy (a numpy call there drops the GIL, and this thread may then hold it
    for a whole switch interval).
    """
    texts = [r for r in rows if isinstance(r, str)]
    encoded = iter(predictor.tokenizer.encode_batch(texts) if texts else [])
    ids = [next(encoded).ids[: predictor.max_length] if isinstance(r, str) else r for r in rows]
    logits = predictor.logits(*pad_batch(ids, predictor.pad_id))
    probabilities = softmax(logits)
    return list(zip(logits.tolist(), probabilities.tolist(), probabilities.argmax(-1).tolist()))


def row_length(row: str | list[int]) -> int:
    """A row's length in tokens, estimated for a text from its characters (about 4 per token for
    English subword vocabularies): enough to group similar lengths without tokenising on the
    event loop."""
    return len(row) // 4 + 2 if isinstance(row, str) else len(row)


def build_app(repository: Repository, settings: ServeSettings = ServeSettings()) -> ASGIApp:
    """The ASGI app serving every model version of ``repository`` (see discover_models)."""
    metrics = make_metrics()
    served: dict[tuple[str, str], Served] = {}
    ready = False

    async def load(name: str, version: str, folder: Path) -> Served:
        start = time.monotonic()
        predictor = await asyncio.to_thread(load_predictor, folder, settings.artifact,
                                            threads=settings.threads, spin_wait=settings.spin_wait)
        await asyncio.to_thread(predictor.predict, ["warm up"] * min(4, settings.max_batch_size))
        series = model_metrics(metrics, name)

        def on_batch(size: int, queued: float, compute: float) -> None:
            series.batch_size.observe(size)
            series.queue_seconds.observe(queued)
            series.compute_seconds.observe(compute)

        batcher = Batcher(lambda rows: infer_rows(predictor, rows), length=row_length,
                          max_batch_size=settings.max_batch_size,
                          max_delay_ms=settings.max_queue_delay_ms,
                          max_queue_size=settings.max_queue_size, instances=settings.instances,
                          on_batch=on_batch)
        series.load_seconds.set(time.monotonic() - start)
        return Served(name, version, predictor, batcher, series)

    async def startup() -> None:
        nonlocal ready
        for name, versions in repository.items():
            for version, folder in versions.items():
                served[(name, version)] = await load(name, version, folder)
        ready = True

    async def shutdown() -> None:
        nonlocal ready
        ready = False
        for model in served.values():
            await model.batcher.stop()

    def model_or_404(request: HttpRequest) -> Served:
        name = request.params["model"]
        if name not in repository:
            raise HttpError(f"unknown model '{name}'; serving {sorted(repository)}", 404)
        version = request.params.get("version") or latest_version(repository[name])
        if version not in repository[name]:
            raise HttpError(f"model '{name}' has no version '{version}'; versions: "
                            f"{sorted(repository[name], key=int)}", 404)
        if not ready:
            raise HttpError("model is loading", 503)
        return served[(name, version)]

    def check_key(request: HttpRequest) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise HttpError("missing or wrong API key (Authorization: Bearer ...)", 401)

    async def server_metadata(request: HttpRequest) -> Reply:
        return json_reply({"name": "kiln", "version": kiln.__version__,
                           "extensions": ["binary_tensor_data"]})

    async def live(request: HttpRequest) -> Reply:
        return Reply(200)

    async def server_ready(request: HttpRequest) -> Reply:
        return Reply(200 if ready else 503)

    async def model_metadata(request: HttpRequest) -> Reply:
        check_key(request)
        model = model_or_404(request)
        return json_reply(metadata(model, sorted(repository[model.name], key=int)))

    async def model_ready(request: HttpRequest) -> Reply:
        check_key(request)
        model_or_404(request)
        return Reply(200)

    async def infer(request: HttpRequest) -> Reply:
        started = time.monotonic()
        name = request.params["model"]
        model = None
        outcome, version = "error", request.params.get("version", "")
        try:
            check_key(request)
            model = model_or_404(request)
            version = model.version
            model.metrics.inflight.inc()
            reply, outcome = await run_inference(model, request)
            return reply
        except HttpError as exc:
            outcome = "bad_request" if exc.status < 500 else "unavailable"
            raise
        finally:
            metrics.requests.labels(name, version, outcome).inc()
            if model is not None:
                model.metrics.inflight.dec()
                model.metrics.request_seconds.observe(time.monotonic() - started)
                model.metrics.queue_depth.set(model.batcher.queued_rows)

    async def run_inference(model: Served, request: HttpRequest) -> tuple[Reply, str]:
        predictor = model.predictor
        body = await request.body(settings.max_request_bytes)
        req = parse_infer_request(body, request.headers.get("inference-header-content-length"),
                                  predictor.max_length)
        rows: list[Any] = req.input_ids if req.input_ids is not None else list(req.texts or [])
        try:
            out = await model.batcher.submit(rows, req.timeout_s or settings.timeout_s)
        except QueueFull as exc:
            return error_reply(f"server busy: {exc}; retry later", 503, {"retry-after": "1"}), \
                "rejected"
        except asyncio.TimeoutError:
            return error_reply("request timed out", 504), "timeout"
        logits, probabilities, best = zip(*out)
        labels = [predictor.label_names[i] for i in best]
        payload, headers = build_infer_response(model.name, model.version, req, list(logits),
                                                list(probabilities), labels)
        return Reply(200, payload, headers), "success"

    async def metrics_endpoint(request: HttpRequest) -> Reply:
        registry = metrics.registry
        if settings.metrics_dir is not None:  # every worker process's series, summed
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=settings.metrics_dir)
        return Reply(200, generate_latest(registry), {"content-type": CONTENT_TYPE_LATEST})

    routes = [  # tried in order: the two infer routes, the hot path, first
        Route("/v2/models/{model}/infer", infer, methods=("POST",)),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=("POST",)),
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", server_ready),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/versions/{version}", model_metadata),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route("/metrics", metrics_endpoint),
    ]
    return asgi_app(routes, startup, shutdown)


def metadata(model: Served, versions: list[str]) -> dict[str, Any]:
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
