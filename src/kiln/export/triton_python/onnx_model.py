"""Triton Python-backend model: the classifier's ONNX file through ``onnxruntime``.

Copied by `kiln triton --model-backend python` as ``<name>_model/1/model.py``, beside the ONNX file
(``config.pbtxt`` parameter ``onnx_file``), for Triton builds that have the Python backend but not
the ONNX Runtime one (the ``tritonserver`` in the ``nvidia-pytriton`` wheel). Inputs and outputs
are those of ``config.pbtxt``. Requests Triton hands over together run as one batch when their
sequence lengths agree (the tokenizer step pads each of its batches to one length).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Triton's Python-backend hooks: ``initialize`` once per instance, ``execute`` per batch."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params["onnx_file"]
        providers: list[Any] = ["CPUExecutionProvider"]
        if (args.get("model_instance_kind") == "GPU"
                and "CUDAExecutionProvider" in ort.get_available_providers()):
            device = int(args.get("model_instance_device_id", "0"))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.inputs = [spec["name"] for spec in config["input"]]
        self.outputs = [spec["name"] for spec in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy()
                  for name in self.inputs} for r in requests]
        results: list[list[np.ndarray]] = [[] for _ in requests]
        for group in _same_shapes(feeds):
            batch = {name: np.concatenate([feeds[i][name] for i in group]) for name in self.inputs}
            outputs = self.session.run(self.outputs, batch)
            start = 0
            for i in group:
                rows = len(feeds[i][self.inputs[0]])
                results[i] = [np.ascontiguousarray(out[start:start + rows]) for out in outputs]
                start += rows
        return [pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, value) for name, value in zip(self.outputs, result)])
            for result in results]


def _same_shapes(feeds: list[dict[str, np.ndarray]]) -> list[list[int]]:
    """Indices of the requests grouped by the shape of their rows (all inputs), in order."""
    groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for i, feed in enumerate(feeds):
        groups.setdefault(tuple(value.shape[1:] for value in feed.values()), []).append(i)
    return list(groups.values())
