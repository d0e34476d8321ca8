"""Timing primitives: latency percentiles and throughput of one backend on given inputs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kiln.runtime.predictor import Backend

Inputs = tuple[np.ndarray, np.ndarray]  # input_ids, attention_mask


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    calls: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Throughput:
    samples_per_s: float
    batch_size: int
    batches: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(backend: Backend, inputs: Sequence[Inputs], warmup: int, repeats: int) -> Latency:
    """Per-call latency over ``repeats`` passes through ``inputs`` after ``warmup`` calls."""
    return latency_of(latency_samples(backend, inputs, warmup, repeats))


def latency_samples(backend: Backend, inputs: Sequence[Inputs], warmup: int,
                    repeats: int) -> np.ndarray:
    """Milliseconds of each call over ``repeats`` passes through ``inputs``, after ``warmup``."""
    for i in range(warmup):
        backend.run(*inputs[i % len(inputs)])
    times = []
    for _ in range(repeats):
        for ids, mask in inputs:
            start = time.perf_counter()
            backend.run(ids, mask)
            times.append(time.perf_counter() - start)
    return 1e3 * np.asarray(times)


def latency_of(ms: np.ndarray) -> Latency:
    return Latency(p50_ms=float(np.percentile(ms, 50)), p95_ms=float(np.percentile(ms, 95)),
                   p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()), calls=len(ms))


def measure_throughput(backend: Backend, batches: Sequence[Inputs], warmup: int,
                       min_seconds: float) -> Throughput:
    """Samples per second over ``batches`` in order (cycling), for at least ``min_seconds``."""
    for i in range(warmup):
        backend.run(*batches[i % len(batches)])
    samples, calls, start = 0, 0, time.perf_counter()
    while True:
        ids, mask = batches[calls % len(batches)]
        backend.run(ids, mask)
        samples += len(ids)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return Throughput(samples_per_s=samples / elapsed, batch_size=len(batches[0][0]),
                      batches=calls, seconds=elapsed)
