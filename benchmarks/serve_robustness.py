"""kiln serve under overload and in a long soak, measured against its own capacity in one run.

overload: measure the server's capacity (closed loop, --concurrency clients), then send Poisson
    arrivals at --factor times that rate with up to --max-inflight requests in flight. Reports how
    many got 200, 503 or anything else (resets, client timeouts), and the p50/p99 latency of the
    503s (target: every answer 200 or 503, 503 p99 under 50 ms), over the whole run and after its
    first second (the queues filling with 200s and the connections opening).
soak: measure the capacity, then send --load (0.7) of it for --minutes (10) and report, per
    minute, the RSS of every worker process, the p99 latency and the errors (target: RSS growth
    from minute 2 to the last minute <= 5% for every artifact, 0 errors). One server per
    artifact (--artifacts, default: every artifact the run's export verified).

Texts are the run's evaluation texts, one per request.

    python benchmarks/serve_robustness.py overload RUN [--workers 2] [--factor 4]
    python benchmarks/serve_robustness.py soak RUN [--minutes 10] [--artifacts onnx-int8-dynamic]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.bench.load import LoadSettings, run_load
from kiln.config import load_config
from kiln.data import prepare_data
from kiln.models import read_manifest

ADDRESS = re.compile(r"kiln serve: http://(\S+)")


@contextlib.contextmanager
def kiln_serve(run: Path, *args: str) -> Iterator[tuple[str, int]]:
    """`kiln serve RUN --port 0 ARGS` until ready: yields (host:port, the server's pid)."""
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        proc = subprocess.Popen([sys.executable, "-m", "kiln", "serve", str(run), "--port", "0",
                                 "--name", "m", *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield wait_ready(proc, Path(log.name)), proc.pid
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        found = ADDRESS.search(log.read_text(errors="replace"))
        if found:
            try:
                with urllib.request.urlopen(f"http://{found.group(1)}/v2/health/ready", timeout=1):
                    return found.group(1)
            except OSError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"kiln serve did not become ready: {log.read_text(errors='replace')}")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker_pids(server: int) -> list[int]:
    """The serving processes: the spawned workers, or the server itself with one worker."""
    found = subprocess.run(["pgrep", "-P", str(server)], capture_output=True, text=True)
    children = [int(p) for p in found.stdout.split()
                if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
    return children or [server]


def capacity(url: str, texts: list[str], concurrency: int, seconds: float) -> float:
    report = run_load(url, texts, LoadSettings(model="m", concurrency=concurrency,
                                               duration_s=seconds))
    return float(report["requests_per_s"])


def overload(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    with kiln_serve(args.run, "--workers", str(args.workers), *args.serve_args) as (url, _):
        rate = capacity(url, texts, args.concurrency, args.seconds)
        report = run_load(url, texts, LoadSettings(
            model="m", rate=args.factor * rate, concurrency=args.max_inflight,
            duration_s=args.seconds, timeout_s=30, warmup_s=1.0))
    statuses = {"200": report["ok"], **report["errors"]}
    return {"capacity_requests_per_s": rate, "offered_requests_per_s": args.factor * rate,
            "statuses": statuses,
            "other_than_200_or_503": sum(v for k, v in statuses.items() if k not in ("200", "503")),
            "latency_ms_200": report["latency_ms"],
            "latency_ms_503": report["latency_ms_by_status"].get("503", {}),
            # the first second, while the queues fill with 200s and connections open, left out
            "latency_ms_503_after_1s": report["latency_ms_by_status_after_warmup"].get("503", {})}


def soak(args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    artifacts = args.artifacts or [name for name, entry in read_manifest(
        args.run / "export").get("artifacts", {}).items() if entry["passed"]
        and entry["precision"] != "fp16"]
    return {artifact: soak_one(args, texts, artifact) for artifact in artifacts}


def soak_one(args: argparse.Namespace, texts: list[str], artifact: str) -> dict[str, Any]:
    with kiln_serve(args.run, "--workers", str(args.workers), "--artifact", artifact,
                    *args.serve_args) as (url, pid):
        rate = args.load * capacity(url, texts, args.concurrency, args.seconds)
        minutes = []
        for minute in range(1, args.minutes + 1):
            report = run_load(url, texts, LoadSettings(model="m", rate=rate,
                                                       concurrency=args.concurrency,
                                                       duration_s=60, seed=minute))
            minutes.append({"minute": minute, "rss_mb": [round(rss_mb(p), 1)
                                                         for p in worker_pids(pid)],
                            "p99_ms": report["latency_ms"]["p99"], "errors": report["errors"]})
            print(artifact, json.dumps(minutes[-1]), flush=True)
    first = minutes[min(1, len(minutes) - 1)]["rss_mb"]  # minute 2: after the warm-up
    last = minutes[-1]["rss_mb"]
    growth = [round(100 * (b - a) / a, 2) for a, b in zip(first, last)]
    return {"requests_per_s": rate, "minutes": minutes, "rss_growth_percent": growth,
            "errors": sum(sum(m["errors"].values()) for m in minutes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("overload", "soak"))
    parser.add_argument("run", type=Path)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, default=32, help="clients for the capacity")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--factor", type=float, default=4.0, help="overload: x capacity")
    parser.add_argument("--max-inflight", type=int, default=1536,
                        help="overload: requests (and connections) open at once; default 1536: "
                        "more than 2 workers' queues hold (2 x 512 rows), so the server must "
                        "refuse some, and within their connection cap (2 x 1000)")
    parser.add_argument("--load", type=float, default=0.7, help="soak: share of capacity")
    parser.add_argument("--minutes", type=int, default=10, help="soak: how long")
    parser.add_argument("--artifacts", nargs="*", help="soak: artifacts (default: all passed)")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                        help="passed on to kiln serve")
    args = parser.parse_args()
    texts = list(prepare_data(load_config(args.run / "config.yaml"), args.run).eval_texts)
    result = overload(args, texts) if args.mode == "overload" else soak(args, texts)
    print(json.dumps({"mode": args.mode, "run": str(args.run), "cpus": os.cpu_count(),
                      **result}, indent=2))


if __name__ == "__main__":
    main()
