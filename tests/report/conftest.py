"""Runs for the report tests: the shared exported run with a real (tiny) benchmark added, and a
trained-only run whose label names and data path hold HTML's special characters."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kiln.bench import BenchSettings, bench_run
from kiln.config import load_config
from kiln.data import builtin
from kiln.export import triton_run
from kiln.train import train
from tests.conftest import tiny_overrides

ODD_LABEL = '<b>&"x'  # what a label name must never do to the page: add markup
ODD_FOLDER = "data <i>&x"  # a config value (data.train) with markup in it


@pytest.fixture(scope="session")
def benched_run(exported_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the exported run, packaged for Triton and measured by `kiln bench` with its
    smallest settings: every stage before the report has run."""
    run = tmp_path_factory.mktemp("benched") / "run"
    shutil.copytree(exported_run, run)
    triton_run(run)
    bench_run(run, BenchSettings(threads=1, texts=5, warmup=1, min_seconds=0.05,
                                 artifacts=["torch-fp32", "onnx-fp32", "onnx-int8-dynamic"]))
    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run (no export, no bench) with the label ``ODD_LABEL`` and data in
    ``ODD_FOLDER``."""
    root = tmp_path_factory.mktemp("trained")
    data = root / ODD_FOLDER
    ds = builtin.generate(seed=3, n_train=200, n_eval=40)
    rename = {"billing": ODD_LABEL}
    for name, rows in (("train.csv", ds.train), ("eval.csv", ds.eval)):
        builtin.write_csv([(text, rename.get(label, label)) for text, label in rows], data / name)
    run = root / "run"
    train(load_config(overrides=tiny_overrides(data / "train.csv", data / "eval.csv", run)),
          progress=False)
    return run
