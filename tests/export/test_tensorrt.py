"""TensorRT fp16 engine from the exported ONNX: needs a CUDA GPU and the tensorrt package."""

from pathlib import Path

import pytest

from kiln.export import export_run
from kiln.extras import installed
from kiln.runtime import load_predictor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not installed("tensorrt"),
                       reason="needs a CUDA GPU and the tensorrt package (pip install tensorrt)"),
]


def test_tensorrt_engine_passes_parity_and_predicts_like_torch(exported_run: Path,
                                                              tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    report = export_run(run, artifacts=["onnx-fp32", "tensorrt-fp16"])
    trt = next(p for p in report.parity if p.artifact == "tensorrt-fp16")
    assert trt.passed, trt
    texts = ["my card was charged twice", "the parcel never arrived", "reset my password"]
    engine = load_predictor(run, "tensorrt-fp16").predict(texts)
    eager = load_predictor(run, "torch-fp32").predict(texts)
    assert engine.labels == eager.labels
