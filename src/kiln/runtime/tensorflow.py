"""Runtime backends for TensorFlow artifacts: the trained Keras model (``keras-fp32``, the parity
reference and the benchmark baseline of a keras run) and the exported SavedModel
(``tf-savedmodel``). Both satisfy ``kiln.runtime.Backend``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kiln.extras import import_keras

tf, keras = import_keras()


def set_tf_threads(threads: int | None) -> None:
    """TensorFlow's intra-op threads, when they can still be set (before TensorFlow starts)."""
    if not threads or tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already started in this process: its thread pool stays as it is


class KerasBackend:
    """A Keras model in inference mode through one traced tf.function (no dropout, any shape)."""

    def __init__(self, model: Any, *, threads: int | None = None) -> None:
        from kiln.models.keras_model import serving_function

        set_tf_threads(threads)
        self.model = model
        self.threads = threads
        self.name = "keras-fp32"
        self._logits = serving_function(model)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, threads: int | None = None) -> KerasBackend:
        from kiln.models.keras_model import load_keras_model

        set_tf_threads(threads)
        return cls(load_keras_model(path), threads=threads)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._logits(input_ids, attention_mask).numpy().astype(np.float32)
        return out

    def info(self) -> dict[str, Any]:
        return {"backend": "keras", "precision": "fp32", "keras": keras.__version__,
                "tensorflow": tf.__version__,
                "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()
                or "default"}


class SavedModelBackend:
    """A TensorFlow SavedModel's ``serving_default`` signature."""

    def __init__(self, folder: str | os.PathLike[str], *, threads: int | None = None) -> None:
        set_tf_threads(threads)
        self.path = Path(folder)
        self.threads = threads
        self.name = f"tensorflow:{self.path.name}"
        self._loaded = tf.saved_model.load(str(self.path))
        self._signature = self._loaded.signatures["serving_default"]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self._signature(input_ids=tf.constant(input_ids, tf.int64),
                              attention_mask=tf.constant(attention_mask, tf.int64))
        logits: np.ndarray = out["logits"].numpy().astype(np.float32)
        return logits

    def info(self) -> dict[str, Any]:
        return {"backend": "tensorflow", "file": self.path.name, "tensorflow": tf.__version__,
                "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()
                or "default"}
