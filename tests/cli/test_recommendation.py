"""One recommendation: before a bench every command says its pick is unmeasured; after it, serve,
predict, deploy and triton all follow the bench's measured pick (triton: the fastest ONNX one);
a run that was never exported is not served by default."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.bench import BenchSettings, bench_run
from kiln.cli.serve_cmd import served_artifacts
from kiln.deploy import plan_deploy
from kiln.errors import KilnError
from kiln.export import triton_run
from kiln.models import read_manifest
from kiln.runtime import PREFERENCE, choose_artifact
from kiln.serve.repository import discover_models


@pytest.fixture(scope="module")
def benched_run(exported_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared exported run with a real (short) bench."""
    run = tmp_path_factory.mktemp("benched") / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("bench", "triton"))
    bench_run(run, BenchSettings(threads=1, texts=10, warmup=1, min_seconds=0.1))
    return run


def test_before_a_bench_the_pick_is_labelled_unmeasured(exported_run: Path,
                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("bench", "triton"))
    export = run / "export"
    manifest = read_manifest(export)
    choice = choose_artifact(export, manifest)
    passed = [n for n, e in manifest["artifacts"].items() if e["passed"]]
    assert not choice.measured and "not benchmarked" in choice.reason
    assert choice.name == next(n for n in PREFERENCE if n in passed)
    assert "recommended" not in manifest["export"]  # export does not recommend: it measured nothing
    [line] = served_artifacts(discover_models(run, "clf"), None)
    assert "not benchmarked" in line
    held = json.loads((triton_run(run) / "kiln.json").read_text())["triton"]
    assert held["artifact"] == "onnx-opt" and "not benchmarked" in held["why"]


def test_serve_deploy_and_triton_follow_the_bench(benched_run: Path) -> None:
    report = json.loads((benched_run / "bench" / "report.json").read_text())
    export = benched_run / "export"
    manifest = read_manifest(export)
    choice = choose_artifact(export, manifest)
    assert choice.measured and choice.name == report["recommended"]
    [line] = served_artifacts(discover_models(benched_run, "clf"), None)
    assert line.startswith(f"clf: {report['recommended']} (lowest p50")
    assert plan_deploy(benched_run).artifact == report["recommended"]
    held = json.loads((triton_run(benched_run) / "kiln.json").read_text())["triton"]
    onnx = {n: r for n, r in report["results"].items()
            if manifest["artifacts"].get(n, {}).get("backend") == "onnxruntime"}
    expected = (report["recommended"] if report["recommended"] in onnx
                else min(onnx, key=lambda n: onnx[n]["latency_b1_real"]["p50_ms"]))
    assert held["artifact"] == expected
    assert "measured by kiln bench" in held["why"]


def test_an_unexported_run_is_served_only_when_asked_by_name(exported_run: Path,
                                                             tmp_path: Path) -> None:
    run = tmp_path / "trained-only"
    shutil.copytree(exported_run / "model", run / "model")
    with pytest.raises(KilnError, match="no exported artifacts.*--artifact torch-fp32"):
        served_artifacts(discover_models(run, "clf"), None)
    [line] = served_artifacts(discover_models(run, "clf"), "torch-fp32")
    assert "WARNING" in line and "unverified" in line
    done = subprocess.run([sys.executable, "-m", "kiln", "serve", str(run), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "kiln export" in done.stderr
    assert "Traceback" not in done.stderr
