"""Dynamic batching: requests wait in a bounded queue and are grouped by similar length.

A request is a list of rows (texts, or token ids); ``run`` turns a batch of rows into one result
row each, in a worker thread: tokenising, padding and the model all run there, once per batch.

`take_batch` is a pure function of the waiting requests and the clock, so the batching policy is
unit-tested without a server. `Batcher` applies it whenever something changes (a request arrives,
the oldest request falls due, a batch finishes) and runs each batch in a thread pool so the event
loop keeps accepting requests. It is driven by callbacks rather than a polling task: a request
costs the event loop one list append and one timer, whatever the load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

Row = Any  # whatever ``run`` takes: a text, or a list of token ids


class QueueFull(Exception):
    """The queue is at its limit: the caller should answer 503 with Retry-After."""


@dataclass(eq=False)
class Pending:
    """One request's rows waiting for a batch."""

    rows: list[Row]
    enqueued: float
    future: asyncio.Future[Sequence[Any]]
    length: int  # of the longest row, in tokens (or an estimate), for grouping


def take_batch(
    waiting: Sequence[Pending], now: float, max_batch_size: int, max_delay_s: float
) -> list[int] | None:
    """Indices (into ``waiting``) of the requests to run now, or None to keep waiting.

    A batch is released when the waiting rows fill ``max_batch_size`` or the oldest request has
    waited ``max_delay_s``. It is filled starting from the oldest request with the requests of
    the closest lengths, so padding stays low and nobody starves.
    """
    if not waiting:
        return None
    rows = sum(len(p.rows) for p in waiting)
    oldest = min(range(len(waiting)), key=lambda i: waiting[i].enqueued)
    if rows < max_batch_size and now - waiting[oldest].enqueued < max_delay_s:
        return None
    chosen, size = [oldest], len(waiting[oldest].rows)
    by_closeness = sorted((i for i in range(len(waiting)) if i != oldest),
                          key=lambda i: (abs(waiting[i].length - waiting[oldest].length),
                                         waiting[i].enqueued))
    for i in by_closeness:
        if size + len(waiting[i].rows) > max_batch_size:
            continue
        chosen.append(i)
        size += len(waiting[i].rows)
    return chosen


class Batcher:
    """Collects requests into batches for ``run`` (rows -> a sequence with one result per row),
    ``instances`` batches at a time; ``length`` sizes a row for grouping similar lengths."""

    def __init__(
        self, run: Callable[[list[Row]], Sequence[Any]], *, length: Callable[[Row], int] = len,
        max_batch_size: int = 32, max_delay_ms: float = 2.0, max_queue_size: int = 256,
        instances: int = 1, on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        self.run = run
        self.length = length
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch  # (batch size, queue seconds of the oldest, compute seconds)
        self.waiting: list[Pending] = []
        self.queued_rows = 0
        self._free = instances  # model instances not running a batch
        self._running: set[asyncio.Future[Sequence[Any]]] = set()
        self._due: asyncio.TimerHandle | None = None  # wakes the batcher when the oldest is due
        self._pool = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="kiln-infer")

    async def stop(self) -> None:
        """Finish the running batches, fail what still waits, release the threads."""
        if self._due is not None:
            self._due.cancel()
        if self._running:
            await asyncio.wait(self._running)
        for p in self.waiting:
            if not p.future.done():
                p.future.set_exception(QueueFull("server is shutting down"))
        self.waiting.clear()
        self._pool.shutdown(wait=True)

    async def submit(self, rows: list[Row], timeout_s: float | None = None) -> Sequence[Any]:
        """Queue ``rows`` and wait for their result rows.

        Raises:
            QueueFull: the queue already holds max_queue_size rows.
            asyncio.TimeoutError: no result within ``timeout_s`` (the request leaves the queue).
        """
        if self.queued_rows + len(rows) > self.max_queue_size:
            raise QueueFull(f"queue full ({self.queued_rows} rows waiting)")
        loop = asyncio.get_running_loop()
        pending = Pending(rows, time.monotonic(), loop.create_future(),
                          max(map(self.length, rows), default=1))
        self.waiting.append(pending)
        self.queued_rows += len(rows)
        self._dispatch()
        expiry = None if timeout_s is None else loop.call_later(timeout_s, self._expire, pending)
        try:
            return await pending.future
        finally:
            if expiry is not None:
                expiry.cancel()

    def _expire(self, pending: Pending) -> None:
        if pending.future.done():
            return
        pending.future.set_exception(asyncio.TimeoutError())
        if pending in self.waiting:  # still queued: free its place, never compute it
            self.waiting.remove(pending)
            self.queued_rows -= len(pending.rows)

    def _dispatch(self) -> None:
        """Start every batch that is ready while an instance is free; otherwise wake up when the
        oldest request falls due."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        while self.waiting and self._free > 0:
            now = time.monotonic()
            chosen = take_batch(self.waiting, now, self.max_batch_size, self.max_delay_s)
            if chosen is None:
                oldest = min(p.enqueued for p in self.waiting)
                self._due = asyncio.get_running_loop().call_later(
                    max(0.0, oldest + self.max_delay_s - now), self._dispatch)
                return
            batch = [self.waiting[i] for i in chosen]
            for i in sorted(chosen, reverse=True):
                del self.waiting[i]
            self.queued_rows -= sum(len(p.rows) for p in batch)
            self._free -= 1
            self._start(batch)

    def _start(self, batch: list[Pending]) -> None:
        started = time.monotonic()
        rows = [r for p in batch for r in p.rows]
        running = asyncio.get_running_loop().run_in_executor(self._pool, self.run, rows)
        self._running.add(running)

        def finished(done: asyncio.Future[Sequence[Any]]) -> None:
            self._running.discard(done)
            self._free += 1
            exc = done.exception()
            if exc is not None:  # a failing batch fails only its own requests
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
            else:
                result, offset = done.result(), 0
                for p in batch:
                    if not p.future.done():  # the client may have timed out
                        p.future.set_result(result[offset:offset + len(p.rows)])
                    offset += len(p.rows)
                if self.on_batch is not None:
                    self.on_batch(len(rows), started - min(p.enqueued for p in batch),
                                  time.monotonic() - started)
            self._dispatch()

        running.add_done_callback(finished)
