"""Training: the framework switch, the torch loop, its checkpoints and evaluation pass.

``train(cfg)`` hands ``cfg`` to the trainer of ``cfg.framework``: the torch loop
(``kiln.train.loop``) or the Keras trainer (``kiln.keras``, which imports TensorFlow only then).
"""

from __future__ import annotations

from kiln.config import Config
from kiln.run import TrainResult, TrainState


def train(cfg: Config, *, fresh: bool = False, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` into ``cfg.run_dir`` with its framework, resuming from the latest checkpoint
    unless ``fresh``.

    Raises:
        ConfigError, DataError, RunDirError: bad config, data or run directory.
        TrainingDiverged: too many steps in a row with a non-finite loss or gradient.
    """
    if cfg.framework == "keras":
        from kiln.keras import train_keras  # imports TensorFlow only now

        return train_keras(cfg, fresh=fresh, progress=progress)
    from kiln.train.loop import train_torch

    return train_torch(cfg, fresh=fresh, progress=progress)


__all__ = ["TrainResult", "TrainState", "train"]
