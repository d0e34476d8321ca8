"""Dynamic batching: requests wait in a bounded queue and are grouped by similar length.

`take_batch` is a pure function of the waiting requests and the clock, so the batching policy is
unit-tested without a server; `Batcher` runs it in an asyncio task and executes each batch in a
thread pool so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from kiln.runtime.predictor import pad_batch


class QueueFull(Exception):
    """The queue is at its limit: the caller should answer 503 with Retry-After."""


@dataclass
class Pending:
    """One request's rows waiting for a batch."""

    rows: list[list[int]]  # token ids per text, unpadded
    enqueued: float
    future: asyncio.Future[np.ndarray]
    length: int = field(init=False)

    def __post_init__(self) -> None:
        self.length = max((len(r) for r in self.rows), default=1)


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
    """Collects requests into batches for ``run`` (ids, mask -> logits), ``instances`` at a time."""

    def __init__(
        self, run: Callable[[np.ndarray, np.ndarray], np.ndarray], *, max_batch_size: int = 32,
        max_delay_ms: float = 2.0, max_queue_size: int = 256, instances: int = 1,
        pad_id: int = 0, on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.pad_id = pad_id
        self.on_batch = on_batch  # (batch size, queue seconds of the oldest, compute seconds)
        self.waiting: list[Pending] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(instances)
        self._pool = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="kiln-infer")
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_rows(self) -> int:
        return sum(len(p.rows) for p in self.waiting)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=True)

    async def submit(self, rows: list[list[int]]) -> np.ndarray:
        """Queue ``rows`` and wait for their logits.

        Raises:
            QueueFull: the queue already holds max_queue_size rows.
        """
        if self.queued_rows + len(rows) > self.max_queue_size:
            raise QueueFull(f"queue full ({self.queued_rows} rows waiting)")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.waiting.append(Pending(rows, time.monotonic(), future))
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
            chosen = take_batch(self.waiting, time.monotonic(), self.max_batch_size,
                                self.max_delay_s)
            if chosen is None:
                oldest = min(p.enqueued for p in self.waiting)
                self._wake.clear()
                timeout = max(0.0, oldest + self.max_delay_s - time.monotonic())
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = [self.waiting[i] for i in chosen]
            for i in sorted(chosen, reverse=True):
                del self.waiting[i]
            await self._slots.acquire()
            asyncio.get_running_loop().create_task(self._execute(batch))

    async def _execute(self, batch: list[Pending]) -> None:
        started = time.monotonic()
        try:
            ids, mask = pad_batch([r for p in batch for r in p.rows], self.pad_id)
            logits = await asyncio.get_running_loop().run_in_executor(self._pool, self.run, ids, mask)
        except Exception as exc:  # a failing batch fails only its own requests
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        else:
            offset = 0
            for p in batch:
                if not p.future.done():  # the client may have timed out
                    p.future.set_result(logits[offset:offset + len(p.rows)])
                offset += len(p.rows)
            if self.on_batch is not None:
                self.on_batch(len(ids), started - min(p.enqueued for p in batch),
                              time.monotonic() - started)
        finally:
            self._slots.release()
