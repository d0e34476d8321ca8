"""kiln serve against LitServe serving the same artifact with its batching on, in one run.

Both servers load the same verified artifact through kiln's Predictor (same tokenizer, same ONNX
Runtime session settings), batch up to --max-batch-size with a 2 ms batch timeout, and get the
same closed-loop load: --concurrency clients sending one real evaluation text per request. The
difference is the serving stack: kiln's asyncio batcher in the server process vs LitServe's
FastAPI front end and inference worker process. LitServe is not a kiln dependency:

    pip install litserve
    python benchmarks/serve_vs_litserve.py RUN [--concurrency 32] [--duration 15]

(Target in issue 5: kiln's throughput higher and its p99 lower; the ratios are printed.)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from serve_vs_naive import free_port, wait_ready

from kiln.bench.load import LoadSettings, format_load_report, run_load
from kiln.config import load_config
from kiln.data import prepare_data

try:
    import litserve as ls
except ImportError:  # only the LitServe worker needs it; main() says how to install it
    ls = None


if ls is not None:
    class KilnAPI(ls.LitAPI):  # type: ignore[misc]
        """The run's artifact through kiln's Predictor, behind LitServe (module level: LitServe
        pickles it into its worker process)."""

        def __init__(self, run: Path, artifact: str, threads: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.run, self.artifact, self.threads = run, artifact, threads

        def setup(self, device: str) -> None:
            from kiln.runtime import load_predictor

            self.predictor = load_predictor(self.run, self.artifact, threads=self.threads,
                                            spin_wait=False)

        def decode_request(self, request):  # type: ignore[no-untyped-def]
            # (no annotation: LitServe/FastAPI would read a string annotation as a query field)
            return str(request["inputs"][0]["data"][0])

        def batch(self, inputs: list[str]) -> list[str]:
            return inputs

        def predict(self, texts: list[str]) -> list[str]:
            return self.predictor.predict(texts).labels

        def unbatch(self, output: list[str]) -> list[str]:
            return output

        def encode_response(self, label: str) -> dict[str, Any]:
            return {"outputs": [{"name": "label", "datatype": "BYTES", "shape": [1],
                                 "data": [label]}]}


def litserve_main(run: Path, artifact: str, port: int, threads: int, batch: int) -> None:
    """Run LitServe in this process (called as a subprocess of the benchmark)."""
    api = KilnAPI(run, artifact, threads, max_batch_size=batch, batch_timeout=0.002,
                  api_path="/v2/models/clf/infer")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1,
                          healthcheck_path="/v2/health/ready")
    server.run(port=port, generate_client_file=False)


def serve_and_load(cmd: list[str], port: int, texts: list[str],
                   settings: LoadSettings) -> dict[str, Any]:
    # A session of its own: LitServe starts worker processes, and all of them must go at the end.
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(f"127.0.0.1:{port}")
        return run_load(f"127.0.0.1:{port}", texts, settings)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--artifact", help="default: the run's recommended artifact")
    parser.add_argument("--litserve-port", type=int, help=argparse.SUPPRESS)  # the worker mode
    args = parser.parse_args()
    manifest = json.loads((args.run / "export" / "kiln.json").read_text())
    artifact = args.artifact or manifest["export"]["recommended"]
    if args.litserve_port:
        litserve_main(args.run, artifact, args.litserve_port, args.threads, args.max_batch_size)
        return

    if ls is None:
        sys.exit("LitServe is not installed: pip install litserve")
    texts = list(prepare_data(load_config(args.run / "config.yaml"), args.run).eval_texts)
    settings = LoadSettings(model="clf", concurrency=args.concurrency, duration_s=args.duration)
    print(f"artifact {artifact}, {args.threads} threads, max batch {args.max_batch_size}, "
          f"{args.concurrency} clients for {args.duration:g} s each")

    port = free_port()
    lit = serve_and_load([sys.executable, __file__, str(args.run), "--litserve-port", str(port),
                          "--artifact", artifact, "--threads", str(args.threads),
                          "--max-batch-size", str(args.max_batch_size)], port, texts, settings)
    print("LitServe:\n" + format_load_report(lit))

    port = free_port()
    kiln = serve_and_load([sys.executable, "-m", "kiln", "serve", str(args.run), "--name", "clf",
                           "--port", str(port), "--threads", str(args.threads), "--artifact",
                           artifact, "--max-batch-size", str(args.max_batch_size)],
                          port, texts, settings)
    print("kiln serve:\n" + format_load_report(kiln))

    ratio = kiln["texts_per_s"] / max(lit["texts_per_s"], 1e-9)
    p99_k, p99_l = kiln["latency_ms"]["p99"], lit["latency_ms"]["p99"]
    print(f"\nthroughput kiln / LitServe: {ratio:.2f}x (target > 1)")
    print(f"p99 kiln {p99_k:.1f} ms vs LitServe {p99_l:.1f} ms: kiln/LitServe {p99_k / p99_l:.2f} "
          f"(target < 1)")


if __name__ == "__main__":
    main()
