"""Triton's metric names and statistics extension, from the same counts in every worker.

A dashboard or alert built for Triton queries ``nv_inference_*`` series; a client calling Triton's
statistics extension reads cumulative counts and nanoseconds per model version. kiln keeps one
set of counters (prometheus_client's, so that with several worker processes they are summed over
the workers, the dead ones' included, as the kiln_* metrics are) and shows them both ways:

| series (labels model, version) | what it counts |
|---|---|
| nv_inference_request_success | requests answered |
| nv_inference_request_failure{reason} | requests that failed: REJECTED (queue full, or timed out waiting), CANCELED (client left), BACKEND (the model raised), OTHER (a bad request) |
| nv_inference_count | rows inferred (a request of 3 texts counts 3) |
| nv_inference_exec_count | batches run |
| nv_inference_request_duration_us | request time, end to end, summed over requests |
| nv_inference_queue_duration_us | time waiting in the batching queue, summed over requests |
| nv_inference_compute_input_duration_us | tokenising and padding, of the batch that ran the request |
| nv_inference_compute_infer_duration_us | the model's run, likewise |
| nv_inference_compute_output_duration_us | softmax and results, likewise |
| nv_inference_pending_request_count | requests waiting in the queue now (gauge) |

prometheus_client names a counter's sample ``<name>_total``; Triton's have no suffix, so these
families are written out here, under Triton's names and types. Labels come only from served
models and versions, so no client can add series.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric

PREFIX = "nv_inference_"
REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
PHASES = ("compute_input", "compute_infer", "compute_output")

# kiln's request outcomes (kiln_requests_total's label) as Triton's failure reasons
REASON_OF_OUTCOME = {"rejected": "REJECTED", "timeout": "REJECTED", "canceled": "CANCELED",
                     "error": "BACKEND", "bad_request": "OTHER", "unavailable": "OTHER"}


@dataclass
class TritonMetrics:
    success: Counter
    failure: Counter
    success_us: Counter  # request time of the successful ones (statistics: success.ns)
    failure_us: Counter
    inference_count: Counter
    exec_count: Counter
    request_us: Counter
    queue_us: Counter
    queue_count: Counter
    compute_us: dict[str, Counter]  # by phase
    compute_count: Counter  # requests whose batch ran (the phases' count)
    pending: Gauge
    last_inference_ms: Gauge


def make_triton_metrics(registry: CollectorRegistry) -> TritonMetrics:
    def counter(name: str, doc: str, *labels: str) -> Counter:
        return Counter(PREFIX + name, doc, ["model", "version", *labels], registry=registry)

    return TritonMetrics(
        success=counter("request_success", "Number of successful inference requests"),
        failure=counter("request_failure", "Number of failed inference requests", "reason"),
        success_us=counter("success_duration_us", "Cumulative time of successful requests"),
        failure_us=counter("failure_duration_us", "Cumulative time of failed requests"),
        inference_count=counter("count", "Number of inferences performed (rows)"),
        exec_count=counter("exec_count", "Number of model executions performed (batches)"),
        request_us=counter("request_duration_us", "Cumulative inference request duration in "
                           "microseconds"),
        queue_us=counter("queue_duration_us", "Cumulative inference queuing duration in "
                         "microseconds"),
        queue_count=counter("queue_count", "Requests that waited in the queue"),
        compute_us={phase: counter(f"{phase}_duration_us", f"Cumulative {phase} duration in "
                                   "microseconds") for phase in PHASES},
        compute_count=counter("compute_count", "Requests whose batch ran"),
        pending=Gauge(PREFIX + "pending_request_count", "Instantaneous number of pending "
                      "requests awaiting execution per-model.", ["model", "version"],
                      registry=registry, multiprocess_mode="livesum"),
        last_inference_ms=Gauge(PREFIX + "last_inference_ms", "When the last request was "
                                "answered, ms since the epoch", ["model", "version"],
                                registry=registry, multiprocess_mode="max"),
    )


@dataclass
class TritonSeries:
    """One served model version's series, labelled once: ``labels()`` takes a lock per call, and
    a request would otherwise call it about ten times on the event loop."""

    success: Any
    failure: dict[str, Any]  # by reason
    success_us: Any
    failure_us: Any
    inference_count: Any
    exec_count: Any
    request_us: Any
    queue_us: Any
    queue_count: Any
    compute_us: dict[str, Any]  # by phase
    compute_count: Any
    pending: Any
    last_inference_ms: Any


def series_of(m: TritonMetrics, model: str, version: str) -> TritonSeries:
    labels = (model, version)
    return TritonSeries(
        success=m.success.labels(*labels),
        failure={reason: m.failure.labels(*labels, reason) for reason in REASONS},
        success_us=m.success_us.labels(*labels), failure_us=m.failure_us.labels(*labels),
        inference_count=m.inference_count.labels(*labels),
        exec_count=m.exec_count.labels(*labels), request_us=m.request_us.labels(*labels),
        queue_us=m.queue_us.labels(*labels), queue_count=m.queue_count.labels(*labels),
        compute_us={phase: c.labels(*labels) for phase, c in m.compute_us.items()},
        compute_count=m.compute_count.labels(*labels), pending=m.pending.labels(*labels),
        last_inference_ms=m.last_inference_ms.labels(*labels))


def record_request(s: TritonSeries, outcome: str, seconds: float) -> None:
    """One request for a served model version ended with ``outcome`` after ``seconds``."""
    us = seconds * 1e6
    s.request_us.inc(us)
    if outcome == "success":
        s.success.inc()
        s.success_us.inc(us)
        s.last_inference_ms.set(time.time() * 1000)
    else:
        s.failure[REASON_OF_OUTCOME.get(outcome, "OTHER")].inc()
        s.failure_us.inc(us)


def record_batch(s: TritonSeries, rows: int, queue_waits: list[float],
                 phases: tuple[float, float, float]) -> None:
    """One batch of ``rows`` rows ran for the requests that waited ``queue_waits`` seconds; each
    request is attributed the batch's time in each phase (input, infer, output), as Triton does."""
    requests = len(queue_waits)
    s.inference_count.inc(rows)
    s.exec_count.inc()
    s.queue_us.inc(sum(queue_waits) * 1e6)
    s.queue_count.inc(requests)
    for phase, seconds in zip(PHASES, phases):
        s.compute_us[phase].inc(seconds * 1e6 * requests)
    s.compute_count.inc(requests)


