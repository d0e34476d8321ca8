"""kiln run's stage records: a stage is up to date while its inputs hash the same and its outputs
exist; a finished run is done training unless the config changes what training produces."""

from __future__ import annotations

from pathlib import Path

from kiln.config import load_config
from kiln.run.stages import (
    inputs_digest,
    record_stage,
    stage_is_current,
    training_done,
)


def test_a_stage_is_current_until_an_input_changes_or_an_output_goes(tmp_path: Path) -> None:
    source, output = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text("{}")
    output.write_text("done")
    digest = inputs_digest([source], {"batch": 32})
    record_stage(tmp_path, "bench", digest)
    assert stage_is_current(tmp_path, "bench", inputs_digest([source], {"batch": 32}), [output])
    assert not stage_is_current(tmp_path, "bench", inputs_digest([source], {"batch": 8}), [output])
    assert not stage_is_current(tmp_path, "export", digest, [output])  # never recorded
    source.write_text('{"changed": 1}')
    assert not stage_is_current(tmp_path, "bench", inputs_digest([source], {"batch": 32}),
                                [output])
    source.write_text("{}")
    output.unlink()
    assert not stage_is_current(tmp_path, "bench", digest, [output])


def test_a_missing_input_counts_as_an_input(tmp_path: Path) -> None:
    missing = inputs_digest([tmp_path / "bench.json"], {})
    (tmp_path / "bench.json").write_text("{}")
    assert inputs_digest([tmp_path / "bench.json"], {}) != missing


def test_training_is_done_only_for_a_finished_model_of_the_same_config(
        exported_run: Path) -> None:
    saved = load_config(exported_run / "config.yaml")
    assert training_done(exported_run, saved) is None
    logging_only = saved.model_copy(update={"train": saved.train.model_copy(
        update={"log_every": 99})})
    assert training_done(exported_run, logging_only) is None
    longer = saved.model_copy(update={"train": saved.train.model_copy(update={"epochs": 9})})
    assert training_done(exported_run, longer) == ["train.epochs"]
    assert training_done(exported_run.parent / "nowhere", saved) == []
