"""The artifact table: what each kind of inference artifact is, declared once.

Export builds and verifies artifacts from it, the runtime opens them with it, bench measures the
ones it can run here, Triton packaging picks the ONNX ones, and serve loads whichever was chosen.
Adding a kind of artifact is one entry here plus its builder in ``kiln.export.builders``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln import extras


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact."""

    name: str  # e.g. onnx-int8-dynamic: what users pass to --artifact
    file: str  # its file (or folder) in export/
    backend: str  # the runtime that runs it: torch, tensorflow, onnxruntime, openvino, tensorrt
    precision: str  # fp32, fp16 or int8
    # the function of kiln.export.builders that builds it; None: the trained model itself
    builder: str | None = None
    source: str | None = None  # the artifact it is built from (None: the trained model)
    framework: str | None = None  # built from (or being) a model of this framework only
    extra: str | None = None  # the optional extra (kiln.extras) needed to build and run it
    # the function of kiln.export.builders that rebuilds it with some layers in fp32 when it
    # fails parity (int8 kinds; see kiln.export.fallback); None: it never falls back
    fallback: str | None = None

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    def installed(self) -> bool:
        """Whether this machine can build and run it (its extra is installed)."""
        return self.extra is None or extras.installed(self.extra)


KINDS: tuple[ArtifactKind, ...] = (
    # the trained models themselves: the parity reference and the benchmark baseline
    ArtifactKind("torch-fp32", "model.safetensors", "torch", "fp32", framework="torch"),
    ArtifactKind("keras-fp32", "model.keras", "tensorflow", "fp32", framework="keras",
                 extra="keras"),
    # built in this order; each after its source
    ArtifactKind("torch-int8", "model.safetensors", "torch", "int8", "build_torch_int8",
                 framework="torch", fallback="mixed_torch_int8"),
    ArtifactKind("tf-savedmodel", "saved_model", "tensorflow", "fp32", "build_tf_savedmodel",
                 framework="keras", extra="keras"),
    ArtifactKind("onnx-fp32", "model.onnx", "onnxruntime", "fp32", "build_onnx_fp32"),
    ArtifactKind("onnx-opt", "model.opt.onnx", "onnxruntime", "fp32", "build_onnx_opt",
                 source="onnx-fp32"),
    ArtifactKind("onnx-int8-dynamic", "model.int8.onnx", "onnxruntime", "int8",
                 "build_onnx_int8_dynamic", source="onnx-opt",
                 fallback="mixed_onnx_int8_dynamic"),
    ArtifactKind("onnx-int8-static", "model.int8-static.onnx", "onnxruntime", "int8",
                 "build_onnx_int8_static", source="onnx-fp32", fallback="mixed_onnx_int8_static"),
    ArtifactKind("onnx-fp16", "model.fp16.onnx", "onnxruntime", "fp16", "build_onnx_fp16",
                 source="onnx-fp32"),
    ArtifactKind("openvino-fp32", "model.ov.xml", "openvino", "fp32", "build_openvino_fp32",
                 source="onnx-fp32", extra="openvino"),
    ArtifactKind("openvino-int8", "model.ov-int8.xml", "openvino", "int8", "build_openvino_int8",
                 source="openvino-fp32", extra="openvino", fallback="mixed_openvino_int8"),
    ArtifactKind("tensorrt-fp16", "model.trt.plan", "tensorrt", "fp16", "build_tensorrt_fp16",
                 source="onnx-fp32", extra="tensorrt"),
)
KIND = {kind.name: kind for kind in KINDS}
ARTIFACTS = tuple(kind.name for kind in KINDS if kind.builder)  # what `kiln export` can build
# Without benchmark numbers, the artifact expected to be fastest on a CPU comes first.
PREFERENCE = ("openvino-int8", "onnx-int8-dynamic", "onnx-int8-static", "onnx-opt", "onnx-fp32",
              "openvino-fp32", "torch-int8")


def reference_artifact(manifest: dict[str, Any]) -> str:
    """The trained model itself as an artifact name: ``torch-fp32`` or ``keras-fp32``."""
    return f"{manifest.get('framework', 'torch')}-fp32"


def buildable(framework: str) -> tuple[str, ...]:
    """Every artifact that can be built from a ``framework`` model, whatever is installed."""
    return tuple(name for name in ARTIFACTS if KIND[name].framework in (None, framework))


def default_artifacts(framework: str = "torch") -> tuple[str, ...]:
    """Every artifact this installation can build from a ``framework`` run (OpenVINO needs the
    kiln[openvino] extra, TensorRT the `tensorrt` package and a CUDA GPU)."""
    return tuple(name for name in buildable(framework) if KIND[name].installed())


def with_sources(names: list[str]) -> list[str]:
    """``names`` and every artifact they are built from, in build order."""
    wanted = set(names)
    for name in reversed(ARTIFACTS):  # a source always comes before what is built from it
        source = KIND[name].source
        if name in wanted and source is not None:
            wanted.add(source)
    return [name for name in ARTIFACTS if name in wanted]


def runs_here(name: str, manifest: dict[str, Any]) -> bool:
    """Whether this installation can run artifact ``name`` of ``manifest``'s folder (TensorFlow
    ones need kiln[keras], say)."""
    kind = KIND.get(name)
    if kind is None:  # recorded by a newer kiln: its backend decides
        backend = manifest.get("artifacts", {}).get(name, {}).get("backend")
        kind = next((k for k in KINDS if k.backend == backend), None)
    return kind is not None and kind.installed()
