"""Importing Keras 3 on the TensorFlow backend, only when the keras path is used.

Nothing else in kiln imports tensorflow or keras at module level: the PyTorch path must work
without the ``kiln[keras]`` extra installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

from kiln.errors import ConfigError

INSTALL_HINT = "pip install 'kiln[keras]'"


def keras_available() -> bool:
    """True when tensorflow and keras are installed (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "keras"))


def import_keras() -> tuple[ModuleType, ModuleType]:
    """``(tensorflow, keras)``, with Keras on the TensorFlow backend.

    Raises:
        ConfigError: the extra is not installed, or Keras was already imported with another backend.
    """
    if not keras_available():
        raise ConfigError(f"framework=keras needs TensorFlow and Keras: {INSTALL_HINT}")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
        # TensorFlow's C++ start-up notices (CPU features, oneDNN) are not warnings a user acts on
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"kiln's keras path runs Keras on TensorFlow, but Keras was started with "
                          f"the {keras.backend.backend()!r} backend; unset KERAS_BACKEND")
    return tf, keras


def keras_versions() -> dict[str, str]:
    """Versions of the TensorFlow stack, for config.yaml and manifests."""
    tf, keras = import_keras()
    return {"tensorflow": tf.__version__, "keras": keras.__version__}
