"""`framework=keras` training: the run directory contract, exact resume, the config's options."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from kiln.config import load_config
from kiln.errors import ConfigError
from kiln.run.checkpoints import latest_checkpoint, list_checkpoints
from kiln.train import train
from tests.conftest import kill_at_checkpoint
from tests.keras.conftest import NEEDS_KERAS, keras_overrides

pytest.importorskip("tensorflow", reason=NEEDS_KERAS)
pytestmark = pytest.mark.keras

from kiln.keras.devices import POLICIES, auto_cpu_precision  # noqa: E402
from kiln.models.keras_model import load_keras_model  # noqa: E402

RESUME_SETTINGS = {"train.epochs": 2, "train.checkpoint_every": 4, "train.eval_every": 6,
                   "train.keep_checkpoints": 20, "train.select": "last", "model.dropout": 0.2}


def weights(run: Path) -> list[np.ndarray]:
    return load_keras_model(run / "model" / "model.keras").get_weights()


def same_weights(a: Path, b: Path) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))


def tensorboard_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags()["tensors"])


def test_run_directory_has_the_torch_runs_contract(keras_run: Path,
                                                   small_dataset: tuple[Path, Path]) -> None:
    from kiln.evaluate import evaluate_file

    saved = (keras_run / "config.yaml").read_text()
    assert "framework: keras" in saved and "tensorflow:" in saved and "keras:" in saved
    assert (keras_run / "tokenizer.json").exists() and latest_checkpoint(keras_run) is not None
    manifest = json.loads((keras_run / "model" / "kiln.json").read_text())
    assert manifest["framework"] == "keras" and manifest["weights"] == "model.keras"
    assert set(manifest["files"]) == {"model.keras", "tokenizer.json"}
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert manifest["training"]["precision"] == "fp32" and manifest["versions"]["keras"]
    lines = [json.loads(x) for x in (keras_run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in x for x in lines)
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert {"loss", "lr", "samples_per_s", "epoch"} <= set(train_lines[0])
    evals = [x for x in lines if x["kind"] == "eval"]
    assert [x["step"] for x in evals] == [25, 50, 75]  # every epoch (eval_every=0)
    assert {"loss", "accuracy", "macro_f1"} <= set(evals[-1])
    assert {"train/loss", "train/lr", "eval/accuracy", "eval/macro_f1"} <= tensorboard_tags(
        keras_run / "tensorboard")
    assert "epoch_loss" in tensorboard_tags(keras_run / "tensorboard" / "keras" / "train")
    assert {"epoch_accuracy", "epoch_macro_f1"} <= tensorboard_tags(
        keras_run / "tensorboard" / "keras" / "validation")
    # the model file holds the weights that were evaluated: `kiln eval` agrees with training
    result, names = evaluate_file(keras_run, small_dataset[1])
    assert names == manifest["labels"]
    assert result.accuracy == manifest["training"]["eval"]["accuracy"]
    assert result.loss == pytest.approx(manifest["training"]["eval"]["loss"], rel=1e-5)


def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(
    small_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    full = tmp_path / "full"
    train(load_config(overrides=keras_overrides(*small_dataset, full, **RESUME_SETTINGS)),
          progress=False)
    # the state an interrupted run leaves: checkpoints up to step 12 of 25 in epoch 0
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for ckpt in list_checkpoints(cut):
        if int(ckpt.name[5:]) > 12:
            shutil.rmtree(ckpt)
    (cut / "checkpoints" / "latest").unlink()
    shutil.rmtree(cut / "model")
    resumed = train(load_config(overrides=keras_overrides(*small_dataset, cut, **RESUME_SETTINGS)),
                    progress=False)
    assert resumed.resumed_from == 12 and resumed.step == 50
    assert same_weights(cut, full)
    steps = [json.loads(x)["step"] for x in (cut / "metrics.jsonl").read_text().splitlines()
             if '"kind": "train"' in x]
    assert steps == sorted(set(steps)), "metrics.jsonl must hold each logged step once"


def test_accumulation_max_steps_and_early_stopping(small_dataset: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    # 25 batches an epoch, 2 per update: max_steps stops after 9 updates
    done = train(load_config(overrides=keras_overrides(
        *small_dataset, tmp_path / "accum", **{"train.grad_accum_steps": 2, "train.max_steps": 9,
                                               "train.log_every": 3})), progress=False)
    assert done.step == 9
    lines = [json.loads(x) for x in (tmp_path / "accum" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == [3, 6, 9]
    # a learning rate too small to change any prediction: no improvement, stop after patience
    stopped = train(load_config(overrides=keras_overrides(
        *small_dataset, tmp_path / "early", **{"train.lr": 1e-12, "train.eval_every": 2,
                                               "train.early_stopping_patience": 2})),
        progress=False)
    assert stopped.step == 6


def test_precision_maps_to_the_mixed_precision_policy(small_dataset: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        train(load_config(overrides=keras_overrides(*small_dataset, tmp_path / "fp16",
                                                    **{"train.precision": "fp16"})))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = train(load_config(overrides=keras_overrides(
            *small_dataset, tmp_path / "bf16", **{"train.precision": "bf16",
                                                  "train.max_steps": 4})), progress=False)
    # warned unless this CPU's bf16 measured fast enough for auto to choose it
    warned = any("bf16 on CPU: usually slower" in str(w.message) for w in caught)
    assert warned == (auto_cpu_precision().name != "bf16")
    manifest = json.loads((done.model_dir / "kiln.json").read_text())
    assert manifest["training"]["keras_policy"] == "mixed_bfloat16"
    assert manifest["training"]["precision_reason"] == "train.precision=bf16"
    assert np.isfinite(done.eval["loss"])
    # the saved model is float32 whatever policy trained it
    assert load_keras_model(done.model_dir / "model.keras").dtype_policy.name == "float32"


def test_auto_precision_on_cpu_follows_the_measured_bf16_speed_and_says_why(
        small_dataset: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    chosen = auto_cpu_precision()  # this CPU's flags and TensorFlow's measured bf16 matmul
    assert chosen.reason.startswith("auto: this CPU has ")  # flags, or none
    if "but its bf16 matmul" in chosen.reason or "no bf16" in chosen.reason:
        assert chosen.name == "fp32"
    done = train(load_config(overrides=keras_overrides(
        *small_dataset, tmp_path / "auto", **{"train.max_steps": 2})), progress=False)
    manifest = json.loads((done.model_dir / "kiln.json").read_text())
    assert manifest["training"]["precision_reason"] == chosen.reason
    assert manifest["training"]["keras_policy"] == POLICIES[chosen.name]
    assert manifest["training"]["precision"] == chosen.name
    printed = "".join(capsys.readouterr())
    assert f"precision {chosen.name} ({POLICIES[chosen.name]}; {chosen.reason})" in printed


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kiln.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_devices(small_dataset: tuple[Path, Path], tmp_path: Path,
                                            keras_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    args = keras_overrides(*small_dataset, run, **{"keras.strategy": "mirrored",
                                                   "train.max_steps": 6})
    done = subprocess.run([sys.executable, "-c", MIRRORED, "train", *args], env=keras_env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    # train.batch_size is per replica: 2 replicas of 16
    assert "strategy mirrored (2 replicas), global batch 32" in done.stderr
    manifest = json.loads((run / "model" / "kiln.json").read_text())
    assert manifest["training"]["strategy"] == "mirrored" and manifest["training"]["step"] == 6


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(
    small_dataset: tuple[Path, Path], tmp_path: Path, keras_env: dict[str, str]
) -> None:
    settings = {**RESUME_SETTINGS, "train.epochs": 3}
    full, killed = tmp_path / "full", tmp_path / "killed"
    cmd = [sys.executable, "-m", "kiln", "train"]
    subprocess.run(cmd + keras_overrides(*small_dataset, full, **settings), check=True,
                   env=keras_env, capture_output=True)

    proc = subprocess.Popen(cmd + keras_overrides(*small_dataset, killed, **settings),
                            env=keras_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped_at = kill_at_checkpoint(proc, killed, 8, timeout_s=300)
    assert not (killed / "model").exists()
    assert stopped_at < 75

    done = subprocess.run(cmd + keras_overrides(*small_dataset, killed, **settings),
                          env=keras_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed at step {stopped_at}" in done.stderr
    assert same_weights(killed, full)


@pytest.mark.slow
def test_multi_worker_cluster_is_refused_with_the_reason(small_dataset: tuple[Path, Path],
                                                         tmp_path: Path,
                                                         keras_env: dict[str, str]) -> None:
    from tests.serve.test_server import free_port

    args = keras_overrides(*small_dataset, tmp_path / "run", **{"keras.strategy": "multi_worker"})
    # TensorFlow's workers listen on the ports TF_CONFIG names, which must be given up front: a
    # port another process took in between makes that attempt fail to bind; then try new ones.
    for _attempt in range(3):
        cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
        workers = [subprocess.Popen(
            [sys.executable, "-m", "kiln", "train", *args],
            env={**keras_env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                       "task": {"type": "worker", "index": i}})},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
        stderrs = [w.communicate(timeout=300)[1] for w in workers]
        ended = [(w.returncode, err) for w, err in zip(workers, stderrs)]
        if not any(code != 2 and "address already in use" in err.lower() for code, err in ended):
            break
    for code, stderr in ended:
        assert code == 2, stderr
        assert "TF_CONFIG names 2 workers" in stderr and "keras.strategy=mirrored" in stderr
