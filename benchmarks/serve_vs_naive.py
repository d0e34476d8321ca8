"""kiln serve against a naive server, and against the same artifact in process, in one run.

- naive: a threaded HTTP server that runs the eager fp32 model once per request (what a first
  Flask/FastAPI endpoint does), speaking the same KServe v2 JSON so one load generator drives both;
- kiln serve with the run's recommended artifact and dynamic batching;
- in-process: the same artifact called directly at kiln serve's batch size (serving overhead).

Both servers get 32 concurrent closed-loop clients sending real evaluation texts (targets: kiln >=
7x the naive throughput with p99 no worse; kiln >= 80% of in-process throughput).

    python benchmarks/serve_vs_naive.py RUN [--concurrency 32] [--duration 15]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

from kiln.bench.load import LoadSettings, format_load_report, run_load
from kiln.config import load_config
from kiln.data import prepare_data
from kiln.runtime import load_predictor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def naive_server(run: Path, port: int, threads: int) -> ThreadingHTTPServer:
    predictor = load_predictor(run, "torch-fp32", threads=threads)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
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

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait_ready(url: str) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def in_process_rate(run: Path, texts: list[str], batch: int, threads: int, seconds: float) -> float:
    predictor = load_predictor(run, threads=threads)
    batches = [predictor.encode(texts[i:i + batch]) for i in range(0, len(texts) - batch, batch)]
    predictor.logits(*batches[0])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for ids, mask in batches:
            predictor.logits(ids, mask)
            done += len(ids)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()
    texts = list(prepare_data(load_config(args.run / "config.yaml"), args.run).eval_texts)
    settings = LoadSettings(model="clf", concurrency=args.concurrency, duration_s=args.duration)

    port = free_port()
    naive = naive_server(args.run, port, args.threads)
    naive_report = run_load(f"127.0.0.1:{port}", texts, settings)
    naive.shutdown()
    print("naive (eager fp32 per request):\n" + format_load_report(naive_report))

    port = free_port()
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "kiln", "serve", str(args.run), "--name", "clf",
                             "--port", str(port), "--threads", str(args.threads),
                             "--max-batch-size", str(args.max_batch_size)], env=env)
    try:
        wait_ready(f"127.0.0.1:{port}")
        kiln_report = run_load(f"127.0.0.1:{port}", texts, settings)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print("kiln serve:\n" + format_load_report(kiln_report))

    in_process = in_process_rate(args.run, texts, args.max_batch_size, args.threads, 5.0)
    ratio = kiln_report["texts_per_s"] / max(naive_report["texts_per_s"], 1e-9)
    p99_k, p99_n = kiln_report["latency_ms"]["p99"], naive_report["latency_ms"]["p99"]
    print(f"\nthroughput kiln / naive: {ratio:.2f}x (target >= 7)")
    print(f"p99 kiln {p99_k:.1f} ms vs naive {p99_n:.1f} ms (target: no worse): "
          f"{'met' if p99_k <= p99_n else 'NOT met'}")
    print(f"kiln serve / in-process at batch {args.max_batch_size}: "
          f"{kiln_report['texts_per_s'] / in_process:.2f} (target >= 0.8; in-process "
          f"{in_process:.0f} texts/s)")


if __name__ == "__main__":
    main()
