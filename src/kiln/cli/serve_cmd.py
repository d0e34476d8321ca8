"""`kiln serve`: serve a run's verified artifact over the Open Inference Protocol (KServe v2)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from kiln.errors import KilnError

HELP = "serve a run (or export/model folder) over the Open Inference Protocol (KServe v2)"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("serve", help=HELP, description=HELP + ", with dynamic batching, "
                            "Prometheus metrics at /metrics and bounded queues (503 when full).")
    parser.add_argument("path", metavar="PATH", help="run directory, export/ or model/ folder, or "
                        "a repository folder of several (<repo>/<model>[/<version>]/)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port (default 8000; 0: a free port, printed once bound)")
    parser.add_argument("--name", help="model name when PATH is one model (default: its run "
                        "folder's name)")
    parser.add_argument("--artifact", help="artifact to serve (default: the recommended one)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0,
                        help="longest wait to fill a batch (default 2 ms)")
    parser.add_argument("--max-queue-size", type=int, default=512,
                        help="texts waiting before new requests get 503 (default 512)")
    parser.add_argument("--instances", type=int, default=1,
                        help="batches run at once in each worker (default 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port, each with its own batcher and "
                        "model copy; queue limits apply per worker (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request seconds (default 30)")
    parser.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--threads", type=int, help="CPU threads per model instance")
    parser.add_argument("--spin-wait", action="store_true",
                        help="let idle ONNX Runtime threads spin for the next batch (lower "
                        "latency on a machine with cores to spare; default: they sleep)")
    parser.add_argument("--api-key", default=os.environ.get("KILN_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $KILN_API_KEY); "
                        "required when --host is not local")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.serve import ServeSettings, run_server
    from kiln.serve.repository import discover_models

    if args.host not in LOCAL_HOSTS and not args.api_key:
        raise KilnError(f"binding to {args.host} exposes the model beyond this machine: set "
                        "--api-key (or KILN_API_KEY)")
    for flag in ("max_batch_size", "max_queue_size", "instances", "workers", "max_request_bytes"):
        if getattr(args, flag) < 1:
            raise KilnError(f"--{flag.replace('_', '-')} must be at least 1")
    repository = discover_models(Path(args.path), args.name)  # fails now, naming the path
    settings = ServeSettings(
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size, instances=args.instances, timeout_s=args.timeout,
        max_request_bytes=args.max_request_bytes, api_key=args.api_key, threads=args.threads,
        artifact=args.artifact, spin_wait=args.spin_wait, workers=args.workers)
    served = ", ".join(f"{m} (versions {', '.join(sorted(v, key=int))})" for m, v in repository.items())

    def announce(port: int) -> None:  # once bound: with --port 0, this is where the port is told
        print(f"kiln serve: http://{args.host}:{port}  models: {served}", flush=True)

    run_server(repository, settings, args.host, args.port, on_bound=announce)
    return 0
