"""A load generator for a running Open Inference Protocol server (`kiln bench --url`).

Closed loop: ``concurrency`` clients each send a request as soon as the previous one is answered.
Open loop: requests start at a fixed mean rate with Poisson (exponential) gaps, whatever the
server's speed, which is how bursty real traffic arrives.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlparse

import httptools
import numpy as np


@dataclass(frozen=True)
class LoadSettings:
    model: str
    concurrency: int = 32
    rate: float | None = None  # requests/s, Poisson arrivals; None = closed loop
    duration_s: float = 10.0
    texts_per_request: int = 1
    timeout_s: float = 30.0
    seed: int = 0
    # also report latencies by status without the requests sent in the first warmup_s seconds
    # (while queues fill and connections open): latency_ms_by_status_after_warmup
    warmup_s: float = 0.0
    # the text input's shape: [n] or, with text_column, [n, 1] (what a Triton model with
    # max_batch_size > 0 and dims [1] takes; kiln serve takes both)
    text_column: bool = False


def run_load(url: str, texts: Sequence[str], settings: LoadSettings) -> dict[str, Any]:
    """Drive the server at ``url`` with ``texts`` and report throughput, latency and errors.

    The clients are asyncio tasks on one event loop (uvloop when installed), each with its own
    keep-alive connection and pre-built requests, so the generator costs little CPU per request
    and leaves the machine to the server it measures.
    """
    if not texts:
        raise ValueError("no texts to send")
    parsed = urlparse(url if "://" in url else f"http://{url}")
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    path = f"/v2/models/{settings.model}/infer"
    rng = random.Random(settings.seed)
    requests = [_request_bytes(host, port, path, [rng.choice(texts)
                                                  for _ in range(settings.texts_per_request)],
                               settings.text_column)
                for _ in range(256)]
    run = _drive(host, port, requests, settings, rng)
    # No garbage collection while measuring: a full collection stops the generator's event loop
    # for tens of milliseconds, which it would report as the server's latency. (It makes next to
    # no cycles: what it allocates is freed by reference counting.)
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        try:
            import uvloop

            latencies, sent_at, statuses, elapsed = uvloop.run(run)
        except ImportError:
            latencies, sent_at, statuses, elapsed = asyncio.run(run)
    finally:
        if collecting:
            gc.enable()
    ms = 1e3 * np.asarray(latencies.get("200", [])) if latencies.get("200") else np.zeros(1)
    ok = statuses.get("200", 0)
    return {
        "url": url, "model": settings.model, "mode": "closed" if settings.rate is None else "poisson",
        "concurrency": settings.concurrency, "rate": settings.rate, "seconds": elapsed,
        "requests": sum(statuses.values()), "ok": ok,
        "errors": {k: v for k, v in statuses.items() if k != "200"},
        "requests_per_s": ok / elapsed, "texts_per_s": ok * settings.texts_per_request / elapsed,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                       "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())},
        # how fast the other answers came (503s under overload should come at once)
        "latency_ms_by_status": {status: _percentiles(times) for status, times in latencies.items()
                                 if status != "200"},
        **({"latency_ms_by_status_after_warmup": {
            status: _percentiles([t for t, at in zip(times, sent_at[status])
                                  if at >= settings.warmup_s])
            for status, times in latencies.items()}} if settings.warmup_s > 0 else {}),
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = 1e3 * np.asarray(seconds)
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max())}


async def _drive(
    host: str, port: int, requests: list[bytes], settings: LoadSettings, rng: random.Random
) -> tuple[dict[str, list[float]], dict[str, list[float]], Counter[str], float]:
    latencies: dict[str, list[float]] = {}  # seconds, by status
    sent_at: dict[str, list[float]] = {}  # when each was sent, seconds from the start
    statuses: Counter[str] = Counter()
    idle: list[_Connection] = []  # open keep-alive connections not in use

    async def send(i: int) -> None:
        conn = idle.pop() if idle else None
        start = time.perf_counter()
        status, conn = await _exchange(conn, host, port, requests[i % len(requests)],
                                       settings.timeout_s)
        elapsed = time.perf_counter() - start
        statuses[status] += 1
        latencies.setdefault(status, []).append(elapsed)
        sent_at.setdefault(status, []).append(start - began)
        if conn is not None and conn.reusable:
            idle.append(conn)
        elif conn is not None:
            conn.close()

    start = began = time.perf_counter()
    deadline = start + settings.duration_s
    if settings.rate is None:
        async def client(worker: int) -> None:
            i = worker
            while time.perf_counter() < deadline:
                await send(i)
                i += settings.concurrency

        await asyncio.gather(*(client(w) for w in range(settings.concurrency)))
    else:
        slots = asyncio.Semaphore(settings.concurrency)  # at most this many in flight

        async def one(i: int) -> None:
            async with slots:
                await send(i)

        tasks: set[asyncio.Task[None]] = set()  # the unfinished ones only
        i, next_at = 0, start
        while next_at < deadline:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            next_at += rng.expovariate(settings.rate)
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for conn in idle:
        conn.close()
    return latencies, sent_at, statuses, elapsed


async def _exchange(conn: _Connection | None, host: str, port: int, request: bytes,
                    timeout_s: float) -> tuple[str, _Connection | None]:
    """Send ``request`` on ``conn`` (a kept-alive one, or None for a new one): the status (or the
    error's name) and the connection, if still usable.

    A kept-alive connection that the server closed (its idle timeout) just as the request went
    out has answered nothing: the request is sent again on a new connection, as HTTP clients do,
    instead of being counted as a failure of the server.
    """
    for reused in (conn is not None, False):
        try:
            if conn is None:
                _, conn = await asyncio.wait_for(
                    asyncio.get_running_loop().create_connection(_Connection, host, port),
                    timeout_s)
            assert conn is not None
            return str(await conn.send(request, timeout_s)), conn
        except (OSError, asyncio.TimeoutError, httptools.HttpParserError) as exc:
            stale = (reused and isinstance(exc, ConnectionResetError) and conn is not None
                     and not conn.answered_any)
            if conn is not None:
                conn.close()
            conn = None
            if not stale:
                return type(exc).__name__, None
    raise AssertionError("unreachable: the second try is never on a reused connection")


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection: sends a pre-built request, reads one response.

    A bare asyncio protocol with httptools' C parser: a few microseconds per request, so the
    generator leaves the CPU to the server it measures (streams and wait_for cost several times
    more, which on a small machine shows up as lower server throughput).
    """

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[int] | None = None
        self.reusable = True
        self.answered_any = False  # bytes of a response to the request in flight arrived

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.answered_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_message_complete(self) -> None:  # httptools' callback: one whole response is in
        self.reusable = self.parser.should_keep_alive()
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._fail(ConnectionResetError("server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)

    async def send(self, request: bytes, timeout_s: float) -> int:
        """The response's status code (the body is read and dropped).

        Raises:
            asyncio.TimeoutError: no whole response within ``timeout_s``.
            OSError: the connection broke.
        """
        self.answered_any = False
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection is closed")
        loop = asyncio.get_running_loop()
        self.answer = answer = loop.create_future()
        expiry = loop.call_later(timeout_s, self._fail, asyncio.TimeoutError())
        self.transport.write(request)
        try:
            return await answer
        finally:
            expiry.cancel()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _request_bytes(host: str, port: int, path: str, texts: list[str],
                   column: bool = False) -> bytes:
    body = _body(texts, column)
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _body(texts: list[str], column: bool = False) -> bytes:
    shape = [len(texts), 1] if column else [len(texts)]
    return json.dumps({"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES",
                                   "data": texts}], "outputs": [{"name": "label"}]}).encode()


def format_load_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    mode = (f"closed loop, {r['concurrency']} clients" if r["mode"] == "closed"
            else f"Poisson arrivals at {r['rate']:g}/s")
    return (f"{r['url']} model {r['model']}: {mode}, {r['seconds']:.1f} s\n"
            f"  {r['requests_per_s']:.1f} requests/s ({r['texts_per_s']:.1f} texts/s), "
            f"{r['ok']} ok of {r['requests']}, errors {r['errors'] or 'none'}\n"
            f"  latency p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  p99 {lat['p99']:.1f} ms")
