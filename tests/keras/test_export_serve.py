"""A keras run after training is like any other: exported with parity checks, packaged for Triton,
benchmarked, evaluated and served to the Triton client."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient

from kiln.errors import RunDirError
from kiln.runtime import load_predictor
from tests.keras.conftest import NEEDS_KERAS
from tests.serve.test_server import start_server

pytest.importorskip("tensorflow", reason=NEEDS_KERAS)
pytestmark = pytest.mark.keras

TEXTS = ["my parcel has not arrived yet", "i need to change my password", "refund my card please"]


def test_export_is_verified_against_the_keras_model(keras_run: Path) -> None:
    export = keras_run / "export"
    parity = json.loads((export / "parity.json").read_text())
    assert parity["reference"]["artifact"] == "keras-fp32"
    rows = {row["artifact"]: row for row in parity["artifacts"]}
    assert "torch-int8" not in rows
    for name in ("tf-savedmodel", "onnx-fp32", "onnx-opt", "onnx-fp16"):
        assert rows[name]["passed"], (name, rows[name]["failures"])
        assert rows[name]["argmax_agreement"] == 1.0
    assert rows["onnx-fp32"]["max_abs_diff"] < 1e-4 and rows["tf-savedmodel"]["max_abs_diff"] < 1e-5
    graph = onnx.load(export / "model.onnx").graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["logits"]
    for tensor in graph.input:
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor.type.tensor_type.shape.dim] == ["batch", "sequence"]
    manifest = json.loads((export / "kiln.json").read_text())
    assert manifest["artifacts"]["tf-savedmodel"]["backend"] == "tensorflow"
    assert {"model.keras", "model.onnx", "saved_model/saved_model.pb"} <= set(manifest["files"])


def test_every_artifact_predicts_like_the_keras_model(keras_run: Path) -> None:
    reference = load_predictor(keras_run, "keras-fp32").predict(TEXTS)
    for name in ("tf-savedmodel", "onnx-fp32", "onnx-opt"):
        got = load_predictor(keras_run, name).predict(TEXTS)
        assert got.labels == reference.labels, name
        np.testing.assert_allclose(got.logits, reference.logits, atol=1e-4)


def test_artifacts_of_the_other_framework_are_refused(keras_run: Path) -> None:
    from kiln.export import export_run

    with pytest.raises(RunDirError, match=r"\['torch-int8'\] cannot be built from a keras model"):
        export_run(keras_run, artifacts=["torch-int8"])


def test_bench_measures_against_the_keras_model(keras_run: Path) -> None:
    from kiln.bench import BenchSettings, bench_run

    report = bench_run(keras_run, BenchSettings(threads=1, texts=10, min_seconds=0.2,
                                                artifacts=["onnx-fp32"]))
    assert report["baseline"] == "keras-fp32"
    assert set(report["results"]) == {"keras-fp32", "onnx-fp32"}
    assert report["ratios"]["keras-fp32"]["p50_real_vs_eager_real"] == 1.0


def test_triton_repository_is_the_onnx_export(keras_run: Path) -> None:
    from kiln.export import parse_triton_config, triton_run

    folder = triton_run(keras_run)
    model = folder.parent / f"{folder.name}_model"  # the ensemble's model step
    config = parse_triton_config(model / "config.pbtxt")
    assert [i.name for i in config.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in config.output] == ["logits"]
    assert (model / "1" / "model.onnx").exists()


def test_kiln_serve_answers_the_triton_client(keras_run: Path, keras_env: dict[str, str]) -> None:
    proc, url = start_server(keras_run, keras_env, "--threads", "1")
    try:
        client = httpclient.InferenceServerClient(url=url)
        assert client.is_model_ready("clf")
        text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        result = client.infer("clf", [text], outputs=[
            httpclient.InferRequestedOutput("label"), httpclient.InferRequestedOutput("logits")])
        served = [x.decode() for x in result.as_numpy("label")]
        reference = load_predictor(keras_run, "keras-fp32").predict(TEXTS)
        assert served == reference.labels
        np.testing.assert_allclose(result.as_numpy("logits"), reference.logits, atol=1e-3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the server ran the ONNX artifact: it never needed TensorFlow
    log = next(keras_run.parent.glob("serve-*.log")).read_text()
    assert "Traceback" not in log


@pytest.mark.slow
def test_kiln_run_framework_keras_end_to_end(small_dataset: tuple[Path, Path], tmp_path: Path,
                                             keras_env: dict[str, str]) -> None:
    import subprocess

    from tests.keras.conftest import keras_overrides

    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kiln", "run", "--no-bench",
                           *keras_overrides(*small_dataset, run, **{"train.epochs": 2})],
                          env=keras_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    for stage in ("[1/4] trained", "[2/4] export and verify", "tf-savedmodel",
                  "[3/4] Triton model repository", "serve        kiln serve"):
        assert stage in done.stdout, stage
    bench = subprocess.run([sys.executable, "-m", "kiln", "bench", str(run), "--texts", "10",
                            "--seconds", "0.2", "--threads", "1", "--json"],
                           env=keras_env, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["baseline"] == "keras-fp32"
    evaluated = subprocess.run([sys.executable, "-m", "kiln", "eval", str(run), "--data",
                                str(small_dataset[1]), "--json"], env=keras_env,
                               capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr
    manifest = json.loads((run / "model" / "kiln.json").read_text())
    assert json.loads(evaluated.stdout)["accuracy"] == manifest["training"]["eval"]["accuracy"]
