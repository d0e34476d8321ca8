"""The Keras/TensorFlow trainer (optional extra ``kiln[keras]``): the same config, data, run
directory and manifest as the torch path, trained with Keras 3 ``fit`` on TensorFlow. Its model is
``kiln.models.keras_model``, its runtime backends ``kiln.runtime.tensorflow``, its exports
``kiln.export.keras_export``.

Importing this package does not import TensorFlow; each function imports it when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.config import Config
    from kiln.run import TrainResult


def train_keras(cfg: Config, *, fresh: bool = False, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` with Keras (``kiln.keras.train.train_keras``, imported only now).

    Raises:
        ConfigError: TensorFlow/Keras are not installed, or the config cannot run here.
    """
    from kiln.keras import train

    return train.train_keras(cfg, fresh=fresh, progress=progress)


__all__ = ["train_keras"]
