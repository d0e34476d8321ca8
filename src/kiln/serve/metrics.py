"""Prometheus metrics of the server (text format through prometheus_client).

kiln's own series, and (serve/triton_metrics.py) Triton's nv_inference_* series beside them:

| kiln metric | Triton's counterpart |
|---|---|
| kiln_requests_total{model,version,outcome} | nv_inference_request_success / _failure |
| kiln_request_duration_seconds | nv_inference_request_duration_us |
| kiln_queue_duration_seconds | nv_inference_queue_duration_us |
| kiln_compute_duration_seconds | nv_inference_compute_infer_duration_us |
| kiln_batch_compute_duration_seconds | (per batch; Triton reports compute per request only) |
| kiln_batch_size | nv_inference_exec_count vs nv_inference_count (batch size = count/exec) |
| kiln_queue_depth, kiln_inflight_requests | nv_inference_pending_request_count |
| kiln_model_load_seconds | (model load time in Triton's log) |
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class ServerMetrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_compute_seconds: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    inflight: Gauge
    load_seconds: Gauge


def make_metrics() -> ServerMetrics:
    r = CollectorRegistry()
    return ServerMetrics(
        registry=r,
        requests=Counter("kiln_requests", "Inference requests by outcome",
                         ["model", "version", "outcome"], registry=r),
        request_seconds=Histogram("kiln_request_duration_seconds", "Request time, end to end",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r),
        queue_seconds=Histogram("kiln_queue_duration_seconds",
                                "Wait in the batching queue, per request", ["model"],
                                buckets=LATENCY_BUCKETS, registry=r),
        compute_seconds=Histogram("kiln_compute_duration_seconds",
                                  "Model time of the batch that ran the request, per request",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r),
        batch_compute_seconds=Histogram("kiln_batch_compute_duration_seconds",
                                        "Model time per executed batch", ["model"],
                                        buckets=LATENCY_BUCKETS, registry=r),
        batch_size=Histogram("kiln_batch_size", "Rows per executed batch", ["model"],
                             buckets=BATCH_BUCKETS, registry=r),
        # with several worker processes: the live workers' sum, and the slowest load
        queue_depth=Gauge("kiln_queue_depth", "Rows waiting in the queue", ["model"], registry=r,
                          multiprocess_mode="livesum"),
        inflight=Gauge("kiln_inflight_requests", "Requests being handled", ["model"], registry=r,
                       multiprocess_mode="livesum"),
        load_seconds=Gauge("kiln_model_load_seconds", "Time to load and warm up the model",
                           ["model"], registry=r, multiprocess_mode="max"),
    )


@dataclass
class ModelMetrics:
    """One model's labelled series, looked up once: ``labels()`` takes a lock on every call."""

    request_seconds: Histogram
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_compute_seconds: Histogram
    batch_size: Histogram
    queue_depth: Gauge
    inflight: Gauge
    load_seconds: Gauge


def model_metrics(metrics: ServerMetrics, model: str) -> ModelMetrics:
    m = metrics
    return ModelMetrics(
        request_seconds=m.request_seconds.labels(model), queue_seconds=m.queue_seconds.labels(model),
        compute_seconds=m.compute_seconds.labels(model),
        batch_compute_seconds=m.batch_compute_seconds.labels(model),
        batch_size=m.batch_size.labels(model),
        queue_depth=m.queue_depth.labels(model), inflight=m.inflight.labels(model),
        load_seconds=m.load_seconds.labels(model))
