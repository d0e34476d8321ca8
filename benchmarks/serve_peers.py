"""kiln serve against a naive server, LitServe and Triton (through PyTriton), in one run.

Four servers get the same closed-loop load (--concurrency clients, one real evaluation text per
request, the text input sent as shape [1, 1], which all four take), one at a time, in --rounds
interleaved rounds (naive, LitServe, Triton, kiln, naive, ...): this machine is shared and its
speed drifts, so the ratios compare medians measured in the same minutes.

- naive: a threaded HTTP server running the eager fp32 model once per request (what a first
  Flask/FastAPI endpoint does), with all --threads;
- LitServe: --workers inference workers, each the artifact through kiln's Predictor, LitServe's
  batching at --max-batch-size with a 2 ms timeout;
- Triton: Triton 2.51 (the tritonserver in the nvidia-pytriton wheel) through PyTriton's Python
  binding, --workers model instances, each the artifact through kiln's Predictor, Triton's
  dynamic batcher at --max-batch-size with a 2 ms queue delay;
- kiln serve: --workers processes, the same artifact, the same batch size and delay.

LitServe, Triton and kiln serve run the same verified artifact (default: the one kiln bench measured
fastest at batch 32 on real texts, else the run's recommendation) with --threads split over the
workers, so the difference is the serving stack. Each server is started for its round, warmed up
for --warmup seconds (OpenVINO compiles its shapes, ONNX Runtime plans its first runs), measured
for --duration seconds and stopped, so no idle server shares the CPUs with a measured one.

Peers are not kiln dependencies. LitServe: `pip install litserve`. PyTriton: the README's
`nvidia-pytriton` install (with `--no-deps`, and numpy < 2 in `.venv/triton-stub-numpy`) plus
`pip install pyzmq sh typing_inspect`; its process runs in a throw-away virtualenv that sees that
numpy 1 first (PyTriton and Triton's Python backend stub need numpy < 2). A peer that is not installed is left out, with
the reason printed.

    python benchmarks/serve_peers.py RUN [--workers 2] [--rounds 3] [--duration 10]

Targets (issue 17): kiln >= 10x the naive throughput, >= 1.5x LitServe's and Triton's, and a p99
lower than every peer's.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import sysconfig
import tempfile
import time
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_vs_naive import best_artifact, free_port, naive_main, server

from kiln.bench.load import LoadSettings, format_load_report, run_load
from kiln.config import load_config
from kiln.data import prepare_data
from kiln.runtime import load_predictor

SERVERS = ("naive", "LitServe", "Triton", "kiln")
STUB_NUMPY = Path(sys.prefix) / "triton-stub-numpy"  # numpy < 2, as the README installs it


def litserve_main(run: Path, artifact: str, port: int, threads: int, batch: int,
                  workers: int) -> None:
    """LitServe in this process (a subprocess of the benchmark)."""
    from serve_vs_litserve import KilnAPI, ls

    api = KilnAPI(run, artifact, threads, max_batch_size=batch, batch_timeout=0.002,
                  api_path="/v2/models/clf/infer")
    ls.LitServer(api, accelerator="cpu", workers_per_device=workers,
                 healthcheck_path="/v2/health/ready").run(port=port, generate_client_file=False)


def pytriton_main(run: Path, artifact: str, port: int, threads: int, batch: int,
                  workers: int) -> None:
    """Triton through PyTriton in this process (a subprocess of the benchmark, run with numpy 1):
    ``workers`` model instances, each kiln's Predictor on ``artifact`` with ``threads`` threads."""
    import numpy as np
    from pytriton.decorators import batch as batched
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    def instance() -> Any:
        predictor = load_predictor(run, artifact, threads=threads, spin_wait=False)

        @batched
        def infer(text: np.ndarray) -> dict[str, np.ndarray]:
            labels = predictor.predict([row[0].decode() for row in text]).labels
            return {"label": np.array([[label.encode()] for label in labels], dtype=np.object_)}

        return infer

    config = TritonConfig(http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1",
                          grpc_port=free_port(), metrics_port=free_port(), exit_timeout_secs=5)
    with Triton(config=config) as triton:
        triton.bind(model_name="clf", infer_func=[instance() for _ in range(workers)],
                    inputs=[Tensor(name="text", dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name="label", dtype=bytes, shape=(1,))],
                    config=ModelConfig(max_batch_size=batch, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=2000)))
        triton.serve()


