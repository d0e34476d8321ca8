"""OpenVINO IR for Intel CPUs: fp32, and int8 by NNCF post-training quantisation (optional extra
``kiln[openvino]``), each also as an IR that records bf16 as its inference precision (for CPUs
with native bf16; it shares the weights file of the IR it is made from).

NNCF's transformer preset applies SmoothQuant by default; on the reference model that cost 2.9
points of argmax agreement (../shared/FINDINGS.md) while SmoothQuant off kept 99.4%, so kiln turns
it off, and the parity gate still measures the result like any other artifact.
"""

from __future__ import annotations

import contextlib
import filecmp
import io
import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from kiln.runtime.backends import PRECISION_RT_INFO, openvino_core


def convert_openvino(onnx_file: Path, xml: Path) -> Path:
    """ONNX -> OpenVINO IR (``xml`` plus its ``.bin``), dynamic axes kept, fp32 weights."""
    import openvino as ov

    model = ov.convert_model(str(onnx_file))
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def with_inference_precision(xml: Path, out_xml: Path, precision: str) -> Path:
    """IR ``xml`` as ``out_xml``, recording ``precision`` (``"bf16"``) as the inference precision
    kiln's OpenVINO backend compiles it with. The weights are the same bytes: ``out_xml``'s .bin
    is a hard link to ``xml``'s (a copy where the file system has no hard links)."""
    import openvino as ov

    model = openvino_core().read_model(str(xml))
    model.set_rt_info(precision, PRECISION_RT_INFO)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    share_identical(xml.with_suffix(".bin"), out_xml.with_suffix(".bin"))
    return out_xml


def share_identical(original: Path, copy: Path) -> None:
    """Make ``copy`` a hard link to ``original`` when their bytes are the same (one copy on disk;
    each name is still a whole file to checksum, package and ship). Left as it is otherwise."""
    if not filecmp.cmp(original, copy, shallow=False):
        return
    link = copy.with_name(f".link.{copy.name}")
    link.unlink(missing_ok=True)
    try:
        os.link(original, link)
    except OSError:  # no hard links here (some network or FAT file systems): keep the copy
        return
    link.replace(copy)


def openvino_matmuls(xml: Path) -> dict[str, str]:
    """The MatMul operations of an IR converted from ONNX, by the ONNX node they came from (a
    Gemm becomes ``<node>/WithoutBiases``)."""
    return {op.get_friendly_name().removesuffix("/WithoutBiases"): op.get_friendly_name()
            for op in openvino_core().read_model(str(xml)).get_ops() if op.get_type_name() == "MatMul"}


def quantize_openvino_int8(
    xml: Path, out_xml: Path, calibration: Iterable[dict[str, np.ndarray]],
    smooth_quant: bool = False, fp32_layers: Sequence[str] = (),
    inference_precision: str | None = None,
) -> Path:
    """NNCF post-training int8 quantisation with the transformer preset, calibrated on
    ``calibration`` batches; SmoothQuant off unless asked for; ``fp32_layers`` (operation names)
    stay unquantised; ``inference_precision`` (``"bf16"``), if given, recorded in the IR for the
    operations that are not int8."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    items = list(calibration)
    advanced = None if smooth_quant else AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1))
    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.ERROR)
    try:
        # NNCF draws progress bars on stdout/stderr; kiln prints its own summary instead
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            quantized = nncf.quantize(
                openvino_core().read_model(str(xml)), nncf.Dataset(items), subset_size=len(items),
                model_type=nncf.ModelType.TRANSFORMER, advanced_parameters=advanced,
                ignored_scope=nncf.IgnoredScope(names=list(fp32_layers)),
            )
    finally:
        nncf.set_log_level(level or logging.INFO)
    if inference_precision is not None:
        quantized.set_rt_info(inference_precision, PRECISION_RT_INFO)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml
