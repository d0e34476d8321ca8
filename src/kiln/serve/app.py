"""`kiln serve`: an Open Inference Protocol (KServe v2) HTTP server over one kiln model."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import kiln
from kiln.runtime import Predictor, load_predictor, softmax
from kiln.serve.batcher import Batcher, QueueFull
from kiln.serve.metrics import make_metrics
from kiln.serve.protocol import ProtocolError, build_infer_response, parse_infer_request
from kiln.serve.repository import Repository, latest_version


@dataclass(frozen=True)
class Served:
    """One loaded model version and its batcher."""

    name: str
    version: str
    predictor: Predictor
    batcher: Batcher


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


def build_app(repository: Repository, settings: ServeSettings = ServeSettings()) -> Starlette:
    """The ASGI app serving every model version of ``repository`` (see discover_models)."""
    metrics = make_metrics()
    state: dict[str, Any] = {"ready": False, "served": {}}

    async def load(name: str, version: str, folder: Path) -> Served:
        start = time.monotonic()
        predictor = await asyncio.to_thread(load_predictor, folder, settings.artifact,
                                            threads=settings.threads, spin_wait=settings.spin_wait)
        await asyncio.to_thread(predictor.predict, ["warm up"] * min(4, settings.max_batch_size))

        def on_batch(size: int, queued: float, compute: float) -> None:
            metrics.batch_size.labels(name).observe(size)
            metrics.queue_seconds.labels(name).observe(queued)
            metrics.compute_seconds.labels(name).observe(compute)

        batcher = Batcher(predictor.logits, max_batch_size=settings.max_batch_size,
                          max_delay_ms=settings.max_queue_delay_ms,
                          max_queue_size=settings.max_queue_size, instances=settings.instances,
                          pad_id=predictor.pad_id, on_batch=on_batch)
        batcher.start()
        metrics.load_seconds.labels(name).set(time.monotonic() - start)
        return Served(name, version, predictor, batcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for name, versions in repository.items():
            for version, folder in versions.items():
                state["served"][(name, version)] = await load(name, version, folder)
        state["ready"] = True
        yield
        state["ready"] = False
        for served in state["served"].values():
            await served.batcher.stop()

    def model_or_404(request: Request) -> Served:
        name = request.path_params["model"]
        if name not in repository:
            raise ProtocolError(f"unknown model '{name}'; serving {sorted(repository)}", status=404)
        version = request.path_params.get("version") or latest_version(repository[name])
        if version not in repository[name]:
            raise ProtocolError(f"model '{name}' has no version '{version}'; versions: "
                                f"{sorted(repository[name], key=int)}", status=404)
        if not state["ready"]:
            raise ProtocolError("model is loading", status=503)
        served: Served = state["served"][(name, version)]
        return served

    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
            raise ProtocolError("missing or wrong API key (Authorization: Bearer ...)", status=401)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "kiln", "version": kiln.__version__,
                             "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if state["ready"] else 503)

    async def model_metadata(request: Request) -> Response:
        check_key(request)
        served = model_or_404(request)
        predictor = served.predictor
        n = len(predictor.label_names)
        return JSONResponse({
            "name": served.name, "versions": sorted(repository[served.name], key=int),
            "platform": f"kiln_{predictor.backend.name}",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                       {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                       {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, n]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"labels": predictor.label_names, "max_length": predictor.max_length},
        })

    async def model_ready(request: Request) -> Response:
        check_key(request)
        model_or_404(request)
        return Response(status_code=200)

    async def infer(request: Request) -> Response:
        started = time.monotonic()
        outcome = "error"
        name, version = request.path_params["model"], request.path_params.get("version", "")
        metrics.inflight.labels(name).inc()
        served: Served | None = None
        try:
            check_key(request)
            served = model_or_404(request)
            predictor, version = served.predictor, served.version
            declared = int(request.headers.get("content-length") or 0)
            if declared > settings.max_request_bytes:
                raise ProtocolError(f"request of {declared} bytes exceeds the limit of "
                                    f"{settings.max_request_bytes}", status=413)
            body = await request.body()
            if len(body) > settings.max_request_bytes:
                raise ProtocolError(f"request of {len(body)} bytes exceeds the limit of "
                                    f"{settings.max_request_bytes}", status=413)
            req = parse_infer_request(body, request.headers.get("inference-header-content-length"),
                                      predictor.max_length)
            rows = req.input_ids if req.input_ids is not None else [
                e.ids[: predictor.max_length]
                for e in predictor.tokenizer.encode_batch(req.texts or [])]
            try:
                logits = await asyncio.wait_for(served.batcher.submit(rows),
                                                req.timeout_s or settings.timeout_s)
            except QueueFull as exc:
                outcome = "rejected"
                return JSONResponse({"error": f"server busy: {exc}; retry later"}, status_code=503,
                                    headers={"retry-after": "1"})
            except asyncio.TimeoutError:
                outcome = "timeout"
                return JSONResponse({"error": "request timed out"}, status_code=504)
            probabilities = softmax(logits)
            labels = [predictor.label_names[i] for i in np.argmax(logits, axis=-1)]
            payload, headers = build_infer_response(name, version, req, logits, probabilities,
                                                    labels)
            outcome = "success"
            return Response(payload, headers=headers)
        except ProtocolError as exc:
            outcome = "bad_request" if exc.status < 500 else "unavailable"
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        finally:
            metrics.inflight.labels(name).dec()
            metrics.requests.labels(name, version, outcome).inc()
            metrics.request_seconds.labels(name).observe(time.monotonic() - started)
            if served is not None:
                metrics.queue_depth.labels(name).set(served.batcher.queued_rows)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"no route {request.method} {request.url.path}"},
                            status_code=404)

    async def protocol_error(request: Request, exc: Exception) -> Response:
        status = exc.status if isinstance(exc, ProtocolError) else 500
        return JSONResponse({"error": str(exc)}, status_code=status)

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/versions/{version}", model_metadata),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/metrics", metrics_endpoint),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: not_found, ProtocolError: protocol_error})
