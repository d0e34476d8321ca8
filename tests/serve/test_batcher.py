"""The batching policy as a pure function of the waiting requests and the clock."""

import asyncio

import numpy as np
import pytest

from kiln.serve.batcher import Batcher, Pending, QueueFull, take_batch


def pending(rows: int, length: int, enqueued: float) -> Pending:
    loop = asyncio.new_event_loop()
    p = Pending([[1] * length for _ in range(rows)], enqueued, loop.create_future())
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

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(ids.shape)
        if (ids == 666).any():
            raise RuntimeError("bad batch")
        return np.zeros((len(ids), 2), dtype=np.float32)

    async def scenario() -> None:
        batcher = Batcher(run, max_batch_size=4, max_delay_ms=1, max_queue_size=6)
        batcher.start()
        with pytest.raises(RuntimeError, match="bad batch"):
            await batcher.submit([[666]])
        ok = await asyncio.gather(*(batcher.submit([[1, 2, 3]]) for _ in range(4)))
        assert all(r.shape == (1, 2) for r in ok)
        assert any(shape[0] > 1 for shape in calls), "requests were not batched together"
        with pytest.raises(QueueFull):
            await batcher.submit([[1]] * 7)
        await batcher.stop()

    asyncio.run(scenario())
