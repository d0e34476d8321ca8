"""Training options a user can turn on: early stopping, DataLoader workers, bf16 autocast."""

import contextlib
import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kiln.config import load_config
from kiln.errors import ConfigError
from kiln.train import train
from kiln.train.precision import auto_cpu_precision
from tests.conftest import tiny_overrides


def test_early_stopping_stops_and_ships_the_best_model(
    small_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    # lr so high that the model diverges after its first evaluation
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.epochs": 20, "train.eval_every": 3, "train.early_stopping_patience": 2,
        "train.metric": "loss", "train.lr": 0.05, "train.warmup_steps": 0, "train.schedule": "constant"}))
    result = train(cfg, progress=False)
    evals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in x]
    assert result.step < 20 * 25 and len(evals) >= 3
    best = min(evals, key=lambda e: e["loss"])
    manifest = json.loads((tmp_path / "model" / "kiln.json").read_text())
    assert manifest["training"]["selected"] == "best"
    assert manifest["training"]["step"] == best["step"]
    assert result.eval["loss"] == pytest.approx(best["loss"])


def test_worker_processes_give_the_same_result(small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    common = {"train.max_steps": 6, "train.select": "last"}
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path / "main", **common)),
          progress=False)
    train(load_config(overrides=tiny_overrides(*small_dataset, tmp_path / "workers", **common, **{
        "data.num_workers": 2, "data.prefetch_factor": 4, "data.persistent_workers": True})),
        progress=False)
    a = load_file(str(tmp_path / "main" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "workers" / "model" / "model.safetensors"))
    assert all(a[k].equal(b[k]) for k in a)


def test_bf16_autocast_trains_on_cpu(small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.max_steps": 4, "train.precision": "bf16"}))
    # a warning where bf16 does not pay off on this CPU (where auto would not choose it)
    slower_here = auto_cpu_precision().name != "bf16"
    with pytest.warns(UserWarning, match="bf16 on CPU") if slower_here else contextlib.nullcontext():
        result = train(cfg, progress=False)
    assert json.loads((tmp_path / "model" / "kiln.json").read_text())["training"]["precision"] == "bf16"
    assert math.isfinite(result.eval["loss"])


def test_fp16_on_cpu_is_refused(small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.precision": "fp16", "train.device": "cpu"}))
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(cfg, progress=False)


def test_non_finite_steps_are_skipped_then_training_stops_keeping_good_checkpoints(
    small_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    from kiln.run import TrainingDiverged

    # an absurd learning rate with no clipping drives the weights to inf within a few steps
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.lr": 1e30, "train.max_grad_norm": 0, "train.warmup_steps": 0,
        "train.schedule": "constant", "train.checkpoint_every": 1, "train.keep_checkpoints": 50,
        "train.max_bad_steps": 3}))
    with pytest.raises(TrainingDiverged, match="3 steps in a row had a non-finite loss"):
        train(cfg, progress=False)
    saved = {p.name: load_file(str(p / "model.safetensors"))
             for p in sorted((tmp_path / "checkpoints").glob("step-*"))}
    # step 1 updated the weights (to huge but finite values); steps 2 and 3 were skipped, so their
    # checkpoints hold exactly step 1's weights, and nothing non-finite was ever saved
    assert list(saved) == ["step-000001", "step-000002", "step-000003"]
    for name in ("step-000002", "step-000003"):
        assert all(saved[name][k].equal(saved["step-000001"][k]) for k in saved[name])
    assert all(torch.isfinite(w).all() for w in saved["step-000001"].values())
