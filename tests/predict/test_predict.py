"""kiln predict: every format in and out, order kept under length grouping, resume after a stop,
bad rows, and the CLI's exit codes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kiln.cli import main
from kiln.errors import DataError
from kiln.predict import JobMismatch, PredictOptions, parts_folder, predict_file
from kiln.runtime import load_predictor

SMALL = PredictOptions(chunk_rows=16, batch_size=8, progress=False)


@pytest.fixture(scope="module")
def texts(small_dataset: tuple[Path, Path]) -> list[str]:
    with open(small_dataset[1], newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)][:60]


def write_input(path: Path, rows: list[dict[str, Any]]) -> Path:
    fmt = path.suffix
    if fmt == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, list(rows[0]), delimiter="," if fmt == ".csv" else "\t",
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return path


def read_output(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="," if path.suffix == ".csv" else "\t"))


def rows_of(texts: list[str]) -> list[dict[str, Any]]:
    return [{"id": str(i), "text": t} for i, t in enumerate(texts)]


@pytest.mark.parametrize(("src", "dst"), [(".csv", ".csv"), (".tsv", None), (".jsonl", ".jsonl"),
                                          (".parquet", ".parquet"), (".csv", ".parquet"),
                                          (".parquet", ".jsonl"), (".jsonl", ".csv")])
def test_every_format_keeps_rows_in_order_with_the_predictors_labels(
    exported_run: Path, texts: list[str], tmp_path: Path, src: str, dst: str | None
) -> None:
    data = write_input(tmp_path / f"in{src}", rows_of(texts))
    out = tmp_path / f"out{dst}" if dst else None
    summary = predict_file(exported_run, data, out, SMALL)
    expected = tmp_path / f"in.predictions{src}" if dst is None else out
    assert summary.output == expected and summary.rows == len(texts)
    rows = read_output(summary.output)
    assert [str(r["id"]) for r in rows] == [str(i) for i in range(len(texts))]
    assert [r["text"] for r in rows] == texts
    predictions = load_predictor(exported_run, summary.artifact).predict(texts)
    assert [r["label"] for r in rows] == predictions.labels
    best = predictions.probabilities.max(axis=-1)
    assert [float(r["probability"]) for r in rows] == pytest.approx(best.tolist(), abs=1e-5)
    assert sum(summary.label_counts.values()) == len(texts)
    assert not parts_folder(summary.output).exists()


def test_probability_columns_sum_to_one(exported_run: Path, texts: list[str],
                                        tmp_path: Path) -> None:
    data = write_input(tmp_path / "in.csv", rows_of(texts))
    options = PredictOptions(probabilities=True, chunk_rows=16, progress=False)
    summary = predict_file(exported_run, data, tmp_path / "out.parquet", options)
    names = load_predictor(exported_run).label_names
    table = pq.read_table(summary.output)
    assert table.column_names == ["id", "text", "label", "probability",
                                  *[f"prob_{n}" for n in names]]
    for row in table.to_pylist():
        assert sum(row[f"prob_{n}"] for n in names) == pytest.approx(1.0, abs=1e-5)
        assert row["probability"] == max(row[f"prob_{n}"] for n in names)


class Stop(Exception):
    pass


def stop_after(parts: int) -> Any:
    def hook(i: int) -> None:
        if i + 1 == parts:
            raise Stop
    return hook


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_a_stopped_job_resumes_to_the_uninterrupted_output(
    exported_run: Path, texts: list[str], tmp_path: Path, ext: str
) -> None:
    data = write_input(tmp_path / "in.csv", rows_of(texts))
    whole = predict_file(exported_run, data, tmp_path / f"whole{ext}", SMALL)
    out = tmp_path / f"resumed{ext}"
    with pytest.raises(Stop):
        predict_file(exported_run, data, out, SMALL, after_part=stop_after(2))
    assert not out.exists()
    records = sorted(p.name for p in parts_folder(out).glob("part-*.json"))
    assert records == ["part-000000.json", "part-000001.json"]
    scored: list[int] = []
    resumed = predict_file(exported_run, data, out, SMALL, after_part=scored.append)
    assert resumed.resumed_parts == 2 and scored == [2, 3]  # 60 rows: parts 0..3 of 16
    assert resumed.rows == whole.rows and resumed.label_counts == whole.label_counts
    if ext == ".parquet":
        assert pq.read_table(out).equals(pq.read_table(whole.output))
    else:
        assert out.read_bytes() == whole.output.read_bytes()


def test_changed_options_refuse_to_resume_until_fresh(exported_run: Path, texts: list[str],
                                                      tmp_path: Path) -> None:
    data = write_input(tmp_path / "in.csv", rows_of(texts))
    out = tmp_path / "out.csv"
    with pytest.raises(Stop):
        predict_file(exported_run, data, out, SMALL, after_part=stop_after(1))
    changed = PredictOptions(chunk_rows=16, batch_size=4, progress=False)
    with pytest.raises(JobMismatch, match="batch_size: 8 -> 4.*--fresh"):
        predict_file(exported_run, data, out, changed)
    fresh = PredictOptions(chunk_rows=16, batch_size=4, progress=False, fresh=True)
    assert predict_file(exported_run, data, out, fresh).resumed_parts == 0


def bad_rows(texts: list[str]) -> list[dict[str, Any]]:
    rows = rows_of(texts[:20])
    rows[3]["text"] = ""
    rows[11]["text"] = "   "
    return rows


def test_a_bad_row_stops_the_job_naming_its_line(exported_run: Path, texts: list[str],
                                                  tmp_path: Path) -> None:
    data = write_input(tmp_path / "in.csv", bad_rows(texts))
    with pytest.raises(DataError, match=r"in\.csv line 5: empty text in 'text'.*--on-error skip"):
        predict_file(exported_run, data, tmp_path / "out.csv", SMALL)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "fine"}\n\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"in\.jsonl line 3: 'text' is not text \(int: '3'\)"):
        predict_file(exported_run, jsonl, tmp_path / "out.jsonl", SMALL)


def test_skipped_bad_rows_are_counted_and_listed(exported_run: Path, texts: list[str],
                                                  tmp_path: Path) -> None:
    rows = bad_rows(texts)
    data = write_input(tmp_path / "in.parquet", rows[:5] + [{"id": "x", "text": None}] + rows[5:])
    options = PredictOptions(chunk_rows=16, on_error="skip", progress=False)
    summary = predict_file(exported_run, data, tmp_path / "out.csv", options)
    assert summary.rows == 18 and summary.skipped == 3
    assert [r["id"] for r in read_output(summary.output)] == [
        r["id"] for r in rows if r["text"].strip()]
    listed = [json.loads(line) for line in summary.errors_file.read_text().splitlines()]  # type: ignore[union-attr]
    assert [(e["row"], e["problem"]) for e in listed] == [
        (4, "empty text in 'text'"), (6, "no value in 'text'"), (13, "empty text in 'text'")]


def test_cli_exit_codes_and_summary(exported_run: Path, texts: list[str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    good = write_input(tmp_path / "good.csv", rows_of(texts[:10]))
    assert main(["predict", str(exported_run), "--data", str(good), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "good.predictions.csv: 10 rows in" in out and "labels: " in out
    assert "kiln predict: artifact " in out  # which artifact, and why
    bad = write_input(tmp_path / "bad.csv", bad_rows(texts))
    assert main(["predict", str(exported_run), "--data", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv line 5: empty text" in err and "Traceback" not in err
    assert main(["predict", str(exported_run), "--data", str(bad), "--no-progress",
                 "--on-error", "skip"]) == 0
    assert "skipped 2 bad row(s), listed in" in capsys.readouterr().out
    labeled = write_input(tmp_path / "labeled.csv", [{"text": t, "label": "x"} for t in texts])
    assert main(["predict", str(exported_run), "--data", str(labeled), "--no-progress"]) == 2
    assert "--prefix" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("ext", [".csv", ".parquet"])
def test_a_killed_kiln_predict_reruns_to_the_uninterrupted_output(
    exported_run: Path, texts: list[str], tmp_path: Path, ext: str
) -> None:
    """SIGKILL a real `kiln predict` process midway (no cleanup runs), then run the same command
    again: it continues from the last complete part and writes the uninterrupted output."""
    rows = rows_of(texts * 300)  # 18,000 rows in parts of 100: long enough to be caught midway
    data = write_input(tmp_path / f"in{ext}", rows)
    command = [sys.executable, "-m", "kiln", "predict", str(exported_run), "--data", str(data),
               "--chunk-rows", "100", "--batch-size", "32", "--threads", "1", "--no-progress"]
    out = tmp_path / f"out{ext}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*command, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    record = parts_folder(out) / "part-000004.json"
    deadline = time.monotonic() + 120
    while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "kiln predict finished (or failed) before it could be killed"
    proc.kill()
    proc.wait()
    assert not out.exists()
    left = len(list(parts_folder(out).glob("part-*.json")))
    assert 5 <= left < 180
    again = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{left} part(s) from an earlier run" in again.stdout
    whole = subprocess.run([*command, "--out", str(tmp_path / f"whole{ext}")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    if ext == ".parquet":
        assert pq.read_table(out).equals(pq.read_table(tmp_path / f"whole{ext}"))
        assert pq.read_table(out).num_rows == len(rows)
    else:
        assert out.read_bytes() == (tmp_path / f"whole{ext}").read_bytes()
    assert not parts_folder(out).exists()
