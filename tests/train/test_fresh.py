"""A failed start loses nothing: --fresh checks config and data before it touches the old run, and
puts the old run back if the new one fails before its first checkpoint."""

import hashlib
import shutil
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.errors import DataError
from kiln.run import TrainingDiverged
from kiln.train import train
from tests.cli.test_cli import kiln
from tests.conftest import tiny_overrides


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) by path, with its sha256."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(small_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("fresh") / "run"
    train(load_config(overrides=tiny_overrides(*small_dataset, run, **{"train.max_steps": 3})),
          progress=False)
    return run


@pytest.mark.slow
def test_fresh_with_bad_data_leaves_the_old_run_byte_for_byte(
        finished: Path, tmp_path: Path, cli_env: dict[str, str],
        small_dataset: tuple[Path, Path]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    done = kiln("train", *tiny_overrides(empty, small_dataset[1], run), "--fresh", env=cli_env)
    assert done.returncode == 2 and "empty" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.csv", "run"]  # nothing beside


def test_a_new_run_that_fails_to_start_leaves_no_folder(tmp_path: Path,
                                                         small_dataset: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nonly one class,a\nstill one,a\n")
    with pytest.raises(DataError):
        train(load_config(overrides=tiny_overrides(bad, small_dataset[1], tmp_path / "new")),
              progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_fresh_that_fails_before_its_first_checkpoint_puts_the_old_run_back(
        finished: Path, tmp_path: Path, small_dataset: tuple[Path, Path]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    diverging = {"train.lr": 1e30, "train.max_grad_norm": 0, "train.warmup_steps": 0,
                 "train.schedule": "constant", "train.max_bad_steps": 1}
    with pytest.raises(TrainingDiverged):
        train(load_config(overrides=tiny_overrides(*small_dataset, run, **diverging)),
              fresh=True, progress=False)
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_fresh_replaces_the_old_run_once_the_new_one_checkpoints(
        finished: Path, tmp_path: Path, small_dataset: tuple[Path, Path]) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "export").mkdir()  # a stage's output made from the old model goes with it
    result = train(load_config(overrides=tiny_overrides(*small_dataset, run, **{
        "train.max_steps": 2})), fresh=True, progress=False)
    assert result.step == 2 and result.resumed_from is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old run is gone
    assert not (run / "export").exists() and not (run / ".starting").exists()
