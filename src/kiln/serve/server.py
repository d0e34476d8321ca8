"""Run the kiln serve app under uvicorn: one process, or several worker processes on one port.

Why several processes: in one process the event loop and the inference thread share one GIL. When
the loop is busy, the inference thread waits for the GIL each time the model or the tokenizer hands
it back, and on a small machine the two also fight for cores. Measured on 2 cores under 32 clients:
one process spent 0.58 ms of wall time per text in the model (0.24 ms in a quiet process). Worker
processes each own a loop, a batcher and a model copy, like Triton model instances in processes.

Each worker binds its own SO_REUSEPORT socket, so the kernel spreads connections evenly over them.
(uvicorn's ``workers=N`` shares one listening socket instead, and whichever worker wakes first takes
most connections: 28 of 32 clients on one of two workers, measured.) The supervisor binds the port
first, so that ``--port 0`` (a free port the OS picks) gives every worker the same one.
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
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

from kiln.errors import KilnError
from kiln.serve.app import build_app
from kiln.serve.asgi import ASGIApp
from kiln.serve.repository import Repository
from kiln.serve.settings import ServeSettings

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch to shared metric files
# no proxy-headers middleware or access log on the request path: kiln logs no client addresses
UVICORN = dict(log_level="warning", lifespan="on", timeout_graceful_shutdown=30,
               proxy_headers=False, access_log=False)
STARTUP_FAILURE = 3  # exit code of a server whose app failed to start (uvicorn's)


def run_server(
    repository: Repository, settings: ServeSettings, host: str, port: int,
    on_bound: Callable[[int], None] | None = None,
) -> None:
    """Serve ``repository`` until SIGINT/SIGTERM, draining in-flight requests first.

    ``port`` 0 takes a free port chosen by the OS; ``on_bound`` is called with the port once it
    is bound, before the models load (poll /v2/health/ready to know when they have).

    Raises:
        KilnError: the port is taken, or a worker process died (its error is in the log above).
    """
    if settings.workers == 1:
        sock = _bind(host, port)
        if on_bound is not None:
            on_bound(sock.getsockname()[1])
        _serve(build_app(repository, settings), sock)
        return
    if not hasattr(socket, "SO_REUSEPORT"):
        raise KilnError("--workers above 1 needs SO_REUSEPORT (Linux, macOS); use --workers 1")
    with _reserve_shared_port(host, port) as reserved:
        port = reserved.getsockname()[1]
        if on_bound is not None:
            on_bound(port)
        _run_workers(repository, settings, host, port)


def _run_workers(repository: Repository, settings: ServeSettings, host: str, port: int) -> None:
    metrics_dir = tempfile.mkdtemp(prefix="kiln-metrics-")  # fresh: stale files would add up
    threads = settings.threads or max(1, (os.cpu_count() or 1) // settings.workers)
    settings = dataclasses.replace(settings, metrics_dir=metrics_dir, threads=threads)
    os.environ[METRICS_ENV] = metrics_dir  # read by prometheus_client in each worker at import
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked ORT/torch threads
    group = WorkerGroup([spawn.Process(target=_worker, args=(repository, settings, host, port),
                                       name=f"kiln-serve-{i}") for i in range(settings.workers)])
    previous = {s: signal.signal(s, group.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        group.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


class WorkerGroup:
    """Worker processes that stop together: on SIGINT/SIGTERM, or when one of them dies."""

    def __init__(self, workers: list[BaseProcess]) -> None:
        self.workers = workers
        self.stopping = False  # a signal asked for the stop: the workers' exits are expected

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Signal handler: SIGTERM every live worker (not the signal itself: a second SIGINT
        would make uvicorn skip the graceful drain)."""
        self.stopping = True
        for w in self.workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signal.SIGTERM)

    def run(self) -> None:
        """Start the workers and wait until all have exited.

        Raises:
            KilnError: a worker exited by itself (the others are stopped first).
        """
        for w in self.workers:
            w.start()
        ended = multiprocessing.connection.wait([w.sentinel for w in self.workers])  # the first
        if not self.stopping:
            failed = next(w for w in self.workers if w.sentinel in ended)
            failed.join()
            self.stop()
            for w in self.workers:
                w.join()
            raise KilnError(f"serve worker {failed.name} exited with code {failed.exitcode} "
                            "(see its error above); stopped the others")
        for w in self.workers:
            w.join()


def _worker(repository: Repository, settings: ServeSettings, host: str, port: int) -> None:
    _serve(build_app(repository, settings), _bind(host, port, reuse_port=True))


def _serve(app: ASGIApp, sock: socket.socket) -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, **UVICORN))  # type: ignore[arg-type]
    server.run(sockets=[sock])
    if not server.started:  # the app failed to start (model load): say so to the supervisor
        sys.exit(STARTUP_FAILURE)


def _bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A socket bound (not yet listening) to ``host:port``; port 0: a free one the OS picks.

    Raises:
        KilnError: the address cannot be bound (taken, or not this machine's).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise KilnError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _reserve_shared_port(host: str, port: int) -> socket.socket:
    """A SO_REUSEPORT socket bound, never listening, to ``host:port`` for as long as the workers
    run: it holds the port (0: a free one the OS picks, never one that another socket holds) for
    them, and receives no connections itself.

    Raises:
        KilnError: the port is taken.
    """
    if port != 0:
        _check_port_free(host, port)  # SO_REUSEPORT would otherwise share it with a running server
    return _bind(host, port, reuse_port=True)


def _check_port_free(host: str, port: int) -> None:
    _bind(host, port).close()
