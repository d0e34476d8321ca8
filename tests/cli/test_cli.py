"""End to end through the real `kiln` command, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.config import iter_keys
from tests.conftest import tiny_overrides

KILN = [sys.executable, "-m", "kiln"]


def kiln(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(KILN + [str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=600)


def tensorboard_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_help_explains_every_config_key(cli_env: dict[str, str]) -> None:
    top = kiln("--help", env=cli_env)
    assert top.returncode == 0 and "train" in top.stdout and "eval" in top.stdout
    out = kiln("train", "--help", env=cli_env).stdout
    for key, _, _, description in iter_keys():
        assert key in out, key
        assert description.split()[0] in out


@pytest.mark.slow
def test_run_then_eval_on_files(small_dataset: tuple[Path, Path], tmp_path: Path,
                                cli_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    settings = [*tiny_overrides(*small_dataset, run, **{"train.epochs": 2}), "--bench-seconds",
                "0.3"]
    done = kiln("run", *settings, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert f"trained: {run / 'model'}" in done.stdout and "accuracy" in done.stdout
    for stage in ("[2/5] export and verify", "[3/5] benchmark", "[4/5] Triton model repository",
                  "[5/5] report", "serve        ", "under load   ", "--workers",
                  "weights of the last step"):
        assert stage in done.stdout, stage
    for name in ("export/parity.json", "export/model.onnx", "triton/run/config.pbtxt",
                 "bench/report.json", "bench/report.md", "bench/latency.png", "report.html"):
        assert (run / name).exists(), name
    assert "oneDNN" not in done.stderr and "absl" not in done.stderr  # no TensorFlow log lines
    for name in ("config.yaml", "metrics.jsonl", "model/model.safetensors", "model/kiln.json",
                 "model/tokenizer.json"):
        assert (run / name).exists(), name
    manifest = json.loads((run / "model" / "kiln.json").read_text())
    assert manifest["labels"] == ["account", "billing", "shipping", "technical"]
    assert set(manifest["files"]) == {"model.safetensors", "tokenizer.json"}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in x for x in lines) and any(x["kind"] == "eval" for x in lines)
    tags = tensorboard_tags(run / "tensorboard")
    for tag in ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s",
                "train/tokens_per_s", "eval/accuracy", "eval/macro_f1", "eval/loss"):
        assert tag in tags, tag

    ev = kiln("eval", run, "--data", small_dataset[1], "--json", env=cli_env)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["accuracy"] == pytest.approx(manifest["training"]["eval"]["accuracy"])
    assert 0 <= result["macro_f1"] <= 1
    table = kiln("eval", run, "--data", small_dataset[1], env=cli_env).stdout
    assert "true \\ predicted" in table

    # a second `kiln run` on the finished run redoes nothing and reports it
    before = snapshot(run)
    again = kiln("run", *settings, env=cli_env)
    assert again.returncode == 0, again.stderr
    assert "nothing was redone" in again.stdout and "recommended  " in again.stdout
    assert snapshot(run) == before
    # --redo redoes that stage and those after it, nothing before
    redone = kiln("run", *settings, "--redo", "triton", env=cli_env)
    assert redone.returncode == 0, redone.stderr
    changed = {name for name, state in snapshot(run).items() if before.get(name) != state}
    assert changed and all(name.startswith("triton/") or name in ("report.html", "stages.json")
                           for name in changed), changed
    assert "report.html" in changed


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """Every file of ``run``: (size, modification time in ns)."""
    return {p.relative_to(run).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("make", "settings", "message"),
    [
        (lambda d: d.write_text("sentence,label\nhi,a\n"), {}, "line 1: no column 'text'"),
        (lambda d: d.write_text("text,label\nhi,a\nho,b\n"), {"data.labels": "[a]"},
         "data.labels needs at least 2 labels"),
        (lambda d: d.write_text("text,label\nhi,a\nho,b\n"), {"data.labels": "[a,c]"},
         "line 3: label 'b' is not one of ['a', 'c']"),
        (lambda d: d.write_text(""), {}, "is empty"),
        (lambda d: d.write_text("text,label\nhi,a\n"), {"train.bogus": 1}, "unknown config key 'train.bogus'"),
        (lambda d: d.write_text("text,label\nhi,a\n"), {"train.epochs": "two"}, "train.epochs: Input should be a valid integer"),
    ],
)
def test_bad_input_exits_2_naming_the_problem_without_traceback(
    tmp_path: Path, cli_env: dict[str, str], make, settings: dict[str, object], message: str
) -> None:
    data = tmp_path / "train.csv"
    make(data)
    args = [f"data.train={data}", f"run_dir={tmp_path / 'run'}"] + [f"{k}={v}" for k, v in settings.items()]
    done = kiln("train", *args, env=cli_env)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_eval_of_a_missing_run_exits_2(tmp_path: Path, cli_env: dict[str, str]) -> None:
    done = kiln("eval", tmp_path / "nope", "--data", tmp_path / "x.csv", env=cli_env)
    assert done.returncode == 2 and "does not exist" in done.stderr


@pytest.mark.slow
def test_run_with_no_data_uses_the_built_in_dataset(tmp_path: Path, cli_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    done = kiln("run", f"run_dir={run}", "model.preset=tiny", "train.epochs=1", "--no-bench",
                env=cli_env)
    assert done.returncode == 0, done.stderr
    assert (run / "data" / "train.csv").exists() and (run / "data" / "eval.csv").exists()
    assert "accuracy" in done.stdout
    again = kiln("train", f"run_dir={run}", "model.preset=tiny", "train.epochs=1", env=cli_env)
    assert again.returncode == 0 and "resumed at step" in again.stderr
