"""What `kiln serve` is asked to do: batching, limits, threads, processes."""

from __future__ import annotations

from dataclasses import dataclass


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
