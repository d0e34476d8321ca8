"""OpenVINO IR for Intel CPUs: fp32, and int8 by NNCF post-training quantisation (optional extra
``kiln[openvino]``).

NNCF's transformer preset applies SmoothQuant by default; on the reference model that cost 2.9
points of argmax agreement (../shared/FINDINGS.md) while SmoothQuant off kept 99.4%, so kiln turns
it off, and the parity gate still measures the result like any other artifact.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from kiln.runtime.backends import openvino_core


def convert_openvino(onnx_file: Path, xml: Path) -> Path:
    """ONNX -> OpenVINO IR (``xml`` plus its ``.bin``), dynamic axes kept, fp32 weights."""
    import openvino as ov

    model = ov.convert_model(str(onnx_file))
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml


def openvino_matmuls(xml: Path) -> dict[str, str]:
    """The MatMul operations of an IR converted from ONNX, by the ONNX node they came from (a
    Gemm becomes ``<node>/WithoutBiases``)."""
    return {op.get_friendly_name().removesuffix("/WithoutBiases"): op.get_friendly_name()
            for op in openvino_core().read_model(str(xml)).get_ops() if op.get_type_name() == "MatMul"}


def quantize_openvino_int8(
    xml: Path, out_xml: Path, calibration: Iterable[dict[str, np.ndarray]],
    smooth_quant: bool = False, fp32_layers: Sequence[str] = (),
) -> Path:
    """NNCF post-training int8 quantisation with the transformer preset, calibrated on
    ``calibration`` batches; SmoothQuant off unless asked for; ``fp32_layers`` (operation names)
    stay unquantised."""
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
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return out_xml
