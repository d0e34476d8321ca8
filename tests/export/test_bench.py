"""`kiln bench` on an exported tiny run (short timings: the numbers are not asserted)."""

import json
import subprocess
import sys
from pathlib import Path

from kiln.bench import BenchSettings, bench_run

QUICK = BenchSettings(threads=1, texts=5, batch_size=8, warmup=1, min_seconds=0.05)


def test_report_has_every_passed_artifact_against_the_eager_baseline(exported_run: Path) -> None:
    report = bench_run(exported_run, QUICK)
    parity = json.loads((exported_run / "export" / "parity.json").read_text())
    cpu_artifacts = {r["artifact"] for r in parity["artifacts"] if r["passed"]} - {"onnx-fp16"}
    assert set(report["results"]) == {"torch-fp32"} | cpu_artifacts
    for name, r in report["results"].items():
        for key in ("latency_b1_fixed", "latency_b1_real"):
            assert 0 < r[key]["p50_ms"] <= r[key]["p95_ms"] <= r[key]["p99_ms"], (name, key)
        assert r["throughput_real"]["samples_per_s"] > 0
        assert r["info"]["backend"] in ("torch", "onnxruntime", "openvino")
    assert report["ratios"]["torch-fp32"]["p50_real_vs_eager_real"] == 1.0
    assert report["recommended"] in report["results"]
    assert report["highest_throughput"] in report["results"]
    saved = json.loads((exported_run / "bench" / "report.json").read_text())
    assert saved["settings"]["threads"] == 1
    for png in ("latency.png", "throughput.png"):
        assert (exported_run / "bench" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| onnx-fp32 |" in (exported_run / "bench" / "report.md").read_text()


def test_bench_cli_prints_json(exported_run: Path, cli_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "bench", str(exported_run), "--json", "--threads", "1",
         "--texts", "3", "--batch-size", "4", "--seconds", "0.05", "--artifacts", "onnx-fp32"],
        capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["results"]) == {"torch-fp32", "onnx-fp32"}
