"""Device and mixed-precision choices, resolved once from config.

``train.precision=auto`` trains in bf16 on a CPU only where that pays off: the CPU has bf16 matrix
instructions (AMX-BF16, AVX512-BF16, Arm BF16) *and* a bf16 matrix multiply measured here runs at
least ``BF16_MIN_SPEEDUP`` times as fast as fp32. Both are needed: AVX512-BF16 without AMX can be
slower than fp32 (a 2-core Xeon VM with AVX512-BF16 and no AMX: bf16 matmul 0.52-0.57x fp32, a
reference-model training step 0.75x), and a flag says nothing about what the hypervisor or the
kernel lets a process use. The measurement costs about 0.4 s of CPU time, once per process, and
only on CPUs with the flags.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch

from kiln.errors import ConfigError
from kiln.run.precision import (
    BF16_MIN_SPEEDUP,
    Precision,
    asked_precision,
    best_time_ratio,
    choose_cpu_precision,
)
from kiln.runtime.artifacts import cpu_bf16_units

__all__ = ["BF16_MIN_SPEEDUP", "Precision", "auto_cpu_precision", "autocast_dtype",
           "choose_cpu_precision", "measure_bf16_matmul_speedup", "native_bf16_units",
           "resolve_device", "resolve_precision", "use_fused_adamw"]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available.

    Raises:
        ConfigError: CUDA was asked for but is not available.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available here; use train.device=cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device,
                      started: dict[str, Any] | None = None) -> Precision:
    """The precision to train in, and why.

    ``auto``: on CUDA bf16 where supported, else fp16; on CPU bf16 where the CPU has bf16 units
    and they measure faster than fp32 (see the module docstring), else fp32. A resumed run passes
    ``started`` (what its checkpoint recorded) and keeps that choice on the same kind of device,
    so that a run does not change numerics half-way through on a noisy measurement.

    Raises:
        ConfigError: fp16 on CPU, where there is no GradScaler support and no speed-up.
    """
    if precision == "auto":
        if (started and started.get("device") == device.type
                and str(started.get("reason", "")).startswith("auto:")):
            return Precision(started["name"], f"{started['reason']}; kept on resume")
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return Precision("bf16", "auto: this GPU supports bf16")
            return Precision("fp16", "auto: this GPU has no bf16, fp16 with a GradScaler")
        return auto_cpu_precision()
    return asked_precision(precision, fp16_here=device.type == "cuda",
                           fp16_needs="CUDA (it uses a GradScaler)",
                           on_cpu=device.type == "cpu", auto_cpu=auto_cpu_precision)


@functools.cache
def auto_cpu_precision() -> Precision:
    """What ``auto`` chooses on this CPU (decided once per process)."""
    return choose_cpu_precision(native_bf16_units(), measure_bf16_matmul_speedup)


def native_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """This CPU's bf16 matrix instructions: from /proc/cpuinfo on Linux, elsewhere from what torch
    detects (its cpuinfo library, then oneDNN)."""
    if cpuinfo.exists():
        return cpu_bf16_units(cpuinfo.read_text(errors="replace"))
    cpu: Any = torch.cpu
    units = [name for probe, name in (("_is_amx_tile_supported", "AMX-BF16"),
                                      ("_is_avx512_bf16_supported", "AVX512-BF16"))
             if getattr(cpu, probe, lambda: False)()]
    if not units and torch.backends.mkldnn.is_available():
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            units = ["bf16 (as oneDNN reports it)"]
    return units


def measure_bf16_matmul_speedup(n: int = 512, seconds: float = 0.2) -> float:
    """How many times faster an n x n bf16 matrix multiply runs than an fp32 one on one core of
    this CPU: the best of each, alternating call by call for ``seconds`` of CPU time.

    One thread and CPU time (not wall time) make this a property of the hardware that a busy
    machine does not blur: with two threads on a shared VM, wall-clock ratios ranged 0.04-15x
    where one thread's CPU time gave 0.52-0.55x every time.
    """
    g = torch.Generator().manual_seed(0)  # leave the global RNG (dropout, data order) alone
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a16, b16 = a.bfloat16(), b.bfloat16()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the multiply runs on this thread, so thread_time sees all of it
    try:
        return best_time_ratio(lambda: torch.mm(a, b), lambda: torch.mm(a16, b16),
                               time.thread_time, seconds)
    finally:
        torch.set_num_threads(threads)


def use_fused_adamw(precision: str, device: torch.device) -> bool:
    """Whether kiln's loop steps AdamW with torch's fused kernel: on CPU in bf16, where it takes
    the optimizer step from ~0.2 s to ~0.05 s on the reference model (a fifth of what a bf16 step
    spends outside matrix multiplies). fp32 keeps torch's default AdamW, which the fused kernel
    differs from in the last bit, so that fp32 runs stay bit-identical to a plain torch loop."""
    return device.type == "cpu" and precision == "bf16"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The torch.autocast dtype for ``precision``, or None for fp32 (autocast off)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
