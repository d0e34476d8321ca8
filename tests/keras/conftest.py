"""Fixtures of the keras tests. TensorFlow is imported only by the test modules that need it, each
skipped with the reason when the kiln[keras] extra is not installed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before TensorFlow starts: one thread per op, as the torch tests pin theirs (a 2-core machine).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NEEDS_KERAS = "needs TensorFlow and Keras: pip install 'kiln[keras]'"


def keras_overrides(train_csv: Path, eval_csv: Path, run_dir: Path, **extra: object) -> list[str]:
    """key=value overrides of a tiny keras run that trains in seconds."""
    from tests.conftest import tiny_overrides

    return tiny_overrides(train_csv, eval_csv, run_dir, framework="keras", **extra)


@pytest.fixture()
def keras_env(cli_env: dict[str, str]) -> dict[str, str]:
    """Environment for the real `kiln` CLI on the keras path, in a subprocess."""
    return {**cli_env, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="session")
def keras_run(small_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained (3 epochs) and exported keras run, shared by the export, runtime and serve tests."""
    pytest.importorskip("tensorflow", reason=NEEDS_KERAS)
    from kiln.config import load_config
    from kiln.export import export_run
    from kiln.train import train

    run = tmp_path_factory.mktemp("keras") / "run"
    train(load_config(overrides=keras_overrides(*small_dataset, run, **{"train.epochs": 3})),
          progress=False)
    export_run(run)
    return run
