"""What ``train.precision=auto`` chooses on a CPU, for either trainer: bf16 only where the CPU has
bf16 matrix instructions *and* a bf16 matrix multiply, measured here by the trainer's own framework,
runs at least ``BF16_MIN_SPEEDUP`` times as fast as fp32 (see kiln.train.precision for why both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
