"""Run the kiln serve app under uvicorn: one process, or several worker processes on one port.

Why several processes: in one process the event loop and the inference thread share one GIL. When
the loop is busy, the inference thread waits for the GIL each time the model or the tokenizer hands
it back, and on a small machine the two also fight for cores. Measured on 2 cores under 32 clients:
one process spent 0.58 ms of wall time per text in the model (0.24 ms in a quiet process). Worker
processes each own a loop, a batcher and a model copy, like Triton model instances in processes.

Each worker binds its own SO_REUSEPORT socket, so the kernel spreads connections evenly over them
(its gRPC server's too, when gRPC is on: see serve/grpc_adapter.py).
(uvicorn's ``workers=N`` shares one listening socket instead, and whichever worker wakes first takes
most connections: 28 of 32 clients on one of two workers, measured.) The supervisor binds the ports
first, so that ``--port 0`` (a free port the OS picks) gives every worker the same one, and so that
a port another server holds is refused before any model loads.

The supervisor replaces a worker that dies (see `WorkerGroup`); a worker reports ready only while
all are (see `WorkerStates.all_ready`). SIGTERM drains the requests in flight, then exits 0, with
one process or several. A killed worker's own connections (in flight, or queued in its listening
socket) are reset; the kernel hands the queued ones to the other workers' sockets instead when
``net.ipv4.tcp_migrate_req`` is 1 (Linux 5.14+, off by default).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from kiln.errors import KilnError
from kiln.serve.app import RestAdapter
from kiln.serve.asgi import ASGIApp, asgi_app
from kiln.serve.core import InferenceCore
from kiln.serve.http import EarlyAnswer, ReadTimeouts, http_protocol
from kiln.serve.repository import Repository
from kiln.serve.settings import ServeSettings

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch to shared metric files
# no proxy-headers middleware or access log on the request path: kiln logs no client addresses
UVICORN: dict[str, Any] = dict(log_level="warning", lifespan="on", timeout_graceful_shutdown=30,
                               proxy_headers=False, access_log=False)
STARTUP_FAILURE = 3  # exit code of a server whose app failed to start (uvicorn's)


def run_server(
    repository: Repository, settings: ServeSettings, host: str, port: int,
    on_bound: Callable[[int], None] | None = None,
) -> None:
    """Serve ``repository`` until SIGINT/SIGTERM, draining in-flight requests first: HTTP on
    ``port``, and gRPC on ``settings.grpc_port`` unless it is 0.

    ``port`` 0 takes a free port chosen by the OS; ``on_bound`` is called with the port once it
    (and the gRPC port) is bound, before the models load (poll /v2/health/ready to know when they
    have).

    Raises:
        KilnError: a port is taken, or a worker process failed to start (its error is in the
            log above).
    """
    if settings.workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise KilnError("--workers above 1 needs SO_REUSEPORT (Linux, macOS); use --workers 1")
    # each worker binds its own SO_REUSEPORT sockets; these hold the ports for them meanwhile
    http = _bind(host, port) if settings.workers == 1 else _reserve_shared_port(host, port)
    with http, _reserve_grpc_port(host, settings.grpc_port):
        port = http.getsockname()[1]
        if on_bound is not None:
            on_bound(port)
        if settings.workers == 1:
            _serve_one(repository, settings, host, http)
        else:
            _run_workers(repository, settings, host, port)


def _serve_one(repository: Repository, settings: ServeSettings, host: str,
               sock: socket.socket) -> None:
    core = InferenceCore(repository, settings)
    process = ServingProcess(core, host)
    adapter = RestAdapter(core)
    _serve(asgi_app(adapter.routes(), process.start, process.stop), sock, settings,
           adapter.early_reply)


def _reserve_grpc_port(host: str, port: int) -> contextlib.AbstractContextManager[Any]:
    """The gRPC port held for the workers' gRPC servers (see `_reserve_shared_port`); nothing
    for port 0 (gRPC off).

    Raises:
        KilnError: the port is taken (by another kiln serve, Triton, ...: grpc's own sockets are
            SO_REUSEPORT, so without this check two servers would share it unknowingly).
    """
    return contextlib.nullcontext() if port == 0 else _reserve_shared_port(host, port)


def _run_workers(repository: Repository, settings: ServeSettings, host: str, port: int) -> None:
    from prometheus_client.multiprocess import mark_process_dead

    metrics_dir = tempfile.mkdtemp(prefix="kiln-metrics-")  # fresh: stale files would add up
    threads = settings.threads or max(1, (os.cpu_count() or 1) // settings.workers)
    settings = dataclasses.replace(settings, metrics_dir=metrics_dir, threads=threads)
    os.environ[METRICS_ENV] = metrics_dir  # read by prometheus_client in each worker at import
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters: no forked ORT/torch threads
    states = WorkerStates(spawn.RawArray("b", settings.workers))

    def new_worker(slot: int, restart: bool) -> BaseProcess:
        return spawn.Process(target=_worker, name=f"kiln-serve-{slot}",
                             args=(repository, settings, host, port, states, slot, restart))

    # a dead worker's live-summed gauges (requests in flight, queue depth) leave the sums
    group = WorkerGroup(new_worker, states, on_death=lambda w: mark_process_dead(w.pid, metrics_dir))
    previous = {s: signal.signal(s, group.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        group.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)


STARTING, READY, DRAINING = 0, 1, 2  # a worker's state, as the supervisor and the worker see it


@dataclass(frozen=True)
class WorkerStates:
    """One byte per worker slot in shared memory: STARTING, READY or DRAINING. A worker sets its
    own READY once its models are loaded and DRAINING when it shuts down; the supervisor sets a
    dead worker's slot back to STARTING, and every slot to DRAINING on SIGINT/SIGTERM."""

    states: Any  # multiprocessing's RawArray of signed chars

    def __getitem__(self, slot: int) -> int:
        return int(self.states[slot])

    def __setitem__(self, slot: int, state: int) -> None:
        self.states[slot] = state

    def __len__(self) -> int:
        return len(self.states)

    def all_ready(self) -> bool:
        """Whether every worker serves now. This is the readiness each worker reports: ready means
        the server has all the capacity it was started with. While a dead worker's replacement
        loads its model, a load balancer that reads /v2/health/ready sends traffic to the other
        replicas; in-flight and new requests are still answered by the workers that are up (an
        "at least one" rule would say nothing: the worker that answers the probe is up)."""
        return all(state == READY for state in self.states)


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a worker that died: ``first_s``, doubled with each death
    of that worker up to ``max_s``; a worker that lived ``healthy_s`` starts again from ``first_s``."""

    first_s: float = 0.5
    max_s: float = 10.0
    healthy_s: float = 30.0

    def delay(self, previous_s: float | None, lived_s: float) -> float:
        if previous_s is None or lived_s >= self.healthy_s:
            return self.first_s
        return min(self.max_s, 2 * previous_s)


class WorkerGroup:
    """Worker processes, each replaced when it dies, until SIGINT/SIGTERM stops them all.

    A worker that ends before it was ever ready, other than killed (SIGKILL, SIGTERM: the OOM
    killer, an operator), failed to start: its model cannot be loaded, or loading it crashes. A
    replacement would fail the same way, so that stops the server, with the reason. Any other death
    (a crash, kill -9, any exit while serving) is restarted after a back-off (`Backoff`), while the
    other workers keep serving.
    """

    def __init__(self, new_worker: Callable[[int, bool], BaseProcess], states: WorkerStates,
                 on_death: Callable[[BaseProcess], None] = lambda w: None,
                 backoff: Backoff = Backoff()) -> None:
        self.new_worker = new_worker  # (slot, is a restart) -> a process, not started
        self.states, self.on_death, self.backoff = states, on_death, backoff
        self.workers: list[BaseProcess | None] = [None] * len(states)
        self.started_at = [0.0] * len(states)
        self.delay_s: list[float | None] = [None] * len(states)  # each slot's last back-off
        self.restart_at: dict[int, float] = {}  # slot -> monotonic time of its restart
        self.restarts = 0
        self.stopping = False  # a signal asked for the stop: the workers' exits are expected
        self._wake_r, self._wake_w = os.pipe()  # a stop wakes `run` from its wait

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Signal handler: SIGTERM every live worker (not the signal itself: a second SIGINT
        would make uvicorn skip the graceful drain)."""
        self.stopping = True
        for slot in range(len(self.states)):
            self.states[slot] = DRAINING  # not ready while the workers drain
        with contextlib.suppress(OSError):  # closed: `run` has returned
            os.write(self._wake_w, b"!")
        for w in self.workers:
            if w is not None and w.pid is not None and w.is_alive():
                os.kill(w.pid, signal.SIGTERM)

    def run(self) -> None:
        """Start the workers, replace those that die, and wait for all to exit once stopped.

        Raises:
            KilnError: a worker failed to start (the others are stopped first).
        """
        try:
            for slot in range(len(self.workers)):
                self._start(slot, restart=False)
            while not self.stopping:
                self._wait_and_replace()
        finally:
            self.stop()  # again: a worker started as the signal came also gets its SIGTERM
            for w in self.workers:
                if w is not None:
                    w.join()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _wait_and_replace(self) -> None:
        due = min(self.restart_at.values(), default=None)
        timeout = None if due is None else max(0.0, due - time.monotonic())
        sentinels = {w.sentinel: slot for slot, w in enumerate(self.workers) if w is not None}
        ended = multiprocessing.connection.wait([*sentinels, self._wake_r], timeout)
        if self.stopping:
            return
        for sentinel in ended:
            if sentinel in sentinels:
                self._died(sentinels[sentinel])
        for slot, at in list(self.restart_at.items()):
            if at <= time.monotonic():
                del self.restart_at[slot]
                self._start(slot, restart=True)

    def _start(self, slot: int, restart: bool) -> None:
        self.states[slot] = STARTING
        worker = self.workers[slot] = self.new_worker(slot, restart)
        self.started_at[slot] = time.monotonic()
        worker.start()

    def _died(self, slot: int) -> None:
        """Schedule the restart of the worker in ``slot``, which has exited.

        Raises:
            KilnError: it exited by itself before it was ever ready.
        """
        worker = self.workers[slot]
        assert worker is not None
        worker.join()  # its sentinel fires as it exits, a moment before its exit code is there
        self.workers[slot] = None
        self.on_death(worker)
        code = worker.exitcode or 0
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        killed = -code in (signal.SIGKILL, signal.SIGTERM)  # by someone else: OOM killer, operator
        if self.states[slot] == STARTING and not killed:
            raise KilnError(f"serve worker {worker.name} {how} before it was ready (see its error "
                            "above); stopped the others")
        lived_s = time.monotonic() - self.started_at[slot]
        delay = self.delay_s[slot] = self.backoff.delay(self.delay_s[slot], lived_s)
        self.states[slot] = STARTING
        self.restart_at[slot] = time.monotonic() + delay
        self.restarts += 1
        print(f"kiln serve: worker {worker.name} (pid {worker.pid}) {how} after {lived_s:.1f} s; "
              f"restarting it in {delay:g} s (restart {self.restarts})", file=sys.stderr, flush=True)


