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
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

Row = Any  # whatever ``run`` takes: a text, or a list of token ids


def compute_pool(threads: int, nice: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads run ``nice`` steps below the event loop's priority (on Linux;
    elsewhere at its priority), and so do the threads a runtime starts from them.

    The event loop takes requests in and answers them; these threads compute. Under overload the
    loop must win the CPU: it refuses what the queue cannot take in a few milliseconds, where at
    equal priority it waits its turn behind the model and every refusal takes as long as a batch.
    With the CPU to spare, the niced threads get all of it, so throughput is unchanged.
    """
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name,
                              initializer=lower_priority, initargs=(nice,))


def lower_priority(nice: int) -> None:
    """Lower the calling thread's scheduling priority by ``nice`` steps (Linux: nice is per
    thread, and threads started later from this one inherit it; elsewhere: nothing)."""
    if nice > 0 and sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


class QueueFull(Exception):
    """The queue cannot take the request now: the caller should answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # when trying again has a fair chance


class TooManyRows(Exception):
    """The request has more rows than the queue can ever hold: retrying cannot help."""


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
        instances: int = 1, nice: int = 0,
        on_batch: Callable[[int, list[float], float, list[Any]], None] | None = None,
    ) -> None:
        self.run = run
        self.length = length
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        # (rows, seconds each request waited in the queue, compute seconds, what each run of
        # ``run`` returned: one, or several when a failing batch was split), once per batch
        self.on_batch = on_batch
        self.waiting: list[Pending] = []
        self.queued_rows = 0
        self._instances = instances
        self._free = instances  # model instances not running a batch
        self._running_rows = 0
        self.seconds_per_row = 0.0  # compute time per row, a moving average over batches
        self._running: set[asyncio.Future[Any]] = set()
        self._due: asyncio.TimerHandle | None = None  # wakes the batcher when the oldest is due
        self._pool = compute_pool(instances, nice, "kiln-infer")

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
            TooManyRows: more rows than max_queue_size.
            QueueFull: the queue is full, or the rows ahead would take longer than ``timeout_s``.
            asyncio.TimeoutError: no result within ``timeout_s`` (the request leaves the queue).
        """
        self._admit(len(rows), timeout_s)
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

    def _admit(self, rows: int, timeout_s: float | None) -> None:
        """Refuse at once what cannot be answered in time, rather than after a wait.

        Raises:
            TooManyRows, QueueFull: see `submit`.
        """
        if rows > self.max_queue_size:
            raise TooManyRows(f"{rows} rows in one request; the queue holds at most "
                           f"{self.max_queue_size} (--max-queue-size): send fewer per request")
        if self.queued_rows + rows > self.max_queue_size:
            raise QueueFull(f"queue full ({self.queued_rows} rows waiting)",
                            self.estimated_wait_s(rows))
        wait = self.estimated_wait_s(rows)
        if timeout_s is not None and wait > timeout_s:
            raise QueueFull(f"{self.queued_rows} rows waiting would take about {wait:.1f} s, "
                            f"longer than the request's timeout of {timeout_s:g} s", wait)

    @property
    def full(self) -> bool:
        """No request can join the queue now (not even one row)."""
        return self.queued_rows >= self.max_queue_size

    def estimated_wait_s(self, rows: int = 0) -> float:
        """How long ``rows`` more would wait for their results, from the measured time per row
        (0 before any batch has run)."""
        ahead = self.queued_rows + self._running_rows + rows
        return ahead * self.seconds_per_row / self._instances

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
        rows = sum(len(p.rows) for p in batch)
        self._running_rows += rows
        outputs: list[Any] = []  # what each run of ``run`` returned (several if split)

        def run(rows: list[Row]) -> Sequence[Any]:
            outputs.append(self.run(rows))
            return outputs[-1]

        running = asyncio.get_running_loop().run_in_executor(
            self._pool, run_isolated, run, [p.rows for p in batch])
        self._running.add(running)

        def finished(done: asyncio.Future[list[Sequence[Any] | Exception]]) -> None:
            self._running.discard(done)
            self._free += 1
            self._running_rows -= rows
            compute = time.monotonic() - started
            results = done.result()
            for p, result in zip(batch, results):
                if p.future.done():  # the client timed out
                    continue
                if isinstance(result, Exception):  # a failing request fails alone
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
            if not any(isinstance(r, Exception) for r in results):
                per_row = compute / max(rows, 1)
                self.seconds_per_row = per_row if not self.seconds_per_row else (
                    0.8 * self.seconds_per_row + 0.2 * per_row)
            if self.on_batch is not None:
                self.on_batch(rows, [started - p.enqueued for p in batch], compute, outputs)
            self._dispatch()

        running.add_done_callback(finished)


def run_isolated(run: Callable[[list[Row]], Sequence[Any]],
                 requests: list[list[Row]]) -> list[Sequence[Any] | Exception]:
    """``run`` over the rows of several requests as one batch, split into each request's result
    rows. When the batch fails, its halves are run again, down to single requests, so the
    requests that make it fail get their exception and every other one its result."""
    try:
        result = run([row for rows in requests for row in rows])
        if len(result) != sum(len(rows) for rows in requests):
            raise RuntimeError(f"the model returned {len(result)} results for "
                               f"{sum(len(rows) for rows in requests)} rows")
    except Exception as exc:  # noqa: BLE001 - whatever the model raised belongs to some request
        if len(requests) == 1:
            return [exc]
        half = len(requests) // 2
        return run_isolated(run, requests[:half]) + run_isolated(run, requests[half:])
    out: list[Sequence[Any] | Exception] = []
    offset = 0
    for rows in requests:
        out.append(result[offset:offset + len(rows)])
        offset += len(rows)
    return out
