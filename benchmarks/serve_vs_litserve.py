"""kiln serve against LitServe serving the same artifact with its batching on, in one run.

Both servers load the same verified artifact through kiln's Predictor (same tokenizer, same ONNX
Runtime session settings), batch up to --max-batch-size with a 2 ms batch timeout, and get the
same closed-loop load: --concurrency clients sending one real evaluation text per request. The
difference is the serving stack: kiln's asyncio batcher in the server process vs LitServe's
FastAPI front end and inference worker process. LitServe is not a kiln dependency:

    pip install litserve
    python benchmarks/serve_vs_litserve.py RUN [--workers 2] [--rounds 3] [--duration 8]

(Target in issue 5: kiln's throughput higher and its p99 lower; the ratios are printed.)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from serve_vs_naive import best_artifact, free_port, median_report, server

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


def litserve_main(run: Path, artifact: str, port: int, threads: int, batch: int,
                  workers: int) -> None:
    """Run LitServe in this process (called as a subprocess of the benchmark)."""
    api = KilnAPI(run, artifact, threads, max_batch_size=batch, batch_timeout=0.002,
                  api_path="/v2/models/clf/infer")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers,
                          healthcheck_path="/v2/health/ready")
    server.run(port=port, generate_client_file=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, all workers")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="inference workers of each server (default: one per core)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--artifact", help="default: the verified artifact with the highest "
                        "throughput in the run's bench report")
    parser.add_argument("--litserve-port", type=int, help=argparse.SUPPRESS)  # the worker mode
    args = parser.parse_args()
    artifact = args.artifact or best_artifact(args.run)
    threads = max(1, args.threads // args.workers)
    if args.litserve_port:
        litserve_main(args.run, artifact, args.litserve_port, threads, args.max_batch_size,
                      args.workers)
        return

    if ls is None:
        sys.exit("LitServe is not installed: pip install litserve")
    texts = list(prepare_data(load_config(args.run / "config.yaml"), args.run).eval_texts)
    settings = LoadSettings(model="clf", concurrency=args.concurrency, duration_s=args.duration)
    print(f"artifact {artifact}, {args.workers} workers x {threads} threads, max batch "
          f"{args.max_batch_size}, "
          f"{args.concurrency} clients for {args.duration:g} s each")

    lit_port, kiln_port = free_port(), free_port()
    lit_cmd = [sys.executable, __file__, str(args.run), "--litserve-port", str(lit_port),
               "--artifact", artifact, "--threads", str(args.threads), "--workers",
               str(args.workers), "--max-batch-size", str(args.max_batch_size)]
    kiln_cmd = [sys.executable, "-m", "kiln", "serve", str(args.run), "--name", "clf", "--port",
                str(kiln_port), "--threads", str(threads), "--workers", str(args.workers),
                "--artifact", artifact, "--max-batch-size", str(args.max_batch_size)]
    lit, kiln = [], []
    with server(lit_cmd, lit_port) as lit_url, server(kiln_cmd, kiln_port) as kiln_url:
        for i in range(args.rounds):  # interleaved: the machine's speed drifts between passes
            lit.append(run_load(lit_url, texts, settings))
            print(f"round {i + 1} LitServe:\n" + format_load_report(lit[-1]), flush=True)
            kiln.append(run_load(kiln_url, texts, settings))
            print(f"round {i + 1} kiln serve:\n" + format_load_report(kiln[-1]), flush=True)

    k, ls_ = median_report(kiln), median_report(lit)
    ratio = k["texts_per_s"] / max(ls_["texts_per_s"], 1e-9)
    print(f"\nmedians over {args.rounds} rounds: kiln {k['texts_per_s']:.0f} texts/s, LitServe "
          f"{ls_['texts_per_s']:.0f} texts/s")
    print(f"throughput kiln / LitServe: {ratio:.2f}x (target > 1)")
    print(f"p99 kiln {k['p99_ms']:.1f} ms vs LitServe {ls_['p99_ms']:.1f} ms: kiln/LitServe "
          f"{k['p99_ms'] / ls_['p99_ms']:.2f} (target < 1)")

if __name__ == "__main__":
    main()
