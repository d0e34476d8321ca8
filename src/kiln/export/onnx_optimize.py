"""ONNX Runtime graph optimisation, int8 quantisation (dynamic and calibrated static) and fp16."""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx


def optimize_for_ort(src: Path, dst: Path, num_heads: int, hidden_size: int,
                     fuse_attention: bool = False) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (LayerNorm, GELU, attention fusions where they match).

    The fused Attention keeps the raw 0/1 attention mask, so it is right for any padding layout a
    client sends (ORT's default turns the mask into lengths, which assumes right padding).

    ORT's own attention patterns were written for the TorchScript exporter's graphs and miss the
    dynamo exporter's; with ``fuse_attention`` onnxscript's ORT fusions, which match those
    (scaled-dot-product attention into ORT's Attention operator), run first.

    Returns:
        The fused operator counts the optimizer reports.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_raw_attention_mask(True)
    fused = dst.with_name(f".{dst.name}.fused")
    try:
        with _quiet():
            if fuse_attention:
                ort_fusions(src, fused)
            else:
                shutil.copyfile(src, fused)
            opt = optimize_model(str(fused), model_type="bert", num_heads=num_heads,
                                 hidden_size=hidden_size, opt_level=1,
                                 optimization_options=options)
            stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(dst))
    finally:
        fused.unlink(missing_ok=True)
    return stats


def ort_fusions(src: Path, dst: Path) -> dict[str, int]:
    """onnxscript's ORT fusions on a dynamo-exported graph (attention, skip-LayerNorm, GELU)."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort as ort_fusions

    model, counts = ort_fusions(ir.load(str(src)))
    ir.save(model, str(dst))
    return {k: v for k, v in counts.items() if v}


def quantizable_nodes(path: Path, op_types: Sequence[str]) -> list[str]:
    """Names of the ``op_types`` nodes of ``path`` that carry a weight matrix (a float initializer
    of rank 2 or more): the layers int8 quantisation changes."""
    model = onnx.load(str(path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer
               if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) >= 2}
    return [node.name for node in model.graph.node
            if node.op_type in op_types and weights.intersection(node.input)]


# what ORT's dynamic and kiln's static quantisation change (see their op_types_to_quantize)
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "Gather", "EmbedLayerNormalization")
STATIC_OPS = ("MatMul", "Gemm")


def quantize_dynamic_int8(src: Path, dst: Path, per_channel: bool = True,
                          fp32_nodes: Sequence[str] = ()) -> None:
    """int8 weights, activations quantised on the fly per batch (no calibration data needed);
    ``fp32_nodes`` stay unquantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
            nodes_to_exclude=list(fp32_nodes),
            # graphs from the ORT optimizer carry contrib ops whose output types quantisation
            # cannot infer; FLOAT is what they produce here
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def quantize_static_int8(src: Path, dst: Path, calibration: Iterable[dict[str, np.ndarray]],
                         fp32_nodes: Sequence[str] = (), *, operator_format: bool = False,
                         signed_activations: bool = False) -> None:
    """QDQ int8 with activation ranges calibrated (MinMax) on ``calibration`` batches;
    ``fp32_nodes`` stay unquantised. kiln's artifact is QDQ with u8 activations; the keywords
    give ORT's other layouts (QOperator, symmetric s8 activations), which its benchmarks compare."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with _quiet():
        quantize_static(
            str(src), str(dst), Reader(),
            quant_format=QuantFormat.QOperator if operator_format else QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if signed_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # Only the matrix products: quantising the additive attention mask (-inf / float min)
            # or softmax with MinMax ranges wrecks accuracy (seen: 21 points lost).
            op_types_to_quantize=list(STATIC_OPS), nodes_to_exclude=list(fp32_nodes),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                           "CalibTensorRangeSymmetric": False,
                           "ActivationSymmetric": signed_activations},
            calibration_providers=["CPUExecutionProvider"],
        )


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute for GPUs; inputs and outputs keep their types (int64 / float32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save_model(model, str(dst))


class _quiet:
    """Silence the INFO logging and warnings that ORT's tools print for every node."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        logging.root.setLevel(self._level)
        self._warnings.__exit__(*exc)
