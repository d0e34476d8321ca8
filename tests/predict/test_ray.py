"""kiln predict --engine ray: on a local Ray started here, the output is the single-machine one,
byte for byte (the same labels and probabilities, in the same order), bad rows are skipped and
listed the same way, and a job stopped on one engine is finished on the other."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from kiln.cli import main
from kiln.predict import PredictOptions, parts_folder, predict_file
from kiln.runtime import load_predictor
from tests.predict.test_predict import (
    Stop,
    bad_rows,
    read_output,
    rows_of,
    stop_after,
    write_input,
)

ray = pytest.importorskip("ray", reason="--engine ray needs the kiln[ray] extra (Ray Data)")

from kiln.predict.ray_engine import RayOptions, predict_file_on_ray  # noqa: E402

pytestmark = [
    pytest.mark.slow,  # Ray's start and each job's actors take seconds on a small machine
    # Ray Data's own settings object warns about its deprecated fields when it is built
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

SMALL = PredictOptions(chunk_rows=16, batch_size=8, progress=False)  # 60 rows: 4 chunks
TWO = RayOptions(num_workers=2)


@pytest.fixture(scope="module")
def texts(small_dataset: tuple[Path, Path]) -> list[str]:
    with open(small_dataset[1], newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)][:60]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """A Ray instance of this machine's size, that the jobs join instead of starting their own."""
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


def test_the_cli_on_ray_writes_the_single_machine_csv_byte_for_byte(
    exported_run: Path, texts: list[str], tmp_path: Path
) -> None:
    data = write_input(tmp_path / "in.csv", rows_of(texts))
    local = predict_file(exported_run, data, tmp_path / "local.csv", SMALL)
    out = tmp_path / "ray.csv"
    assert main(["predict", str(exported_run), "--data", str(data), "--out", str(out),
                 "--engine", "ray", "--num-workers", "2", "--chunk-rows", "16",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert out.read_bytes() == local.output.read_bytes()
    labels = load_predictor(exported_run, local.artifact).predict(texts).labels
    assert [r["label"] for r in read_output(out)] == labels
    assert not parts_folder(out).exists()


def test_parquet_with_probabilities_is_the_same_table(exported_run: Path, texts: list[str],
                                                       tmp_path: Path) -> None:
    data = write_input(tmp_path / "in.parquet", rows_of(texts))
    options = PredictOptions(chunk_rows=16, batch_size=8, probabilities=True, progress=False)
    local = predict_file(exported_run, data, tmp_path / "local.parquet", options)
    on_ray = predict_file_on_ray(exported_run, data, tmp_path / "ray.parquet", options, TWO)
    assert pq.read_table(on_ray.output).equals(pq.read_table(local.output))
    assert (on_ray.rows, on_ray.label_counts, on_ray.artifact) == (
        local.rows, local.label_counts, local.artifact)


def test_skipped_bad_rows_are_the_single_machine_ones(exported_run: Path, texts: list[str],
                                                      tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = bad_rows(texts)
    data = write_input(tmp_path / "in.jsonl", rows[:5] + [{"id": "x"}] + rows[5:])
    options = PredictOptions(chunk_rows=8, batch_size=8, on_error="skip", progress=False)
    local = predict_file(exported_run, data, tmp_path / "local.jsonl", options)
    on_ray = predict_file_on_ray(exported_run, data, tmp_path / "ray.jsonl", options, TWO)
    assert on_ray.output.read_bytes() == local.output.read_bytes()
    assert on_ray.rows == 18 and on_ray.skipped == 3
    assert on_ray.errors_file is not None and local.errors_file is not None
    listed = [json.loads(line) for line in on_ray.errors_file.read_text().splitlines()]
    assert [(e["line"], e["problem"]) for e in listed] == [
        (4, "empty text in 'text'"), (6, "no 'text' key"), (13, "empty text in 'text'")]
    assert on_ray.errors_file.read_bytes() == local.errors_file.read_bytes()


def test_a_job_stopped_on_one_machine_is_finished_on_ray(exported_run: Path, texts: list[str],
                                                         tmp_path: Path) -> None:
    data = write_input(tmp_path / "in.csv", rows_of(texts))
    whole = predict_file(exported_run, data, tmp_path / "whole.csv", SMALL)
    out = tmp_path / "resumed.csv"
    with pytest.raises(Stop):
        predict_file(exported_run, data, out, SMALL, after_part=stop_after(2))
    scored: list[int] = []
    resumed = predict_file_on_ray(exported_run, data, out, SMALL, TWO, after_part=scored.append)
    assert resumed.resumed_parts == 2 and scored == [2, 3]
    assert out.read_bytes() == whole.output.read_bytes()


def test_ray_options_without_the_ray_engine_are_refused(
    exported_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_input(tmp_path / "in.csv", rows_of(["a text"]))
    assert main(["predict", str(exported_run), "--data", str(data), "--num-workers", "2"]) == 2
    assert "add --engine ray" in capsys.readouterr().err
