"""Inference: one Predictor interface over every backend (torch eager fp32/int8, ONNX Runtime,
OpenVINO, TensorRT, Keras, TensorFlow SavedModel), and the artifact table they run."""

from kiln.runtime.artifacts import (
    ARTIFACTS,
    KIND,
    KINDS,
    PREFERENCE,
    ArtifactKind,
    default_artifacts,
    reference_artifact,
    runs_here,
)
from kiln.runtime.backends import (
    OpenVinoBackend,
    OrtBackend,
    TensorRtBackend,
    TorchBackend,
    quantize_dynamic_int8,
)
from kiln.runtime.load import (
    ArtifactChoice,
    artifact_folder,
    bench_pick,
    choose_artifact,
    default_artifact,
    list_artifacts,
    load_predictor,
    make_backend,
    open_file,
)
from kiln.runtime.predictor import Backend, Predictions, Predictor, pad_batch, softmax

__all__ = [
    "ARTIFACTS",
    "KIND",
    "KINDS",
    "PREFERENCE",
    "ArtifactChoice",
    "ArtifactKind",
    "Backend",
    "OpenVinoBackend",
    "OrtBackend",
    "Predictions",
    "Predictor",
    "TensorRtBackend",
    "TorchBackend",
    "artifact_folder",
    "bench_pick",
    "choose_artifact",
    "default_artifact",
    "default_artifacts",
    "list_artifacts",
    "load_predictor",
    "make_backend",
    "open_file",
    "pad_batch",
    "quantize_dynamic_int8",
    "reference_artifact",
    "runs_here",
    "softmax",
]
