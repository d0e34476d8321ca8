"""Where the training time goes: model FLOPs per batch, the device's peak FLOP/s (for model-FLOPs
utilisation), data-wait share, and peak memory.

Model FLOPs are counted, not guessed: torch's FlopCounterMode runs the model's forward on one
example at two lengths, which fits ``flops(S) = a*S + b*S^2`` per example (linear layers grow with
the length, attention with its square). A training step costs three forwards (the backward pass is
two). This works for any model, including pretrained encoders, without a per-architecture formula.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

# Dense (no sparsity) peak tensor-core FLOP/s per GPU, from the vendors' data sheets:
# (bf16/fp16, tf32, fp32). Matched against torch.cuda.get_device_name() by substring, in order.
GPU_PEAKS: tuple[tuple[str, float, float, float], ...] = (
    ("H200", 989e12, 494e12, 67e12),
    ("H100 PCIe", 756e12, 378e12, 51e12),
    ("H100", 989e12, 494e12, 67e12),  # SXM
    ("GH200", 989e12, 494e12, 67e12),
    ("B200", 2250e12, 1100e12, 80e12),
    ("A100", 312e12, 156e12, 19.5e12),
    ("A10G", 70e12, 35e12, 31.2e12),
    ("A10", 125e12, 62.5e12, 31.2e12),
    ("L40S", 362e12, 183e12, 91.6e12),
    ("L4", 121e12, 60e12, 30.3e12),
    ("RTX 4090", 165e12, 82.6e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12, 35.6e12),
    ("V100", 125e12, 15.7e12, 15.7e12),  # no tf32/bf16: fp16 tensor cores, fp32 otherwise
    ("T4", 65e12, 8.1e12, 8.1e12),
)



@dataclass(frozen=True)
class FlopModel:
    """Forward FLOPs of one example of padded length S: ``linear * S + quadratic * S**2``."""

    linear: float
    quadratic: float

    def train_flops(self, batch_size: int, seq_len: int) -> float:
        """FLOPs of a forward and backward pass over a padded (batch_size, seq_len) batch."""
        return 3.0 * batch_size * (self.linear * seq_len + self.quadratic * seq_len**2)


def _cpu_flash_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                               out_shape: Any = None, **kwargs: Any) -> int:
    # FlopCounterMode knows the CUDA attention kernels but not the CPU one; same formula.
    # (FlopCounterMode passes shapes, not tensors, to custom formulas.)
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


_EXTRA_FLOP_FORMULAS: dict[Any, Any] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
}


def count_flops(
    model: nn.Module, vocab_size: int, max_length: int, device: torch.device
) -> FlopModel:
    """Fit the model's forward FLOPs per example from two counted forwards (no gradients; the
    global RNG is left as it was)."""
    counts = []
    lengths = (max(2, min(64, max_length) // 2), min(64, max_length))
    was_training = model.training
    model.train()  # the training-mode kernels (no inference fast path)
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for s in lengths:
            ids = (torch.arange(s, device=device) % max(1, vocab_size - 1) + 1).unsqueeze(0)
            mask = torch.ones_like(ids)
            counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
            with counter:
                model(ids, mask)
            counts.append(float(counter.get_total_flops()))
    model.train(was_training)
    (s1, s2), (f1, f2) = lengths, counts
    # f = a*s + b*s^2 at two lengths: solve the 2x2 system.
    quadratic = max(0.0, (f2 / s2 - f1 / s1) / (s2 - s1))
    linear = max(0.0, f1 / s1 - quadratic * s1)
    return FlopModel(linear=linear, quadratic=quadratic)


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """The device's peak FLOP/s for ``precision`` and where the number comes from.

    GPUs: the data-sheet table above (0 when the GPU is not in it). CPU: a short measured fp32
    matrix multiply at the current thread count, the best of a few runs, so MFU on CPU reads as
    "share of what this machine's matmul reaches", not of a theoretical peak.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, tf32, fp32 in GPU_PEAKS:
            if key in name:
                if precision in ("bf16", "fp16"):
                    return half, f"{key} data sheet, {precision}"
                tf32_on = torch.backends.cuda.matmul.allow_tf32
                return (tf32, f"{key} data sheet, tf32") if tf32_on else (fp32, f"{key} data sheet, fp32")
        return 0.0, f"{name}: not in kiln's peak table"
    return measure_cpu_matmul_peak(), f"measured fp32 matmul, {torch.get_num_threads()} threads"


def measure_cpu_matmul_peak(n: int = 512, seconds: float = 0.3) -> float:
    """FLOP/s of an n x n fp32 matrix multiply on this CPU (best of repeated runs)."""
    g = torch.Generator().manual_seed(0)  # leave the global RNG (dropout, data order) alone
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def data_wait_advice(share: float, num_workers: int, pin_memory: bool, cuda: bool) -> str:
    """What to change when the loop waits for data ``share`` of its time."""
    if num_workers == 0:
        change = "set data.num_workers (e.g. 2-8) so batches are prepared in background processes"
    else:
        change = (f"raise data.num_workers (now {num_workers}) or data.prefetch_factor, and set "
                  "data.persistent_workers=true")
    if cuda and not pin_memory:
        change += "; set data.pin_memory=true"
    return (f"the training loop spent {share:.0%} of its step time waiting for data: {change}")
