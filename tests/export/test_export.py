"""`kiln export` on a real (tiny) trained run: dynamic shapes, parity, the runtime, Triton."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from kiln.errors import RunDirError
from kiln.export import parse_triton_config, triton_run
from kiln.extras import installed
from kiln.runtime import load_predictor
from kiln.runtime.artifacts import PREFERENCE, default_artifacts

MAX_LENGTH = 48


def test_parity_json_covers_every_artifact_within_tolerance(exported_run: Path) -> None:
    parity = json.loads((exported_run / "export" / "parity.json").read_text())
    rows = {r["artifact"]: r for r in parity["artifacts"]}
    assert set(rows) == set(default_artifacts())
    for name, row in rows.items():
        assert {"file", "max_abs_diff", "argmax_agreement", "accuracy", "passed"} <= set(row)
        assert (exported_run / "export" / row["file"]).exists(), name
        gate = row["argmax_agreement"] >= 0.99 and row["accuracy_drop"] <= 0.5
        assert row["passed"] == gate, (name, row)
        if "int8" in name:
            # on this tiny, barely trained model one flipped argmax in 80 is 1.25%: int8 may fail
            # the 99% gate, but must still be close
            assert row["argmax_agreement"] >= 0.95, (name, row)
        else:
            assert row["passed"], (name, row["failures"])
    assert rows["onnx-fp32"]["max_abs_diff"] < 1e-4  # same math, different engine


@pytest.mark.slow
def test_onnx_artifacts_run_at_every_batch_and_length(exported_run: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("model.onnx", "model.opt.onnx", "model.int8.onnx", "model.int8-static.onnx"):
        session = ort.InferenceSession(str(exported_run / "export" / name),
                                       providers=["CPUExecutionProvider"])
        for batch in (1, 7, 64):
            for length in range(1, MAX_LENGTH + 1):
                ids = rng.integers(5, 400, size=(batch, length), dtype=np.int64)
                mask = np.ones_like(ids)
                mask[0, (length + 1) // 2:] = 0
                (logits,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
                assert logits.shape == (batch, 4) and np.isfinite(logits).all(), (name, batch, length)


def test_predictor_uses_the_recommended_artifact_and_agrees_with_torch(
    exported_run: Path, tmp_path: Path
) -> None:
    import shutil

    parity = json.loads((exported_run / "export" / "parity.json").read_text())
    passed = {r["artifact"]: r["file"] for r in parity["artifacts"] if r["passed"]}
    # a copy of export/ alone: a `kiln bench` report beside it (test_bench) would take precedence
    shutil.copytree(exported_run / "export", tmp_path / "export")
    fast = load_predictor(tmp_path / "export")
    # the first verified artifact in the CPU preference order; which int8 builds pass the gate on
    # this tiny model varies, so the test reads the verdicts rather than naming one
    recommended = next(n for n in PREFERENCE if n in passed)
    assert fast.backend.name.endswith(":" + passed[recommended]), (fast.backend.name, recommended)
    reference = load_predictor(exported_run, "torch-fp32")
    texts = ["my parcel has not arrived yet", "i was charged twice for my invoice",
             "the app keeps crashing after the update", "i need to change my password"]
    a, b = fast.predict(texts), reference.predict(texts)
    assert set(a.labels) <= {"account", "billing", "shipping", "technical"}
    assert a.probabilities.shape == (4, 4)
    np.testing.assert_allclose(a.probabilities.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a.logits, b.logits, atol=0.5)


def test_tampered_artifact_is_refused(exported_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported_run / "export", copy)
    with open(copy / "model.int8.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(RunDirError, match="model.int8.onnx does not match the checksum"):
        load_predictor(copy, "onnx-int8-dynamic")


def test_triton_repository_parses_and_names_files_that_exist(exported_run: Path) -> None:
    folder = triton_run(exported_run, name="clf", max_batch_size=32)
    ensemble = parse_triton_config(folder / "config.pbtxt")  # the model a text client calls
    assert ensemble.name == "clf" and ensemble.platform == "ensemble"
    assert [i.name for i in ensemble.input] == ["text"]
    model = folder.parent / "clf_model"
    config = parse_triton_config(model / "config.pbtxt")
    assert config.name == "clf_model" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert list(config.output[0].dims) == [4]
    assert (model / "1" / "model.onnx").exists()
    assert (folder.parent / "clf_tokenizer" / "tokenizer.json").exists()
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[2, 10, 11, 3]], dtype=np.int64)
    assert session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0].shape == (1, 4)


@pytest.mark.slow
def test_impossible_tolerance_fails_the_command_naming_artifact_and_metric(
    exported_run: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "export", str(run), "--artifacts", "onnx-int8-dynamic",
         "--min-agreement", "1.01"], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 1
    assert "onnx-int8-dynamic (model.int8.onnx) failed parity: argmax agreement" in done.stderr
    manifest = json.loads((run / "export" / "kiln.json").read_text())
    assert manifest["artifacts"]["onnx-int8-dynamic"]["passed"] is False
    with pytest.raises(RunDirError, match="failed its parity check"):
        load_predictor(run, "onnx-int8-dynamic")
    kept = subprocess.run(
        [sys.executable, "-m", "kiln", "export", str(run), "--artifacts", "onnx-fp32",
         "--min-agreement", "1.01", "--keep-failed"], capture_output=True, text=True, env=cli_env)
    assert kept.returncode == 0


@pytest.mark.skipif(not installed("openvino"), reason="optional extra kiln[openvino] not installed")
def test_openvino_artifacts_predict_like_the_trained_model(exported_run: Path) -> None:
    texts = ["my parcel has not arrived yet", "the app keeps crashing after the update"]
    reference = load_predictor(exported_run, "torch-fp32").predict(texts)
    fp32_predictor = load_predictor(exported_run, "openvino-fp32", threads=1)
    # what the compiled model reports, not bf16 where the CPU has it (OpenVINO's default there)
    assert fp32_predictor.backend.info()["inference_precision"] == "f32"
    fp32 = fp32_predictor.predict(texts)
    int8 = load_predictor(exported_run, "openvino-int8", threads=1, allow_failed=True).predict(texts)
    np.testing.assert_allclose(fp32.logits, reference.logits, atol=1e-4)
    np.testing.assert_allclose(int8.logits, reference.logits, atol=0.5)
    assert (exported_run / "export" / "model.ov-int8.bin").exists()


@pytest.mark.skipif(not installed("openvino"), reason="optional extra kiln[openvino] not installed")
def test_openvino_pads_inputs_to_a_few_shapes_without_changing_the_logits(
        exported_run: Path) -> None:
    from kiln.runtime import OpenVinoBackend

    xml = exported_run / "export" / "model.ov.xml"
    exact = OpenVinoBackend(xml, threads=1)  # no max_length: runs every shape as it comes
    bucketed = OpenVinoBackend(xml, threads=1, max_length=48, length_bucket=16)
    rng = np.random.default_rng(0)
    for length in (1, 5, 16, 17, 40, 48):
        ids = rng.integers(5, 400, size=(3, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[0, length // 2 + 1:] = 0  # a shorter row inside the batch too
        shape = bucketed._bucketed(ids, mask)[0].shape
        assert shape == (4, min(-(-length // 16) * 16, 48))  # 3 rows run as 4
        np.testing.assert_allclose(bucketed.run(ids, mask), exact.run(ids, mask), atol=1e-5)


@pytest.mark.skipif(not installed("openvino"), reason="optional extra kiln[openvino] not installed")
def test_openvino_backends_freed_out_of_order_leave_python_signal_handlers_working(
    exported_run: Path, cli_env: dict[str, str]
) -> None:
    # Each OpenVINO Core's CPU plugin swaps the thread's signal stack; Cores freed out of creation
    # order left it on freed memory and the next handled signal (a DataLoader worker's SIGCHLD in
    # the test suite) was a SIGSEGV. Run in a child so a regression fails this test only.
    script = f"""