def missing_peers() -> dict[str, str]:
    """Why each peer that cannot run here cannot."""
    why = {}
    if importlib.util.find_spec("litserve") is None:
        why["LitServe"] = "LitServe is not installed (pip install litserve)"
    needs = [m for m in ("pytriton", "zmq", "sh", "typing_inspect")
             if importlib.util.find_spec(m) is None]
    if needs:
        why["Triton"] = (f"PyTriton cannot start: missing {', '.join(needs)} (README's "
                         "nvidia-pytriton install, then pip install pyzmq sh typing_inspect)")
    elif not (STUB_NUMPY / "numpy").is_dir():
        why["Triton"] = f"no numpy < 2 in {STUB_NUMPY} (README's Triton install)"
    return why


def numpy1_python(folder: Path) -> Path:
    """A Python for the PyTriton process: a virtualenv in ``folder`` that sees numpy < 2 first and
    then this environment's packages (PyTriton and Triton's Python backend stub need numpy < 2;
    PYTHONPATH does not do: the stub then reads BYTES tensors wrongly)."""
    env = folder / "numpy1-env"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    (site / "kiln-numpy1.pth").write_text(
        f"{STUB_NUMPY}\nimport site; site.addsitedir({sysconfig.get_path('purelib')!r})\n")
    return env / "bin" / "python"


def triton_environment() -> dict[str, str]:
    """The libraries tritonserver and its stub load: this Python's libpython (the stub embeds
    it) and the wheel's own."""
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None and spec.submodule_search_locations
    libs = [str(Path(spec.submodule_search_locations[0]).parent / "nvidia_pytriton.libs")]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libs.insert(0, str(sysconfig.get_config_var("LIBDIR")))
    return dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
        [*libs, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep))


@dataclass(frozen=True)
class Server:
    cmd: list[str]
    env: dict[str, str] | None = None
    ready_path: str = "/v2/health/ready"


