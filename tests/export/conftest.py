"""A trained and exported tiny run, shared by the export and bench tests of this folder."""

from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.export import export_run
from kiln.train import train
from tests.conftest import tiny_overrides


@pytest.fixture(scope="package")
def exported_run(small_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("exported") / "run"
    train(load_config(overrides=tiny_overrides(*small_dataset, run, **{"train.epochs": 3})),
          progress=False)
    export_run(run)
    return run
