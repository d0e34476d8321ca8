"""Export a trained model: ONNX (dynamic axes), ORT-optimised, int8 and fp16 variants with parity
checks, and a Triton model repository (an ensemble that takes text) around the chosen ONNX
artifact."""

from kiln.export.onnx_export import ExportError, export_onnx
from kiln.export.parity import Parity, Tolerance, format_parity_table
from kiln.export.pipeline import ExportReport, export_run
from kiln.export.triton import (
    TritonExportError,
    parse_triton_config,
    write_triton_repository,
)
from kiln.export.triton_ensemble import write_text_ensemble
from kiln.export.triton_run import triton_run
from kiln.runtime.artifacts import ARTIFACTS

__all__ = [
    "ARTIFACTS",
    "ExportError",
    "ExportReport",
    "Parity",
    "Tolerance",
    "TritonExportError",
    "export_onnx",
    "export_run",
    "format_parity_table",
    "parse_triton_config",
    "triton_run",
    "write_text_ensemble",
    "write_triton_repository",
]
