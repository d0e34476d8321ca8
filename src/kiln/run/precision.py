"""What ``train.precision=auto`` chooses on a CPU, for either trainer: bf16 only where the CPU has
bf16 matrix instructions *and* a bf16 matrix multiply, measured here by the trainer's own framework,
runs at least ``BF16_MIN_SPEEDUP`` times as fast as fp32 (see kiln.train.precision for why both).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from kiln.errors import ConfigError

# A bf16 step also casts weights, keeps fp32 master weights and optimizer state, and runs dropout,
# layer norm and softmax no faster than fp32: the matmul speed-up must be well above 1 to show.
BF16_MIN_SPEEDUP = 1.3


@dataclass(frozen=True)
class Precision:
    """A resolved ``train.precision``: ``name`` is fp32, bf16 or fp16; ``reason`` says why (for
    ``auto``, it starts with "auto: ")."""

    name: str
    reason: str


def choose_cpu_precision(units: list[str], measure_speedup: Callable[[], float],
                         how: str = "on one core") -> Precision:
    """bf16 when the CPU has bf16 ``units`` and ``measure_speedup()`` (bf16 matmul speed over
    fp32, measured ``how``; only called when there are units) reaches ``BF16_MIN_SPEEDUP``; else
    fp32."""
    if not units:
        return Precision("fp32", "auto: this CPU has no bf16 matrix instructions "
                                 "(AMX-BF16, AVX512-BF16 or Arm BF16)")
    speedup = measure_speedup()
    measured = f"its bf16 matmul measured {speedup:.2f}x fp32 {how}"
    if speedup >= BF16_MIN_SPEEDUP:
        return Precision("bf16", f"auto: this CPU has {' and '.join(units)} and {measured}")
    return Precision("fp32", f"auto: this CPU has {' and '.join(units)} but {measured}, "
                             f"below the {BF16_MIN_SPEEDUP}x bf16 needs to train faster")


def asked_precision(precision: str, *, fp16_here: bool, fp16_needs: str, on_cpu: bool,
                    auto_cpu: Callable[[], Precision], stacklevel: int = 2) -> Precision:
    """A precision asked for by name (not ``auto``): fp16 refused where it cannot run
    (``fp16_needs`` says what it needs), bf16 on a CPU warned about where ``auto_cpu()`` would not
    choose it (``stacklevel`` counts from the caller, as if it warned).

    Raises:
        ConfigError: fp16 where ``fp16_here`` is false.
    """
    if precision == "fp16" and not fp16_here:
        raise ConfigError(f"train.precision=fp16 needs {fp16_needs}; use fp32 or bf16 on CPU")
    if precision == "bf16" and on_cpu:
        auto = auto_cpu()
        if auto.name != "bf16":  # what auto found, minus its "auto: " prefix
            warnings.warn("train.precision=bf16 on CPU: usually slower than fp32 unless the CPU "
                          f"has bf16 units (AMX/AVX512-BF16); here {auto.reason[6:]}",
                          stacklevel=stacklevel + 1)
    return Precision(precision, f"train.precision={precision}")


def best_time_ratio(baseline: Callable[[], object], candidate: Callable[[], object],
                    clock: Callable[[], float], seconds: float) -> float:
    """How many times faster ``candidate()`` runs than ``baseline()``: the best time of each on
    ``clock`` (a CPU-time clock, so other processes' load does not count), the two alternating
    call by call for ``seconds`` of that clock, after one warm-up call each. Gives up after 20x
    ``seconds`` of wall time on a machine starved of CPU."""
    calls = (baseline, candidate)
    for call in calls:
        call()  # kernel selection
    best = [math.inf, math.inf]
    cpu_deadline = clock() + seconds
    wall_deadline = time.perf_counter() + 20 * seconds
    while clock() < cpu_deadline and time.perf_counter() < wall_deadline:
        for i, call in enumerate(calls):
            start = clock()
            call()
            best[i] = min(best[i], clock() - start)
    return best[0] / max(best[1], 1e-9)