# families shown under Triton's names on /metrics (the others feed the statistics extension)
EXPOSED = {"request_success", "request_failure", "count", "exec_count", "request_duration_us",
           "queue_duration_us", "compute_input_duration_us", "compute_infer_duration_us",
           "compute_output_duration_us", "pending_request_count"}


def split_families(families: Iterable[Metric]) -> tuple[list[Metric], list[Metric]]:
    """(kiln's families, the nv_inference_* ones)."""
    kiln: list[Metric] = []
    triton: list[Metric] = []
    for family in families:
        (triton if family.name.startswith(PREFIX) else kiln).append(family)
    return kiln, triton


def triton_exposition(families: list[Metric]) -> bytes:
    """The Prometheus text of the nv_inference_* families under Triton's names: no ``_total``."""
    lines = []
    for family in families:
        name = family.name
        if name[len(PREFIX):] not in EXPOSED:
            continue
        lines.append(f"# HELP {name} {family.documentation}")
        lines.append(f"# TYPE {name} {family.type}")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(f"{name}{{{labels}}} {_number(sample.value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def statistics(families: list[Metric], served: list[tuple[str, str]]) -> dict[str, Any]:
    """Triton's statistics extension answer for the ``served`` (model, version)s, from the
    nv_inference_* families: cumulative counts and nanoseconds."""
    values: dict[tuple[str, str, str, str], float] = {}
    for family in families:
        for sample in family.samples:
            key = (family.name[len(PREFIX):], sample.labels.get("model", ""),
                   sample.labels.get("version", ""), sample.labels.get("reason", ""))
            if not sample.name.endswith("_created"):
                values[key] = values.get(key, 0.0) + sample.value
    return {"model_stats": [_model_stats(values, model, version) for model, version in served]}


def _model_stats(values: dict[tuple[str, str, str, str], float], model: str,
                 version: str) -> dict[str, Any]:
    def get(name: str, reason: str = "") -> float:
        return values.get((name, model, version, reason), 0.0)

    def duration(count: float, us: float) -> dict[str, int]:
        return {"count": int(count), "ns": int(us * 1000)}

    failures = sum(get("request_failure", reason) for reason in REASONS)
    compute_count = get("compute_count")
    return {
        "name": model, "version": version, "last_inference": int(get("last_inference_ms")),
        "inference_count": int(get("count")), "execution_count": int(get("exec_count")),
        "inference_stats": {
            "success": duration(get("request_success"), get("success_duration_us")),
            "fail": duration(failures, get("failure_duration_us")),
            "queue": duration(get("queue_count"), get("queue_duration_us")),
            **{phase: duration(compute_count, get(f"{phase}_duration_us")) for phase in PHASES},
            "cache_hit": duration(0, 0), "cache_miss": duration(0, 0)},
        "batch_stats": [],
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