import gc, os, signal
from kiln.runtime import OpenVinoBackend
first = OpenVinoBackend({str(exported_run / "export" / "model.ov.xml")!r})
second = OpenVinoBackend({str(exported_run / "export" / "model.ov-int8.xml")!r})
del first; gc.collect()
del second; gc.collect()
handled = []
signal.signal(signal.SIGUSR1, lambda *_: handled.append(True))
os.kill(os.getpid(), signal.SIGUSR1)
print("handled", handled)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=cli_env, timeout=120)
    assert done.returncode == 0 and "handled [True]" in done.stdout, (done.returncode, done.stderr)


def test_fusable_twin_loads_the_trained_weights_and_gives_the_same_logits() -> None:
    import torch

    from kiln.export.fusable import fusable_copy
    from kiln.models.transformer import TransformerClassifier

    torch.manual_seed(0)
    for pooling in ("mean", "cls"):
        model = TransformerClassifier(vocab_size=300, num_labels=3, max_length=40, embed_dim=32,
                                      num_heads=4, num_layers=3, ff_dim=64, pooling=pooling).eval()
        twin = fusable_copy(model)
        assert twin is not None
        ids = torch.randint(1, 300, (4, 40))
        mask = torch.ones_like(ids)
        for row, length in enumerate((40, 23, 5, 1)):
            mask[row, length:] = 0
            ids[row, length:] = 0
        with torch.no_grad():
            assert torch.allclose(model(ids, mask), twin(ids, mask), atol=1e-5)


def test_ort_fuses_attention_in_every_layer(exported_run: Path) -> None:
    manifest = json.loads((exported_run / "export" / "kiln.json").read_text())
    layers = manifest["model"]["kwargs"]["num_layers"]
    fused = manifest["export"]["ort_fused_operators"]
    assert fused.get("Attention") == layers, fused
    assert fused.get("SkipLayerNormalization", 0) >= layers
