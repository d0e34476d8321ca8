"""What `kiln serve` is asked to do: batching, limits, threads, processes, connection hygiene."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    max_queue_size: int = 512  # rows waiting; beyond it requests get 503 at once
    instances: int = 1
    # The inference threads run this many nice steps below the event loop (Linux), so that under
    # overload refusals and health checks are answered at once (see serve/batcher.compute_pool).
    compute_nice: int = 19
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
    # Slow or idle clients (see serve/http.py): seconds to send the request line and headers (from
    # the connection's opening or the request's first byte), the longest pause inside a body, the
    # whole request.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    # A kept-alive connection idle this long after a response is closed. A client that reuses it
    # as it closes loses that request, so the server should outwait its clients' pools: 75 s as
    # nginx, above the 60 s idle timeout of common load balancers (uvicorn's 5 s is below them).
    keep_alive_s: float = 75.0
    max_connections: int = 1000  # per worker; requests on connections beyond it get 503
    # The Open Inference Protocol's gRPC binding on this port, beside HTTP (Triton's default
    # port); 0: HTTP only. Every worker serves it (see serve/grpc_adapter.py).
    grpc_port: int = 8001
    # Drift monitoring (see serve/drift.py): each worker compares its last this-many rows with the
    # export's reference profile of the evaluation set; 0: off.
    drift_window: int = 1000


def available_cores() -> int:
    """CPUs this process may run on (its affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def compute_layout(instances: int | None, threads: int | None, workers: int,
                   cores: int) -> tuple[int, int, str]:
    """Model instances per worker and threads per instance, filling ``cores`` where not given,
    with why. By default one single-threaded instance per core: measured on the reference model
    (2 cores, ONNX Runtime int8, 32 clients), 2 workers or 2 instances of 1 thread served 280-292
    texts/s, one instance of 2 threads 127-152 (its threads sleep between runs, and a lone
    request's parallelism costs more than it saves)."""
    per_worker = max(1, cores // workers)
    if instances is None and threads is None:
        return per_worker, 1, (f"one single-threaded instance per core: {cores} cores, "
                               f"{workers} worker{'s' if workers > 1 else ''}")
    if instances is None:
        assert threads is not None
        return max(1, per_worker // threads), threads, f"--threads {threads} on {cores} cores"
    if threads is None:
        return instances, max(1, per_worker // instances), (
            f"--instances {instances} on {cores} cores")
    return instances, threads, "as asked"
