"""Shared fixtures: small real datasets written to temporary files, tiny fast configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kiln.config import load_config
from kiln.data import builtin
from kiln.export import export_run
from kiln.train import train

# Keep tests predictable on a 2-core machine: one intra-op thread per test process.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train.csv, eval.csv): 400 / 80 texts of the built-in 4-class task."""
    d = tmp_path_factory.mktemp("data")
    ds = builtin.generate(seed=7, n_train=400, n_eval=80)
    builtin.write_csv(ds.train, d / "train.csv")
    builtin.write_csv(ds.eval, d / "eval.csv")
    return d / "train.csv", d / "eval.csv"


def tiny_overrides(train_csv: Path, eval_csv: Path, run_dir: Path, **extra: object) -> list[str]:
    """key=value overrides for a model that trains in seconds."""
    base = {
        "data.train": train_csv,
        "data.eval": eval_csv,
        "run_dir": run_dir,
        "data.max_length": 48,
        "model.preset": "tiny",
        "model.vocab_size": 500,
        "train.epochs": 1,
        "train.batch_size": 16,
        "train.log_every": 5,
        "train.device": "cpu",  # bit-exactness claims are for CPU; GPU tests override this
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture()
def cli_env() -> dict[str, str]:
    """Environment for running the real `kiln` CLI in a subprocess."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "error::UserWarning:kiln"
    return env


@pytest.fixture(scope="session")
def exported_run(small_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("exported") / "run"
    train(load_config(overrides=tiny_overrides(*small_dataset, run, **{"train.epochs": 3})),
          progress=False)
    export_run(run)
    return run
