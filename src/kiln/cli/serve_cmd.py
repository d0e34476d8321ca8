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
    parser.add_argument("--grpc-port", type=int, default=8001, metavar="PORT",
                        help="also serve the protocol's gRPC binding (Triton's and KServe's "
                        "GRPCInferenceService) on this port, with the same batching, limits, "
                        "API key and metrics (default 8001; 0: HTTP only)")
    parser.add_argument("--name", help="model name when PATH is one model (default: its run "
                        "folder's name)")
    parser.add_argument("--artifact", help="artifact to serve (default: the one `kiln bench` "
                        "measured fastest, printed with the reason; a run that was never "
                        "exported needs --artifact torch-fp32, the trained model unverified)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0,
                        help="longest wait to fill a batch (default 2 ms)")
    parser.add_argument("--max-queue-size", type=int, default=512,
                        help="texts waiting before new requests get 503 (default 512)")
    parser.add_argument("--instances", type=int,
                        help="batches run at once in each worker, on one model copy (default: "
                        "one per core the worker has, with --threads 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port, each with its own batcher and "
                        "model copy; queue limits apply per worker; a worker that dies is "
                        "restarted (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request seconds (default 30)")
    parser.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--threads", type=int, help="CPU threads per model instance "
                        "(default: the worker's cores over its instances; 1 when neither is "
                        "given)")
    parser.add_argument("--spin-wait", action="store_true",
                        help="let idle ONNX Runtime threads spin for the next batch (lower "
                        "latency on a machine with cores to spare; default: they sleep)")
    parser.add_argument("--compute-nice", type=int, default=19, metavar="N", choices=range(20),
                        help="run the inference threads N nice steps below the threads that "
                        "answer HTTP (Linux), so that under overload refusals and health checks "
                        "are answered in milliseconds; they still get every idle cycle (0-19, "
                        "default 19; 0: same priority)")
    parser.add_argument("--drift-window", type=int, default=1000, metavar="N",
                        help="compare each worker's last N rows with the export's reference "
                        "profile of the evaluation set: kiln_drift_psi{model,statistic} at "
                        "/metrics (default 1000; 0: off)")
    conn = parser.add_argument_group(
        "connections", "slow or idle clients get timed out, so they cannot hold the server's "
        "sockets (a client that started a request gets 408 Request Timeout)")
    conn.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                      help="seconds to send the request line and headers, from the connection's "
                      "opening or the request's first byte (nginx client_header_timeout, Go "
                      "ReadHeaderTimeout; default 10)")
    conn.add_argument("--body-timeout", type=float, default=10.0, metavar="S",
                      help="longest pause between two pieces of a request body (nginx "
                      "client_body_timeout; default 10)")
    conn.add_argument("--read-timeout", type=float, default=60.0, metavar="S",
                      help="seconds to send a whole request, headers and body (Go ReadTimeout; "
                      "default 60)")
    conn.add_argument("--timeout-keep-alive", type=float, default=75.0, metavar="S",
                      help="close a kept-alive connection idle this long after a response "
                      "(uvicorn's --timeout-keep-alive; default 75, as nginx). Keep it above the "
                      "idle timeout of your clients' or proxy's pooled connections: a client that "
                      "reuses one just as the server closes it loses that request")
    conn.add_argument("--max-connections", type=int, default=1000, metavar="N",
                      help="open connections per worker; requests on more get 503 (uvicorn's "
                      "--limit-concurrency; default 1000)")
    parser.add_argument("--api-key", default=os.environ.get("KILN_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $KILN_API_KEY); "
                        "required when --host is not local")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.serve import ServeSettings, run_server
    from kiln.serve.repository import discover_models
    from kiln.serve.settings import available_cores, compute_layout

    if args.host not in LOCAL_HOSTS and not args.api_key:
        raise KilnError(f"binding to {args.host} exposes the model beyond this machine: set "
                        "--api-key (or KILN_API_KEY)")
    for flag in ("max_batch_size", "max_queue_size", "instances", "workers", "max_request_bytes",
                 "max_connections", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise KilnError(f"--{flag.replace('_', '-')} must be at least 1")
    if not 0 <= args.grpc_port <= 65535:
        raise KilnError(f"--grpc-port must be a port number (0 turns gRPC off), got "
                        f"{args.grpc_port}")
    if args.grpc_port and args.grpc_port == args.port:
        raise KilnError(f"--grpc-port {args.grpc_port} is the HTTP --port too; give gRPC its own "
                        "port (or 0 to turn it off)")
    if args.drift_window < 0:
        raise KilnError(f"--drift-window must be 0 (off) or a number of rows, got "
                        f"{args.drift_window}")
    for flag in ("header_timeout", "body_timeout", "read_timeout", "timeout_keep_alive"):
        if not getattr(args, flag) > 0:
            raise KilnError(f"--{flag.replace('_', '-')} must be above 0 seconds")
    repository = discover_models(Path(args.path), args.name)  # fails now, naming the path
    choices = served_artifacts(repository, args.artifact)
    cores = available_cores()
    instances, threads, why = compute_layout(args.instances, args.threads, args.workers, cores)
    if instances * threads * args.workers > cores:
        why += f": {instances * threads * args.workers} threads in all, more than the cores"
    choices.append(f"each worker runs {instances} model instance{'s' if instances > 1 else ''} "
                   f"x {threads} thread{'s' if threads > 1 else ''} ({why})")
    settings = ServeSettings(
        max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=args.max_queue_size, instances=instances, timeout_s=args.timeout,
        max_request_bytes=args.max_request_bytes, api_key=args.api_key, threads=threads,
        artifact=args.artifact, spin_wait=args.spin_wait, workers=args.workers,
        header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        read_timeout_s=args.read_timeout, keep_alive_s=args.timeout_keep_alive,
        max_connections=args.max_connections, compute_nice=args.compute_nice,
        grpc_port=args.grpc_port, drift_window=args.drift_window)
    served = ", ".join(f"{m} (versions {', '.join(sorted(v, key=int))})" for m, v in repository.items())

    def announce(port: int) -> None:  # once bound: with --port 0, this is where the port is told
        print(f"kiln serve: http://{args.host}:{port}  models: {served}", flush=True)
        for line in choices:
            print(f"kiln serve: {line}", flush=True)
        if args.grpc_port:
            print(f"kiln serve: grpc://{args.host}:{args.grpc_port}", flush=True)

    run_server(repository, settings, args.host, args.port, on_bound=announce)
    return 0


def served_artifacts(repository: dict[str, dict[str, Path]], artifact: str | None) -> list[str]:
    """What each model serves and why, one line per model (its latest version).

    Raises:
        KilnError: a model has no export and no --artifact names what to serve: serving the
            trained model unverified is a choice the user makes, never a silent default.
    """
    from kiln.models import read_manifest
    from kiln.runtime import artifact_folder, choose_artifact, reference_artifact

    lines = []
    for model, versions in repository.items():
        for version in sorted(versions, key=int):
            folder = artifact_folder(versions[version])
            manifest = read_manifest(folder)
            if artifact is None and not manifest.get("artifacts"):
                raise KilnError(
                    f"{folder} has no exported artifacts: kiln serve serves verified artifacts; "
                    "run `kiln export RUN` (and `kiln bench RUN` to pick the fastest) first, or "
                    f"pass --artifact {reference_artifact(manifest)} to serve the trained model "
                    "itself (eager, unverified, slower)")
        if artifact is not None:
            unverified = not manifest.get("artifacts")
            lines.append(f"{model}: {artifact} (named with --artifact"
                         + ("; WARNING: the trained model, eager and unverified: no export)"
                            if unverified else ")"))
        else:
            choice = choose_artifact(folder, manifest)  # of the latest version, served by default
            lines.append(f"{model}: {choice.name} ({choice.reason})")
    return lines