def _worker(repository: Repository, settings: ServeSettings, host: str, port: int,
            states: WorkerStates, slot: int, restart: bool) -> None:
    from prometheus_client import Counter

    # multiprocess mode: every worker's file counts, so the sum is every restart since the start
    restarts = Counter("kiln_worker_restarts", "Worker processes replaced after one died",
                       registry=None)
    if restart:
        restarts.inc()
    core = InferenceCore(repository, settings, peers_ready=states.all_ready)

    def ready() -> None:
        states[slot] = READY

    def draining() -> None:
        states[slot] = DRAINING

    process = ServingProcess(core, host, ready, draining)
    adapter = RestAdapter(core)
    _serve(asgi_app(adapter.routes(), process.start, process.stop),
           _bind(host, port, reuse_port=True), settings, adapter.early_reply)


@dataclass
class ServingProcess:
    """What a serving process does before its first request and after its last, around its
    core: load the models, open gRPC (when ``settings.grpc_port``), say ready; on shutdown (once
    uvicorn has drained HTTP), say draining, drain and close gRPC, stop the core."""

    core: InferenceCore
    host: str
    on_ready: Callable[[], None] = lambda: None
    on_draining: Callable[[], None] = lambda: None
    grpc_server: Any = None  # a grpc.aio.Server while it runs

    async def start(self) -> None:
        """Raises: KilnError: a model cannot be served, or the gRPC port cannot be bound."""
        await self.core.start()
        grpc_port = self.core.settings.grpc_port
        if grpc_port:
            from kiln.serve.grpc_adapter import start_grpc_server  # grpc loads only if asked

            self.grpc_server = await start_grpc_server(self.core, self.host, grpc_port)
        _freeze_heap()
        self.on_ready()

    async def stop(self) -> None:
        self.on_draining()
        if self.grpc_server is not None:
            from kiln.serve.grpc_adapter import GRACE_S

            await self.grpc_server.stop(GRACE_S)  # new RPCs refused, those in flight answered
        await self.core.stop()


