"""Device and mixed-precision choices, resolved once from config."""

from __future__ import annotations

import warnings

import torch

from kiln.errors import ConfigError


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


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp32 on CPU (bf16 is slower on CPUs without bf16 units), bf16 on CUDA if supported,
    else fp16.

    Raises:
        ConfigError: fp16 on CPU, where there is no GradScaler support and no speed-up.
    """
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs CUDA (it uses a GradScaler); "
                          "use fp32 or bf16 on CPU")
    if precision == "bf16" and device.type == "cpu":
        warnings.warn("train.precision=bf16 on CPU: usually slower than fp32 unless the CPU has "
                      "bf16 units (AMX/AVX512-BF16)", stacklevel=2)
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The torch.autocast dtype for ``precision``, or None for fp32 (autocast off)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
