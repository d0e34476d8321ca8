"""Accuracy-aware mixed precision: an int8 artifact that fails parity gets its most harmful
layers back in fp32 until it passes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.export import Tolerance, export_run
from kiln.extras import installed
from kiln.models import MANIFEST, load_model_dir, read_manifest, save_model_dir
from kiln.runtime import load_predictor

OUTLIER = 2000.0
OPENVINO = ["openvino-fp32", "openvino-int8"] if installed("openvino") else []
ARTIFACTS = ["onnx-fp32", "onnx-opt", "onnx-int8-dynamic", "torch-int8", *OPENVINO]
# The test eval set is 80 texts, where one flip is 1.25 points; the outlier below costs far more.
TOLERANCE = Tolerance(max_accuracy_drop=5.0, min_argmax_agreement=0.95)


@pytest.fixture(scope="module")
def outlier_run(exported_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny run, with one feed-forward channel scaled up by OUTLIER before GELU and
    down by as much after it. The model still classifies (GELU(c*h)/c is about ReLU(h)), but the
    activations entering ``linear2`` now span a range that per-tensor int8 cannot hold: the usual
    outlier of fine-tuned encoders, made deliberately large."""
    run = tmp_path_factory.mktemp("outlier") / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("export", "checkpoints"))
    loaded = load_model_dir(run / "model")
    state = loaded.model.state_dict()
    prefix = "encoder.layers.0."
    with torch.no_grad():
        state[prefix + "linear1.weight"][0] *= OUTLIER
        state[prefix + "linear1.bias"][0] = OUTLIER * state[prefix + "linear1.bias"][0].abs()
        state[prefix + "linear2.weight"][:, 0] /= OUTLIER
    save_model_dir(run / "model", state, run / "model" / "tokenizer.json",
                   read_manifest(run / "model"))
    return run


def test_an_int8_artifact_that_fails_parity_passes_with_its_worst_layer_in_fp32(
        outlier_run: Path) -> None:
    all_int8 = export_run(outlier_run, artifacts=ARTIFACTS, tolerance=TOLERANCE,
                          max_fp32_fraction=0)
    failed = {p.artifact: p for p in all_int8.failed}
    assert set(failed) == {"onnx-int8-dynamic", "torch-int8", *OPENVINO[1:]}, all_int8.parity

    report = export_run(outlier_run, artifacts=ARTIFACTS, tolerance=TOLERANCE)
    rows = {p.artifact: p for p in report.parity}
    assert not report.failed, report.parity
    torch_row = rows["torch-int8"]
    assert torch_row.fp32_layers == ["encoder.layers.0.linear2"], torch_row
    onnx_row = rows["onnx-int8-dynamic"]
    assert len(onnx_row.fp32_layers) == 1 and onnx_row.quantizable_layers > 1, onnx_row
    assert onnx_row.argmax_agreement > failed["onnx-int8-dynamic"].argmax_agreement
    if OPENVINO:  # its layers are ranked with ONNX Runtime's static int8 builds, named alike
        assert 1 <= len(rows["openvino-int8"].fp32_layers) <= 2, rows["openvino-int8"]

    # what was measured is what ships: the manifest names the fp32 layers, and the predictor
    # built from it gives the logits the parity check saw
    manifest = json.loads((report.export_dir / MANIFEST).read_text())
    assert manifest["artifacts"]["torch-int8"]["fp32_layers"] == ["encoder.layers.0.linear2"]
    parity = json.loads((report.export_dir / "parity.json").read_text())
    assert [r["fp32_layers"] for r in parity["artifacts"] if r["artifact"] == "onnx-int8-dynamic"
            ] == [onnx_row.fp32_layers]
    assert not list(report.export_dir.glob(".fallback.*"))
    texts = ["my parcel has not arrived yet", "i was charged twice for my invoice"]
    shipped = load_predictor(outlier_run, "torch-int8").predict(texts)
    fp32 = load_predictor(outlier_run, "torch-fp32").predict(texts)
    assert shipped.labels == fp32.labels
    assert np.allclose(shipped.probabilities, fp32.probabilities, atol=0.05)
