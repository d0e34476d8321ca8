"""Training options a user can turn on: early stopping, DataLoader workers, bf16 autocast."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kiln.config import load_config
from kiln.errors import ConfigError
from kiln.train import train
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
    with pytest.warns(UserWarning, match="bf16 on CPU"):
        result = train(cfg, progress=False)
    assert json.loads((tmp_path / "model" / "kiln.json").read_text())["training"]["precision"] == "bf16"
    assert result.eval["loss"] == result.eval["loss"]  # finite, not NaN


def test_fp16_on_cpu_is_refused(small_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = load_config(overrides=tiny_overrides(*small_dataset, tmp_path, **{
        "train.precision": "fp16", "train.device": "cpu"}))
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        train(cfg, progress=False)
