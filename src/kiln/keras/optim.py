"""AdamW and the warmup + decay schedule of the torch path, as Keras objects.

The schedule is the function of ``kiln.train.optim.make_scheduler``: the learning rate of update
``k`` (0-based) is ``lr * (k + 1) / (warmup + 1)`` during warmup, then linear or cosine decay to 0
at ``total_steps``, or flat.
"""

from __future__ import annotations

import math
from typing import Any

from kiln.config import TrainConfig
from kiln.extras import import_keras

import_keras()

import keras  # noqa: E402
from keras import ops  # noqa: E402

ADAM_EPSILON = 1e-8  # torch's AdamW default (Keras' is 1e-7)


@keras.saving.register_keras_serializable(package="kiln")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak``, then ``linear``/``cosine`` decay to 0 at ``total_steps``, or
    ``constant``.

    Keras calls a schedule with the number of micro-batches seen; with gradient accumulation an
    update happens every ``accumulation`` of them, so the step is the number of updates done.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, kind: str,
                 accumulation: int = 1) -> None:
        if kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.kind, self.accumulation = kind, accumulation

    def __call__(self, micro_step: Any) -> Any:
        step = ops.cast(ops.floor_divide(micro_step, self.accumulation), "float32")
        warmup = float(self.warmup_steps)
        warm = (step + 1.0) / (warmup + 1.0)
        if self.kind == "constant":
            decay = ops.ones_like(step)
        else:
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.clip((step - warmup) / span, 0.0, 1.0)
            decay = (1.0 - progress if self.kind == "linear"
                     else 0.5 * (1.0 + ops.cos(math.pi * progress)))
        return self.peak * ops.where(step < warmup, warm, decay)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "kind": self.kind,
                "accumulation": self.accumulation}


def make_optimizer(model: keras.Model, cfg: TrainConfig, total_steps: int,
                   warmup_steps: int) -> keras.optimizers.AdamW:
    """AdamW where matrices and embeddings decay and biases / LayerNorm scales do not (the torch
    rule: parameters with fewer than 2 dimensions), clipping the global gradient norm.

    With ``grad_accum_steps`` > 1 Keras averages the gradients of the micro-batches before the
    update: the same update as one large batch when the micro-batches have equal sizes.
    """
    accumulation = cfg.grad_accum_steps
    optimizer = keras.optimizers.AdamW(
        learning_rate=WarmupDecay(cfg.lr, warmup_steps, total_steps, cfg.schedule, accumulation),
        weight_decay=cfg.weight_decay, beta_1=cfg.beta1, beta_2=cfg.beta2, epsilon=ADAM_EPSILON,
        global_clipnorm=cfg.max_grad_norm or None,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    optimizer.exclude_from_weight_decay(
        var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    return optimizer
