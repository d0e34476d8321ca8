"""Exact resume: a run interrupted at a checkpoint ends bit-identical to an uninterrupted one."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kiln.config import load_config
from kiln.run.checkpoints import latest_checkpoint, list_checkpoints
from kiln.train import train
from tests.conftest import kill_at_checkpoint, tiny_overrides

RESUME_SETTINGS = {"train.epochs": 2, "train.checkpoint_every": 4, "train.eval_every": 6,
                   "train.keep_checkpoints": 20, "train.select": "last", "model.dropout": 0.2}


def same_bits(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(
    small_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    full = tmp_path / "full"
    cfg = load_config(overrides=tiny_overrides(*small_dataset, full, **RESUME_SETTINGS))
    train(cfg, progress=False)

    # Rebuild the state an interrupted run would leave: checkpoints up to step 12 (mid epoch 0,
    # which has 25 micro-batches), plus the outputs written after it.
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for ckpt in list_checkpoints(cut):
        if int(ckpt.name[5:]) > 12:
            shutil.rmtree(ckpt)
    (cut / "checkpoints" / "latest").unlink()
    shutil.rmtree(cut / "model")
    assert latest_checkpoint(cut) is not None and latest_checkpoint(cut).name == "step-000012"

    resumed = train(load_config(overrides=tiny_overrides(*small_dataset, cut, **RESUME_SETTINGS)),
                    progress=False)
    assert resumed.resumed_from == 12
    assert same_bits(cut / "model" / "model.safetensors", full / "model" / "model.safetensors")
    steps = [int(line.split('"step": ')[1].split(",")[0])
             for line in (cut / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in line]
    assert steps == sorted(set(steps)), "metrics.jsonl must hold each logged step once"


def test_changed_config_refuses_to_resume(small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    from kiln.errors import RunDirError

    run = tmp_path / "run"
    train(load_config(overrides=tiny_overrides(*small_dataset, run, **{"train.max_steps": 2})),
          progress=False)
    changed = load_config(overrides=tiny_overrides(*small_dataset, run, **{"train.max_steps": 4,
                                                                            "train.lr": 0.01}))
    with pytest.raises(RunDirError, match=r"train.lr changed.*--fresh"):
        train(changed, progress=False)
    assert train(changed, fresh=True, progress=False).resumed_from is None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(
    small_dataset: tuple[Path, Path], tmp_path: Path, cli_env: dict[str, str]
) -> None:
    settings = {**RESUME_SETTINGS, "train.epochs": 3}
    full, killed = tmp_path / "full", tmp_path / "killed"
    cmd = [sys.executable, "-m", "kiln", "train"]
    subprocess.run(cmd + tiny_overrides(*small_dataset, full, **settings), check=True,
                   env=cli_env, capture_output=True)

    proc = subprocess.Popen(cmd + tiny_overrides(*small_dataset, killed, **settings),
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped_at = kill_at_checkpoint(proc, killed, 8, timeout_s=120)
    assert not (killed / "model").exists()
    assert stopped_at < 75

    done = subprocess.run(cmd + tiny_overrides(*small_dataset, killed, **settings), env=cli_env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"resumed at step {stopped_at}" in done.stderr
    assert same_bits(killed / "model" / "model.safetensors", full / "model" / "model.safetensors")
