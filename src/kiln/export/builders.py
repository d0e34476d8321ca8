"""How each kind of artifact is built: one ``build_*`` function per entry of the artifact table
(``kiln.runtime.artifacts``), and one ``mixed_*`` function per int8 kind that can fall back to
fp32 layers when it fails parity.

A builder writes its artifact into the job's folder from its source (built before it, see
``ArtifactKind.source``) and returns None, or returns the backend of an artifact built from the
trained model itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import RunDirError
from kiln.export.fallback import MixedPrecision
from kiln.export.onnx_optimize import (
    DYNAMIC_OPS,
    STATIC_OPS,
    convert_fp16,
    optimize_for_ort,
    quantizable_nodes,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from kiln.export.openvino_export import (
    convert_openvino,
    openvino_matmuls,
    quantize_openvino_int8,
    with_inference_precision,
)
from kiln.export.tensorrt_export import build_engine
from kiln.export.trained import TrainedModel
from kiln.models import ort_optimizer_options
from kiln.runtime.artifacts import KIND
from kiln.runtime.backends import OpenVinoBackend, OrtBackend
from kiln.runtime.predictor import Backend

FUSABLE_FILE = "model.fusable.onnx"  # intermediate: the fusable twin before ORT optimisation


@dataclass
class BuildJob:
    """What the builders of one export share."""

    work: Path  # the export folder being assembled
    trained: TrainedModel
    manifest: dict[str, Any]  # the trained model's manifest
    calibration: list[dict[str, np.ndarray]]  # training texts for static quantisation ranges
    fused: dict[str, int] = field(default_factory=dict)  # ORT's fused operators (onnx-opt)

    def path(self, name: str) -> Path:
        """Where artifact ``name`` goes."""
        return self.work / KIND[name].file


def build_torch_int8(job: BuildJob) -> Backend:
    return job.trained.native["torch-int8"](job.work)


def build_tf_savedmodel(job: BuildJob) -> Backend:
    return job.trained.native["tf-savedmodel"](job.work)


def build_onnx_fp32(job: BuildJob) -> None:
    job.trained.write_onnx(job.path("onnx-fp32"))


def build_onnx_opt(job: BuildJob) -> None:
    """ORT's offline-optimised graph. The fusable twin of the model (same weights, BERT's operator
    pattern) lets ORT fuse attention; other models are optimised from model.onnx (pretrained
    encoders with onnxscript's attention fusions first, see ort_optimizer_options)."""
    source, fusable = job.path("onnx-fp32"), job.work / FUSABLE_FILE
    write_fusable = job.trained.write_fusable_onnx
    if write_fusable is not None and write_fusable(fusable):
        source = fusable
    model = job.manifest["model"]
    job.fused = optimize_for_ort(source, job.path("onnx-opt"),
                                 **ort_optimizer_options(model["name"], model["kwargs"]))
    fusable.unlink(missing_ok=True)


def build_onnx_int8_dynamic(job: BuildJob) -> None:
    quantize_dynamic_int8(job.path("onnx-opt"), job.path("onnx-int8-dynamic"))


def build_onnx_int8_static(job: BuildJob) -> None:
    quantize_static_int8(job.path("onnx-fp32"), job.path("onnx-int8-static"), job.calibration)


def build_onnx_fp16(job: BuildJob) -> None:
    convert_fp16(job.path("onnx-fp32"), job.path("onnx-fp16"))


def build_openvino_fp32(job: BuildJob) -> None:
    convert_openvino(job.path("onnx-fp32"), job.path("openvino-fp32"))


def build_openvino_int8(job: BuildJob) -> None:
    quantize_openvino_int8(job.path("openvino-fp32"), job.path("openvino-int8"), job.calibration)


def build_openvino_bf16(job: BuildJob) -> None:
    _with_kind_precision(job, "openvino-fp32", "openvino-bf16")


def build_openvino_int8_bf16(job: BuildJob) -> None:
    _with_kind_precision(job, "openvino-int8", "openvino-int8-bf16")


def _with_kind_precision(job: BuildJob, source: str, name: str) -> None:
    """IR ``source`` as artifact ``name``, recording ``name``'s inference precision.

    Raises:
        RunDirError: ``name`` computes in a precision this CPU has no native support for, so its
            parity could not be measured as it will be served.
    """
    why = KIND[name].not_built_here()
    if why is not None:
        raise RunDirError(f"{name} cannot be built on this machine: it {why}")
    precision = KIND[name].inference_precision
    assert precision is not None, f"{name} has no inference precision to record"
    with_inference_precision(job.path(source), job.path(name), precision)


def build_tensorrt_fp16(job: BuildJob) -> None:
    build_engine(job.path("onnx-fp32"), job.path("tensorrt-fp16"), int(job.manifest["max_length"]))


# Mixed precision: each int8 kind's quantised layers, and a build (into a side file, see
# keep_fallback) that keeps some of them in fp32. Layers built from ONNX are named as the graph's
# nodes, which OpenVINO keeps as its operations' names. None: the artifact cannot fall back here.

def mixed_torch_int8(job: BuildJob) -> MixedPrecision | None:
    return job.trained.mixed_precision.get("torch-int8")


def mixed_onnx_int8_dynamic(job: BuildJob) -> MixedPrecision | None:
    optimized = job.path("onnx-opt")
    if not optimized.exists():
        return None

    def build(fp32: Sequence[str]) -> Backend:
        side = side_file(job.work, "onnx-int8-dynamic")
        quantize_dynamic_int8(optimized, side, fp32_nodes=fp32)
        return OrtBackend(side)

    return MixedPrecision(quantizable_nodes(optimized, DYNAMIC_OPS), build)


def mixed_onnx_int8_static(job: BuildJob) -> MixedPrecision | None:
    onnx_path = job.path("onnx-fp32")
    if not onnx_path.exists():
        return None

    def build(fp32: Sequence[str]) -> Backend:
        side = side_file(job.work, "onnx-int8-static")
        quantize_static_int8(onnx_path, side, job.calibration, fp32_nodes=fp32)
        return OrtBackend(side)

    return MixedPrecision(quantizable_nodes(onnx_path, STATIC_OPS), build)


def mixed_openvino_int8(job: BuildJob) -> MixedPrecision | None:
    return _mixed_openvino_int8(job, "openvino-int8")


def mixed_openvino_int8_bf16(job: BuildJob) -> MixedPrecision | None:
    return _mixed_openvino_int8(job, "openvino-int8-bf16")


def _mixed_openvino_int8(job: BuildJob, name: str) -> MixedPrecision | None:
    """The fallback of OpenVINO int8 artifact ``name``: NNCF int8 from the fp32 IR with some
    MatMuls left alone, computed in ``name``'s inference precision."""
    fp32_ir = job.path("openvino-fp32")
    if not fp32_ir.exists():
        return None
    names = openvino_matmuls(fp32_ir)
    precision = KIND[name].inference_precision

    def build(fp32: Sequence[str]) -> Backend:
        side = side_file(job.work, name)
        quantize_openvino_int8(fp32_ir, side, job.calibration,
                               fp32_layers=[names[layer] for layer in fp32],
                               inference_precision=precision)
        return OpenVinoBackend(side, max_length=int(job.manifest["max_length"]))

    # NNCF quantises the same weight MatMuls as ORT's static int8 (per-channel weights,
    # calibrated per-tensor activations), and ranking with ORT's builds is cheaper
    static_layers = quantizable_nodes(job.path("onnx-fp32"), STATIC_OPS)
    return MixedPrecision([layer for layer in static_layers if layer in names], build,
                          ranked_by="onnx-int8-static")


def side_file(work: Path, name: str) -> Path:
    return work / f".fallback.{KIND[name].file}"


def keep_fallback(work: Path, name: str) -> None:
    """Put the passing mixed-precision build of ``name`` in place of the all-int8 one."""
    side, final = side_file(work, name), work / KIND[name].file
    if side.exists():
        side.replace(final)
        if side.suffix == ".xml":  # OpenVINO IR: the weights beside it
            side.with_suffix(".bin").replace(final.with_suffix(".bin"))


def remove(work: Path, name: str) -> None:
    """Delete the file of artifact ``name`` (an intermediate step that is not shipped)."""
    path = work / KIND[name].file
    path.unlink(missing_ok=True)
    if path.suffix == ".xml":
        path.with_suffix(".bin").unlink(missing_ok=True)
