"""Run the kiln serve app under uvicorn: one process, or several worker processes on one port.

Why several processes: in one process the event loop and the inference thread share one GIL. When
the loop is busy, the inference thread waits for the GIL each time the model or the tokenizer hands
it back, and on a small machine the two also fight for cores. Measured on 2 cores under 32 clients:
one process spent 0.58 ms of wall time per text in the model (0.24 ms in a quiet process). Worker
processes each own a loop, a batcher and a model copy, like Triton model instances in processes.

Each worker binds its own SO_REUSEPORT socket, so the kernel spreads connections evenly over them.
(uvicorn's ``workers=N`` shares one listening socket instead, and whichever worker wakes first takes
most connections: 28 of 32 clients on one of two workers, measured.)
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
from types import FrameType

from kiln.errors import KilnError
from kiln.serve.app import ServeSettings, build_app
from kiln.serve.repository import Repository

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch to shared metric files
# no proxy-headers middleware or access log on the request path: kiln logs no client addresses
UVICORN = dict(log_level="warning", lifespan="on", timeout_graceful_shutdown=30,
               proxy_headers=False, access_log=False)


def run_server(repository: Repository, settings: ServeSettings, host: str, port: int) -> None:
    """Serve ``repository`` until SIGINT/SIGTERM, draining in-flight requests first.

    Raises:
        KilnError: the port is taken, or a worker process died (its error is in the log above).
    """
    import uvicorn

    if settings.workers == 1:
        uvicorn.run(build_app(repository, settings), host=host, port=port, **UVICORN)  # type: ignore[arg-type]
        return
    if not hasattr(socket, "SO_REUSEPORT"):
        raise KilnError("--workers above 1 needs SO_REUSEPORT (Linux, macOS); use --workers 1")
    _check_port_free(host, port)  # SO_REUSEPORT would otherwise share it with a running server
    metrics_dir = tempfile.mkdtemp(prefix="kiln-metrics-")  # fresh: stale files would add up
    threads = settings.threads or max(1, (os.cpu_count() or 1) // settings.workers)
    settings = dataclasses.replace(settings, metrics_dir=metrics_dir, threads=threads)
    os.environ[METRICS_ENV] = metrics_dir  # read by prometheus_client in each worker at import
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked ORT/torch threads
    workers = [spawn.Process(target=_worker, args=(repository, settings, host, port),
                             name=f"kiln-serve-{i}") for i in range(settings.workers)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:  # SIGTERM, not the signal itself: a second SIGINT would make uvicorn
            if w.pid is not None and w.is_alive():  # skip the graceful drain
                os.kill(w.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for w in workers:
            w.start()
        ended = multiprocessing.connection.wait([w.sentinel for w in workers])  # the first
        if not stopping:
            failed = next(w for w in workers if w.sentinel in ended)
            failed.join()
            stop(signal.SIGTERM, None)
            for w in workers:
                w.join()
            raise KilnError(f"serve worker {failed.name} exited with code {failed.exitcode} "
                            "(see its error above); stopped the others")
        for w in workers:
            w.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker(repository: Repository, settings: ServeSettings, host: str, port: int) -> None:
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    config = uvicorn.Config(build_app(repository, settings), **UVICORN)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # the app failed to start (model load): say so to the supervisor
        sys.exit(3)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise KilnError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
