"""Accuracy-aware mixed precision: an int8 artifact that fails parity gets its most harmful
layers back in fp32, one at a time, until it passes or a cap is reached.

Quantising every layer of some models costs more than the gate allows, while a few layers cause
most of the loss. Measured on all-MiniLM-L6-v2 fine-tuned on SST-2: dynamic int8 agreed with the
model on 98.3% of the dev set. Two FFN output projections, whose GELU inputs carry outliers, did
most of the damage, and with those two in fp32 it agreed on 99.3%. Intel Neural Compressor's fp32
fallback and NNCF's accuracy control do the same kind of search.

Layers are ranked on calibration texts from the training set, not the evaluation set. Each
layer is quantised alone and ranked by how far it moves the logits (mean squared difference
from the fp32 model). The parity gate then judges each candidate on the evaluation set as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kiln.export.parity import EvalBatch, Parity, run_backend
from kiln.runtime.predictor import Backend

# Builds the artifact with the named layers left in fp32 (every other one quantised).
Build = Callable[[Sequence[str]], Backend]


@dataclass(frozen=True)
class MixedPrecision:
    """How to rebuild one int8 artifact with some of its layers in fp32."""

    layers: list[str]  # the layers int8 quantisation changes, by name
    build: Build
    # rank the layers with this other artifact's builds, which share their names and are cheaper
    # (OpenVINO's NNCF takes about 8 s a build where ONNX Runtime's static int8 takes 4)
    ranked_by: str | None = None


@dataclass(frozen=True)
class Fallback:
    """An artifact that passed with ``fp32_layers`` unquantised, out of ``quantizable``."""

    fp32_layers: list[str]
    quantizable: int
    parity: Parity


def rank_layers(layers: Sequence[str], build: Build, calibration: Sequence[EvalBatch],
                reference: np.ndarray) -> list[str]:
    """``layers`` from the most to the least harmful: each is quantised alone and scored by the
    mean squared difference of its logits from ``reference`` (the fp32 model's, on
    ``calibration``)."""
    cost = {}
    for layer in layers:
        logits = run_backend(build([other for other in layers if other != layer]), calibration)
        cost[layer] = float(np.mean((logits - reference) ** 2))
    return sorted(layers, key=lambda layer: -cost[layer])


def fall_back(order: Sequence[str], quantizable: int, build: Build,
              check: Callable[[Backend], Parity], max_fp32_fraction: float) -> Fallback | None:
    """Keep the first layers of ``order`` (most harmful first) in fp32, one more at a time,
    until ``check`` passes.

    At most ``max_fp32_fraction`` of the ``quantizable`` layers (rounded up) go back to fp32.
    Returns None when no build within that cap passes; otherwise the last ``build`` call was the
    passing one.
    """
    cap = min(len(order), int(np.ceil(max_fp32_fraction * quantizable)))
    for count in range(1, cap + 1):
        parity = check(build(order[:count]))
        if parity.passed:
            return Fallback(list(order[:count]), quantizable, parity)
    return None