def _freeze_heap() -> None:
    """Exempt what the server holds from start to end (the runtime, the model, every import) from
    garbage collection. A full collection walks every object in the process: about 65 ms here for
    the 180,000 a loaded model brings, during which the event loop answers nobody; under load that
    was the worst wait a request saw. Requests' own objects are collected as usual."""
    gc.collect()
    gc.freeze()


def _serve(app: ASGIApp, sock: socket.socket, settings: ServeSettings,
           early: EarlyAnswer | None = None) -> None:
    import uvicorn

    timeouts = ReadTimeouts(settings.header_timeout_s, settings.body_timeout_s,
                            settings.read_timeout_s)
    # uvicorn answers 503 once the open connections (or running requests) reach its limit,
    # counting the connection asking: +1 so that max_connections connections are served. (Its
    # keep-alive is typed int but only ever given to loop.call_later.)
    config = uvicorn.Config(app, http=http_protocol(timeouts, early),
                            timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
                            limit_concurrency=settings.max_connections + 1, **UVICORN)
    server = uvicorn.Server(config)

    # uvicorn drains on SIGTERM, then raises it again so that its default action ends the process
    # (exit 143). The drain is the clean stop: kiln takes the raised SIGTERM as done and exits 0.
    # (Before uvicorn takes the signal over, or after, it asks the server to stop.)
    def drained(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, drained)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
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
