"""`kiln bench` on an exported tiny run (short timings: the numbers are not asserted)."""

import json
import os
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


def test_ties_within_noise_are_broken_by_the_fixed_order_and_disturbed_ones_lose() -> None:
    from kiln.bench.run_bench import pick

    def result(p50: float, disturbed: int = 0) -> dict[str, object]:
        return {"latency_b1_real": {"p50_ms": p50}, "disturbed_rounds": disturbed,
                "rounds": [{}, {}, {}]}

    p50 = lambda r: r["latency_b1_real"]["p50_ms"]  # noqa: E731
    results = {"onnx-opt": result(1.00), "onnx-int8-dynamic": result(1.03),
               "torch-fp32": result(5.0)}
    name, why = pick(results, p50, lower=True)
    assert name == "onnx-int8-dynamic" and "within 5%" in why  # a tie: kiln's order decides
    results["onnx-int8-dynamic"] = result(1.2)
    assert pick(results, p50, lower=True) == ("onnx-opt", "")
    results["onnx-opt"] = result(0.5, disturbed=3)  # every round disturbed: not trusted
    assert pick(results, p50, lower=True)[0] == "onnx-int8-dynamic"


def test_other_processes_cpu_use_is_seen_and_a_disturbed_bench_warns(exported_run: Path) -> None:
    from kiln.bench.contention import MAX_SHARE, idle_check

    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        seen = idle_check(0.5)
        assert seen.known and seen.others > MAX_SHARE, seen
        settings = BenchSettings(threads=1, texts=3, batch_size=4, warmup=1, min_seconds=0.05,
                                 artifacts=["onnx-fp32"], rounds=2, retries=1)
        report = bench_run(exported_run, settings)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert report["warnings"] and "busy when the bench started" in report["warnings"][0]
    assert any("the baseline" in w for w in report["warnings"]), report["warnings"]
    assert all(r["disturbed_rounds"] == 2 for r in report["results"].values())
    assert "(!)" in (exported_run / "bench" / "report.md").read_text()
