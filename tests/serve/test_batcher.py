"""The batching policy as a pure function of the waiting requests and the clock."""

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kiln.serve.batcher import (
    Batcher,
    Pending,
    QueueFull,
    TooManyRows,
    compute_pool,
    run_isolated,
    take_batch,
)


def pending(rows: int, length: int, enqueued: float) -> Pending:
    loop = asyncio.new_event_loop()
    p = Pending([[1] * length for _ in range(rows)], enqueued, loop.create_future(), length)
    loop.close()
    return p


def test_waits_until_full_or_the_oldest_request_is_due() -> None:
    waiting = [pending(1, 10, enqueued=0.0), pending(2, 10, enqueued=0.001)]
    assert take_batch(waiting, now=0.001, max_batch_size=8, max_delay_s=0.002) is None
    assert take_batch(waiting, now=0.0025, max_batch_size=8, max_delay_s=0.002) == [0, 1]
    full = waiting + [pending(5, 10, enqueued=0.0015)]
    assert sorted(take_batch(full, now=0.0015, max_batch_size=8, max_delay_s=0.002) or []) == [0, 1, 2]


def test_fills_with_similar_lengths_and_never_exceeds_the_limit() -> None:
    waiting = [pending(1, 20, 0.0), pending(2, 100, 0.001), pending(2, 22, 0.002), pending(2, 18, 0.003)]
    chosen = take_batch(waiting, now=1.0, max_batch_size=5, max_delay_s=0.002)
    assert chosen == [0, 2, 3]  # the oldest first, then the closest lengths; 100 waits
    assert sum(len(waiting[i].rows) for i in chosen) <= 5


def test_failing_batch_fails_only_its_requests_and_full_queue_is_refused() -> None:
    calls = []

    def run(rows: list[list[int]]) -> np.ndarray:
        calls.append(len(rows))
        if any(666 in r for r in rows):
            raise RuntimeError("bad batch")
        return np.zeros((len(rows), 2), dtype=np.float32)

    async def scenario() -> None:
        batcher = Batcher(run, max_batch_size=4, max_delay_ms=1, max_queue_size=6)
        with pytest.raises(RuntimeError, match="bad batch"):
            await batcher.submit([[666]])
        ok = await asyncio.gather(*(batcher.submit([[1, 2, 3]]) for _ in range(4)))
        assert all(r.shape == (1, 2) for r in ok)
        assert any(n > 1 for n in calls), "requests were not batched together"
        with pytest.raises(TooManyRows, match="at most 6"):  # could never fit: not a retry-later
            await batcher.submit([[1]] * 7)
        await batcher.stop()

    asyncio.run(scenario())


def test_a_request_that_times_out_leaves_the_queue_and_is_never_computed() -> None:
    computed: list[list[int]] = []

    def run(rows: list[list[int]]) -> list[int]:
        computed.extend(rows)
        return [0] * len(rows)

    async def scenario() -> None:
        # a batch of 4 is due only after 200 ms; the request gives up after 20 ms
        batcher = Batcher(run, max_batch_size=4, max_delay_ms=200, max_queue_size=8)
        with pytest.raises(asyncio.TimeoutError):
            await batcher.submit([[7, 7]], timeout_s=0.02)
        assert batcher.queued_rows == 0 and batcher.waiting == []
        assert await batcher.submit([[1]] * 4, timeout_s=5) == [0, 0, 0, 0]  # full: runs at once
        await batcher.stop()

    asyncio.run(scenario())
    assert [7, 7] not in computed


def test_a_failing_request_fails_alone_and_its_batch_mates_get_their_results() -> None:
    def run(rows: list[list[int]]) -> list[int]:
        if any(666 in r for r in rows):
            raise ValueError("token 666")
        return [sum(r) for r in rows]

    requests = [[[1]], [[2, 2]], [[666]], [[3], [4]], [[5]]]
    results = run_isolated(run, requests)
    assert isinstance(results[2], ValueError)
    assert [results[i] for i in (0, 1, 3, 4)] == [[1], [4], [3, 4], [5]]


def test_a_full_queue_is_refused_with_a_retry_after_from_the_measured_rate() -> None:
    release = threading.Event()

    def run(rows: list[list[int]]) -> list[int]:
        release.wait(5)
        return [0] * len(rows)

    async def scenario() -> None:
        batcher = Batcher(run, max_batch_size=2, max_delay_ms=0, max_queue_size=4)
        batcher.seconds_per_row = 0.5  # as if measured
        first = asyncio.ensure_future(batcher.submit([[1], [1]]))  # runs, blocked
        await asyncio.sleep(0.01)
        # room in the queue, but the 2 rows running and this one take 1.5 s, over its timeout
        with pytest.raises(QueueFull, match="longer than the request's timeout") as late:
            await batcher.submit([[1]], timeout_s=1.0)
        assert late.value.retry_after_s == pytest.approx(1.5)
        queued = asyncio.ensure_future(batcher.submit([[1]] * 4))  # waits: the queue is full
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue full") as full:
            await batcher.submit([[1]])
        assert full.value.retry_after_s == pytest.approx((2 + 4 + 1) * 0.5)
        release.set()
        await asyncio.gather(first, queued)
        await batcher.stop()

    asyncio.run(scenario())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_compute_threads_and_the_threads_they_start_run_below_the_event_loop() -> None:
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def nice_here_and_in_a_thread_started_here() -> tuple[int, int]:
        with ThreadPoolExecutor(1) as runtime_pool:  # as a runtime starts its own threads
            return nice(), runtime_pool.submit(nice).result()

    with compute_pool(1, 5, "test") as pool:
        here, started = pool.submit(nice_here_and_in_a_thread_started_here).result()
    assert here == started == min(19, nice() + 5)
