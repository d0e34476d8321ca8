"""kiln serve against a naive server, and against the same artifact in process, in one run.

- naive: a threaded HTTP server (its own process) that runs the eager fp32 model once per request,
  what a first Flask/FastAPI endpoint does, speaking the same KServe v2 JSON so one load generator
  drives both;
- kiln serve: a verified artifact with dynamic batching, --workers processes;
- in-process: the same artifact's Predictor.predict (texts in, labels out: the server's own work
  without HTTP) at the mean batch size kiln serve formed, with all --threads (the serving
  overhead), against kiln serve under (a) the one-text requests above
  and (b) requests of --request-texts texts each (as Triton's perf_analyzer -b measures overhead:
  the per-request HTTP cost is then shared by the batch).

Both servers get --concurrency closed-loop clients sending one real evaluation text per request,
in --rounds interleaved rounds (naive, kiln, naive, kiln, ...), and the medians are compared:
this machine is shared and one measurement can move 20-35%. Targets (issue 5): kiln >= 7x the
naive throughput with p99 no worse; kiln >= 80% of the in-process throughput.

The artifact defaults to the verified one with the highest throughput on real texts in the run's
`kiln bench` report (the recommended one when there is no report).

    python benchmarks/serve_vs_naive.py RUN [--workers 2] [--rounds 3] [--duration 8]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kiln.bench.load import LoadSettings, format_load_report, run_load
from kiln.config import load_config
from kiln.data import prepare_data
from kiln.runtime import load_predictor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None,
               path: str = "/v2/health/ready") -> None:
    for _ in range(600):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before it was ready")
        try:
            with urllib.request.urlopen(f"http://{url}{path}", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str] | None = None,
           ready_path: str = "/v2/health/ready") -> Iterator[str]:
    """Run ``cmd`` (a server on ``port``) in a session of its own, stopped with all its children,
    once GET ``ready_path`` answers 200. If it never does, the end of its output is in the error."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        try:
            wait_ready(f"127.0.0.1:{port}", proc, ready_path)
        except RuntimeError as exc:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}: {' '.join(cmd)}\n{tail}") from None
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def naive_main(run: Path, port: int, threads: int) -> None:
    """The naive server (run as a subprocess of the benchmark, so it has a GIL of its own)."""
    predictor = load_predictor(run, "torch-fp32", threads=threads)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name): the readiness probe
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            texts = body["inputs"][0]["data"]
            labels = predictor.predict(texts).labels  # one eager forward per request
            out = json.dumps({"outputs": [{"name": "label", "datatype": "BYTES",
                                           "shape": [len(labels)], "data": labels}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # not 5: 32 clients connecting at once would see SYN retries

    Server(("127.0.0.1", port), Handler).serve_forever()


def batches_formed(url: str) -> tuple[float, float]:
    """kiln serve's (rows, batches) executed so far, from its /metrics."""
    with urllib.request.urlopen(f"http://{url}/metrics") as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    samples = {s.name: s.value for s in families["kiln_batch_size"].samples}
    return samples["kiln_batch_size_sum"], samples["kiln_batch_size_count"]


def in_process_rate(run: Path, artifact: str, texts: list[str], batch: int, threads: int,
                    seconds: float) -> float:
    """Texts/s of ``Predictor.predict`` on batches of ``batch`` texts: the server's own work
    (tokenise, pad, run, softmax, label) without HTTP, queueing or batching."""
    predictor = load_predictor(run, artifact, threads=threads)
    batches = [texts[i:i + batch] for i in range(0, len(texts) - batch, batch)]
    predictor.predict(batches[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for chunk in batches:
            predictor.predict(chunk)
            done += len(chunk)
    return done / (time.perf_counter() - start)


def best_artifact(run: Path) -> str:
    """The verified artifact kiln bench measured fastest at batch 32 on real texts, else its
    recommendation; unbenchmarked, export's preferred one (``recommended`` in older runs)."""
    report = run / "bench" / "report.json"
    if not report.exists():
        export = json.loads((run / "export" / "kiln.json").read_text())["export"]
        return str(export.get("preferred") or export["recommended"])
    bench = json.loads(report.read_text())
    return str(bench.get("highest_throughput") or bench["recommended"])


def median_report(reports: list[dict[str, Any]]) -> dict[str, float]:
    return {"texts_per_s": statistics.median(r["texts_per_s"] for r in reports),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in reports)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, all processes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="kiln serve worker processes (default: one per core)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--request-texts", type=int, default=8,
                        help="texts per request in the batched-request overhead measurement")
    parser.add_argument("--artifact", help="default: the verified artifact with the highest "
                        "throughput in the run's bench report")
    parser.add_argument("--naive-port", type=int, help=argparse.SUPPRESS)  # the naive server
    args = parser.parse_args()
    if args.naive_port:
        naive_main(args.run, args.naive_port, args.threads)
        return
    artifact = args.artifact or best_artifact(args.run)
    texts = list(prepare_data(load_config(args.run / "config.yaml"), args.run).eval_texts)
    settings = LoadSettings(model="clf", concurrency=args.concurrency, duration_s=args.duration)
    threads_per_worker = max(1, args.threads // args.workers)
    print(f"kiln serve: {artifact}, {args.workers} workers x {threads_per_worker} threads, max "
          f"batch {args.max_batch_size}; naive: torch-fp32, {args.threads} threads; "
          f"{args.concurrency} clients, {args.rounds} rounds of {args.duration:g} s", flush=True)

    naive_port, kiln_port = free_port(), free_port()
    naive_cmd = [sys.executable, __file__, str(args.run), "--naive-port", str(naive_port),
                 "--threads", str(args.threads)]
    kiln_cmd = [sys.executable, "-m", "kiln", "serve", str(args.run), "--name", "clf", "--port",
                str(kiln_port), "--artifact", artifact, "--workers", str(args.workers),
                "--threads", str(threads_per_worker), "--max-batch-size", str(args.max_batch_size)]
    naive, kiln, batched = [], [], []
    batched_settings = dataclasses.replace(settings, texts_per_request=args.request_texts)
    with server(naive_cmd, naive_port) as naive_url, server(kiln_cmd, kiln_port) as kiln_url:
        before = batches_formed(kiln_url)
        for i in range(args.rounds):
            naive.append(run_load(naive_url, texts, settings))
            print(f"round {i + 1} naive (eager fp32 per request):\n"
                  + format_load_report(naive[-1]), flush=True)
            kiln.append(run_load(kiln_url, texts, settings))
            print(f"round {i + 1} kiln serve:\n" + format_load_report(kiln[-1]), flush=True)
        middle = batches_formed(kiln_url)
        for i in range(args.rounds):
            batched.append(run_load(kiln_url, texts, batched_settings))
            print(f"round {i + 1} kiln serve, {args.request_texts} texts per request:\n"
                  + format_load_report(batched[-1]), flush=True)
        after = batches_formed(kiln_url)
    mean_batch = (middle[0] - before[0]) / max(middle[1] - before[1], 1)
    mean_batch_b = (after[0] - middle[0]) / max(after[1] - middle[1], 1)

    in_process = in_process_rate(args.run, artifact, texts, max(1, round(mean_batch)),
                                 args.threads, 5.0)
    in_process_b = in_process_rate(args.run, artifact, texts, max(1, round(mean_batch_b)),
                                   args.threads, 5.0)
    n, k, b = median_report(naive), median_report(kiln), median_report(batched)
    ratio = k["texts_per_s"] / max(n["texts_per_s"], 1e-9)
    print(f"\nmedians over {args.rounds} rounds: kiln {k['texts_per_s']:.0f} texts/s, p99 "
          f"{k['p99_ms']:.1f} ms; naive {n['texts_per_s']:.0f} texts/s, p99 {n['p99_ms']:.1f} ms")
    print(f"throughput kiln / naive: {ratio:.2f}x (target >= 7: "
          f"{'met' if ratio >= 7 else 'NOT met'})")
    print(f"p99 kiln {k['p99_ms']:.1f} ms vs naive {n['p99_ms']:.1f} ms (target: no worse): "
          f"{'met' if k['p99_ms'] <= n['p99_ms'] else 'NOT met'}")
    for label, got, batch, rate in (
            ("one text per request", k, mean_batch, in_process),
            (f"{args.request_texts} texts per request", b, mean_batch_b, in_process_b)):
        share = got["texts_per_s"] / rate
        print(f"kiln serve / in-process, {label}: {got['texts_per_s']:.0f} / {rate:.0f} texts/s "
              f"at its mean batch {batch:.1f} ({artifact}, {args.threads} threads) = "
              f"{share:.2f} (target >= 0.8: {'met' if share >= 0.8 else 'NOT met'})")


if __name__ == "__main__":
    main()