def servers(args: argparse.Namespace, artifact: str, port: int, numpy1: Path | None
            ) -> dict[str, Server]:
    """Each server's command line, environment and readiness URL, listening on ``port``."""
    threads = max(1, args.threads // args.workers)
    peer = [__file__, str(args.run), "--port", str(port), "--artifact", artifact,
            "--threads", str(args.threads), "--workers", str(args.workers),
            "--max-batch-size", str(args.max_batch_size)]
    found = {
        "naive": Server([sys.executable, *peer, "--as", "naive"]),
        "LitServe": Server([sys.executable, *peer, "--as", "LitServe"]),
        "kiln": Server([sys.executable, "-m", "kiln", "serve", str(args.run), "--name", "clf",
                        "--port", str(port), "--artifact", artifact,
                        "--workers", str(args.workers), "--threads", str(threads),
                        "--max-batch-size", str(args.max_batch_size),
                        "--max-queue-delay-ms", "2"]),
    }
    if numpy1 is not None:
        found["Triton"] = Server([str(numpy1), *peer, "--as", "Triton"], triton_environment(),
                                 "/v2/models/clf/ready")
    return found


def measure(name: str, spec: Server, port: int, texts: list[str],
            args: argparse.Namespace) -> dict[str, Any]:
    settings = LoadSettings(model="clf", concurrency=args.concurrency, duration_s=args.duration,
                            text_column=True)
    for attempt in range(3):  # PyTriton's instances can miss each other's start-up handshake
        try:
            with server(spec.cmd, port, env=spec.env, ready_path=spec.ready_path) as url:
                run_load(url, texts, dataclasses.replace(settings, duration_s=args.warmup))
                report = run_load(url, texts, settings)
            break
        except RuntimeError as exc:
            if attempt == 2:
                raise
            print(f"  {name} did not start, trying again: {str(exc)[-600:]}", flush=True)
    if report["errors"]:
        print(f"  {name}: errors {report['errors']}", flush=True)
    return report


def summary(reports: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    return {name: {"texts_per_s": statistics.median(r["texts_per_s"] for r in runs),
                   "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in runs),
                   "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in runs)}
            for name, runs in reports.items() if runs}


def print_ratios(medians: dict[str, dict[str, float]], rounds: int) -> None:
    print(f"\nmedians over {rounds} rounds:")
    for name, m in medians.items():
        print(f"  {name:9s} {m['texts_per_s']:7.0f} texts/s   p50 {m['p50_ms']:7.1f} ms   "
              f"p99 {m['p99_ms']:7.1f} ms")
    kiln = medians.get("kiln")
    if kiln is None:
        return
    for name, target in (("naive", 10.0), ("LitServe", 1.5), ("Triton", 1.5)):
        if name not in medians:
            continue
        ratio = kiln["texts_per_s"] / max(medians[name]["texts_per_s"], 1e-9)
        p99 = kiln["p99_ms"] / max(medians[name]["p99_ms"], 1e-9)
        print(f"kiln / {name}: throughput {ratio:.2f}x (target >= {target:g}: "
              f"{'met' if ratio >= target else 'NOT met'}), p99 {p99:.2f}x (target < 1: "
              f"{'met' if p99 < 1 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of each server, over all its workers")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="inference workers (processes or instances) of each batching server")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--artifact", help="default: the verified artifact kiln bench measured "
                        "fastest at batch 32 on real texts")
    parser.add_argument("--only", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)  # a peer server's own run
    parser.add_argument("--as", dest="peer", choices=SERVERS[:3], help=argparse.SUPPRESS)
    args = parser.parse_args()
    artifact = args.artifact or best_artifact(args.run)
    if args.peer:
        threads = max(1, args.threads // args.workers)
        if args.peer == "naive":
            naive_main(args.run, args.port, args.threads)
        elif args.peer == "LitServe":
            litserve_main(args.run, artifact, args.port, threads, args.max_batch_size,
                          args.workers)
        else:
            pytriton_main(args.run, artifact, args.port, threads, args.max_batch_size,
                          args.workers)
        return

    skipped = missing_peers()
    names = [n for n in args.only if n not in skipped]
    for name, why in skipped.items():
        if name in args.only:
            print(f"left out {name}: {why}", flush=True)
    texts = list(prepare_data(load_config(args.run / "config.yaml"), args.run).eval_texts)
    print(f"{os.cpu_count()} CPUs ({cpu_model()}); artifact {artifact}; batching servers: "
          f"{args.workers} workers x {max(1, args.threads // args.workers)} threads, max batch "
          f"{args.max_batch_size}, 2 ms; naive: torch-fp32 eager, {args.threads} threads; "
          f"{args.concurrency} clients, {args.rounds} rounds of {args.duration:g} s after "
          f"{args.warmup:g} s warm-up", flush=True)
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        numpy1 = numpy1_python(Path(tmp)) if "Triton" in names else None
        for i in range(args.rounds):
            for name in names:
                port = free_port()
                started = time.monotonic()
                spec = servers(args, artifact, port, numpy1)[name]
                reports[name].append(measure(name, spec, port, texts, args))
                print(f"round {i + 1} {name} ({time.monotonic() - started:.0f} s with start-up):"
                      f"\n" + format_load_report(reports[name][-1]), flush=True)
    print_ratios(summary(reports), args.rounds)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
