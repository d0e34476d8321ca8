"""The trained model in its own framework, as export needs it: the parity reference, its ONNX
export, and the artifacts built from the model itself rather than from its ONNX."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kiln.export.fallback import MixedPrecision
from kiln.export.fusable import fusable_copy
from kiln.export.onnx_export import export_onnx, export_onnx_torchscript
from kiln.models import load_model_dir
from kiln.runtime.backends import TorchBackend, linear_layers
from kiln.runtime.predictor import Backend


@dataclass(frozen=True)
class TrainedModel:
    """The trained model in its own framework, as export needs it."""

    reference: Backend  # the model itself: the parity reference
    reference_name: str  # torch-fp32, keras-fp32
    weights_file: str  # copied next to the artifacts, so that export/ stands alone
    write_onnx: Callable[[Path], object]  # fp32 ONNX with dynamic axes, checked against the model
    # artifacts built from the model itself (torch-int8, tf-savedmodel), each into a folder
    native: dict[str, Callable[[Path], Backend]]
    # the model's fusable twin as ONNX (see kiln.export.fusable); returns False when it has none
    write_fusable_onnx: Callable[[Path], bool] | None = None
    # native int8 artifacts: their quantised layers, and a build that keeps some of them in fp32
    mixed_precision: dict[str, MixedPrecision] = field(default_factory=dict)


def torch_trained_model(model_dir: Path) -> TrainedModel:
    """The ``TrainedModel`` of a torch model folder."""
    loaded = load_model_dir(model_dir)
    model, max_length = loaded.model, int(loaded.manifest["max_length"])

    def write_fusable_onnx(path: Path) -> bool:
        twin = fusable_copy(model)
        if twin is not None:
            export_onnx_torchscript(twin, path, max_length)
        return twin is not None

    def int8(fp32_layers: Sequence[str] = ()) -> Backend:
        return TorchBackend(copy.deepcopy(model), int8=True, fp32_layers=fp32_layers)

    return TrainedModel(
        reference=TorchBackend(model), reference_name="torch-fp32",
        weights_file="model.safetensors",
        write_onnx=lambda path: export_onnx(model, path, max_length),
        native={"torch-int8": lambda _: int8()}, write_fusable_onnx=write_fusable_onnx,
        mixed_precision={"torch-int8": MixedPrecision(linear_layers(model), int8)})
