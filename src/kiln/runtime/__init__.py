"""One Predictor interface over inference backends (torch eager fp32/int8, ONNX Runtime, OpenVINO,
TensorRT)."""

from kiln.runtime.backends import (
    OpenVinoBackend,
    OrtBackend,
    TensorRtBackend,
    TorchBackend,
    quantize_dynamic_int8,
)
from kiln.runtime.load import (
    artifact_folder,
    backend_available,
    list_artifacts,
    load_predictor,
    make_backend,
    reference_artifact,
)
from kiln.runtime.predictor import Backend, Predictions, Predictor, pad_batch, softmax

__all__ = [
    "Backend",
    "OpenVinoBackend",
    "OrtBackend",
    "TensorRtBackend",
    "Predictions",
    "Predictor",
    "TorchBackend",
    "artifact_folder",
    "backend_available",
    "list_artifacts",
    "load_predictor",
    "make_backend",
    "pad_batch",
    "quantize_dynamic_int8",
    "reference_artifact",
    "softmax",
]
