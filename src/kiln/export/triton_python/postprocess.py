"""Triton Python-backend model: logits in, softmax probabilities and the label name out.

Copied by `kiln triton` as ``<name>_postprocess/1/model.py``. ``config.pbtxt`` parameter ``labels``
is the JSON list of label names, in the order of the logits. The softmax and the argmax are kiln's
(float32, max-shifted), so the answers match `kiln serve` and kiln's Predictor.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

LOGITS, PROBABILITIES, LABEL = "logits", "probabilities", "label"


class TritonPythonModel:
    """Triton's Python-backend hooks: ``initialize`` once per instance, ``execute`` per batch."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        labels = json.loads(config["parameters"]["labels"]["string_value"])
        self.labels = np.array([str(label).encode("utf-8") for label in labels], dtype=np.object_)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, LOGITS).as_numpy()
            probabilities = softmax(logits.astype(np.float32))
            labels = self.labels[probabilities.argmax(axis=-1)].reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(PROBABILITIES, probabilities),
                pb_utils.Tensor(LABEL, labels)]))
        return responses


def softmax(logits: np.ndarray) -> np.ndarray:
    """kiln.runtime.softmax, which this file cannot import (kiln is not in Triton)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out
