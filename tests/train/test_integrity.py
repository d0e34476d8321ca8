"""Nothing lost, nothing silently wrong: damaged checkpoints and best weights are found by their
checksums and never loaded; a resume falls back to the newest intact checkpoint."""

import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.errors import RunDirError
from kiln.run.checkpoints import list_checkpoints, resume_point, write_verified_dir
from kiln.run.schedule import uses_best
from kiln.run.state import TrainState
from kiln.train import train
from kiln.train.checkpoint import save_safetensors
from tests.conftest import tiny_overrides
from tests.train.test_resume import RESUME_SETTINGS, same_bits


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 64)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete(path: Path) -> None:
    path.unlink()


def pickle_instead(path: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": torch.zeros(3)}))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "flip": flip, "truncate": truncate, "delete": delete, "pickle": pickle_instead}
FILES = ("model.safetensors", "optimizer.pt", "trainer_state.pt", "checksums.json",
         "config.yaml", "tokenizer.json")


@pytest.fixture(scope="module")
def full_run(small_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("integrity") / "run"
    train(load_config(overrides=tiny_overrides(*small_dataset, run, **RESUME_SETTINGS)),
          progress=False)
    return run


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_checkpoint_is_reported_and_skipped(full_run: Path, tmp_path: Path, how: str,
                                                      name: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    *_, older, newest = list_checkpoints(run)
    CORRUPTIONS[how](newest / name)
    heard: list[str] = []
    assert resume_point(run, heard.append) == older
    assert len(heard) == 1 and str(newest) in heard[0] and "damaged" in heard[0]
    assert "checksums.json" in heard[0] or name in heard[0]  # names the file


def test_a_resume_past_a_damaged_checkpoint_ends_bit_identical(
        small_dataset: tuple[Path, Path], full_run: Path, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    for ckpt in list_checkpoints(run):
        if int(ckpt.name[5:]) > 16:
            shutil.rmtree(ckpt)
    shutil.rmtree(run / "model")
    flip(run / "checkpoints" / "step-000016" / "model.safetensors")
    (run / "checkpoints" / "latest").write_text("garbage\n")
    resumed = train(load_config(overrides=tiny_overrides(*small_dataset, run, **RESUME_SETTINGS)),
                    progress=False)
    assert resumed.resumed_from == 12
    assert "step-000016 is damaged (model.safetensors does not match" in capfd.readouterr().err
    assert same_bits(run / "model" / "model.safetensors", full_run / "model" / "model.safetensors")


def test_no_intact_checkpoint_is_an_error_naming_the_run_and_the_fix(full_run: Path,
                                                                     tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    for ckpt in list_checkpoints(run):
        truncate(ckpt / "trainer_state.pt")
    with pytest.raises(RunDirError, match=r"none is intact.*--fresh") as error:
        resume_point(run)
    assert str(run) in str(error.value)


def test_damaged_best_weights_are_reported_and_not_used(tmp_path: Path) -> None:
    config = load_config(overrides=["train.select=best"])
    state = TrainState(best_step=6, best_eval={"accuracy": 0.5})
    best = write_verified_dir(tmp_path / "best", lambda tmp: save_safetensors(
        {"w": torch.ones(4)}, tmp / "model.safetensors"))
    assert uses_best(config.train, state, best / "model.safetensors")
    flip(best / "model.safetensors")
    heard: list[str] = []
    assert not uses_best(config.train, state, best / "model.safetensors", heard.append)
    assert "step 6" in heard[0] and "model.safetensors does not match" in heard[0]


def test_another_runs_tokenizer_is_refused_on_resume(small_dataset: tuple[Path, Path],
                                                     full_run: Path, tmp_path: Path) -> None:
    run, other = tmp_path / "run", tmp_path / "other"
    shutil.copytree(full_run, run)
    train(load_config(overrides=tiny_overrides(*small_dataset, other, **{
        "train.max_steps": 1, "model.vocab_size": 300})), progress=False)
    shutil.copy(other / "tokenizer.json", run / "tokenizer.json")
    with pytest.raises(RunDirError, match=r"tokenizer.json \(\d+ tokens\) is not the tokenizer"):
        train(load_config(overrides=tiny_overrides(*small_dataset, run, **{
            **RESUME_SETTINGS, "train.epochs": 3})), progress=False)


@pytest.fixture(scope="module")
def cli_reference(small_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
                  ) -> Path:
    """An uninterrupted run of KILL_SETTINGS through the CLI."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run([sys.executable, "-m", "kiln", "train",
                    *tiny_overrides(*small_dataset, run, **KILL_SETTINGS)], check=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True)
    return run


# a checkpoint after every step: most moments of the run are in or next to a checkpoint write
KILL_SETTINGS = {**RESUME_SETTINGS, "train.checkpoint_every": 1, "train.keep_checkpoints": 3,
                 "train.max_steps": 30}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_then_resume_ends_bit_identical(
        seed: int, cli_reference: Path, small_dataset: tuple[Path, Path], tmp_path: Path,
        cli_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "kiln", "train", *tiny_overrides(*small_dataset, run,
                                                                  **KILL_SETTINGS)]
    proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # from the first checkpoint on, a moment drawn by the seed within the next 30 steps' writes
    deadline = time.monotonic() + 120
    while not list_checkpoints(run) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    proc.kill()
    proc.wait()
    done = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert same_bits(run / "model" / "model.safetensors",
                     cli_reference / "model" / "model.safetensors")


def test_another_models_tokenizer_is_refused_by_eval_and_serve(
        exported_run: Path, small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    from kiln.evaluate import evaluate_file
    from kiln.runtime import load_predictor

    other = tmp_path / "other"
    train(load_config(overrides=tiny_overrides(*small_dataset, other, **{
        "train.max_steps": 1, "model.vocab_size": 300})), progress=False)
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    for folder in ("model", "export"):
        shutil.copy(other / "tokenizer.json", run / folder / "tokenizer.json")
    sizes = r"has \d+ tokens but the model embeds \d+: it is another model's tokenizer"
    with pytest.raises(RunDirError, match=sizes):
        evaluate_file(run, small_dataset[1])
    with pytest.raises(RunDirError, match=sizes):
        load_predictor(run, "onnx-fp32")  # what kiln serve loads each model with
