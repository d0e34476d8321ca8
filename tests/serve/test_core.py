"""The inference core in process, without HTTP: readiness, metadata, inference, errors, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kiln.serve import InferenceCore, ServeSettings, discover_models
from kiln.serve.errors import (
    NotFound,
    Overloaded,
    ServeError,
    TimedOut,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from kiln.serve.protocol import OUTPUTS, InferRequest

T = TypeVar("T")
LABELS = {"account", "billing", "shipping", "technical"}


def texts(*rows: str, timeout_s: float | None = None) -> InferRequest:
    return InferRequest(id=None, texts=list(rows), input_ids=None, outputs=list(OUTPUTS),
                        binary_outputs=set(), timeout_s=timeout_s)


class Running:
    """A core started on its own event loop, for tests to call into one coroutine at a time."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self.loop = asyncio.new_event_loop()

    def __call__(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self(self.core.stop())
        self(self.loop.shutdown_default_executor())
        self.loop.close()


def requests(core: InferenceCore, outcome: str, version: str = "1") -> float:
    value = core.metrics.registry.get_sample_value(
        "kiln_requests_total", {"model": "clf", "version": version, "outcome": outcome})
    return value or 0.0


@pytest.fixture(scope="module")
def running(exported_run: Path) -> Iterator[Running]:
    core = InferenceCore(discover_models(exported_run, "clf"),
                         ServeSettings(threads=1, api_key="s3cret"))
    run = Running(core)
    run(core.start())
    yield run
    run.close()


def test_ready_only_between_start_and_stop(exported_run: Path) -> None:
    core = InferenceCore(discover_models(exported_run, "clf"), ServeSettings(threads=1))
    assert core.live and not core.ready and not core.model_ready("clf")
    with pytest.raises(Unavailable, match="model is loading") as loading:
        asyncio.run(core.infer("clf", texts("hello")))
    assert loading.value.status == 503
    assert requests(core, "unavailable") == 1  # under the served version it would go to

    async def lifetime() -> None:
        await core.start()
        assert core.ready and core.model_ready("clf")
        await core.stop()

    asyncio.run(lifetime())
    assert not core.ready
    with pytest.raises(Unavailable):
        core.model("clf")


def test_metadata_describes_the_server_and_the_model(running: Running) -> None:
    core = running.core
    assert core.server_metadata()["name"] == "kiln"
    assert "binary_tensor_data" in core.server_metadata()["extensions"]
    meta = core.model_metadata("clf")
    assert meta["name"] == "clf" and meta["versions"] == ["1"]
    assert set(meta["parameters"]["labels"]) == LABELS
    assert {i["name"] for i in meta["inputs"]} == {"text", "input_ids", "attention_mask"}


def test_inference_gives_a_label_and_probabilities_per_text(running: Running) -> None:
    core = running.core
    before = requests(core, "success")
    result = running(core.infer("clf", texts("where is my parcel", "reset my password"),
                                authorization="Bearer s3cret"))
    assert (result.model, result.version) == ("clf", "1")
    assert len(result.labels) == 2 and set(result.labels) <= LABELS
    assert all(abs(sum(p) - 1.0) < 1e-5 for p in result.probabilities)
    assert [len(row) for row in result.logits] == [4, 4]
    assert requests(core, "success") == before + 1


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [("nope", None, "unknown model 'nope'; serving ['clf']"),
     ("clf", "7", "model 'clf' has no version '7'; versions: ['1']")],
)
def test_an_unknown_model_or_version_is_not_found(running: Running, name: str,
                                                 version: str | None, message: str) -> None:
    with pytest.raises(NotFound) as missing:
        running(running.core.infer(name, texts("hello"), version, "Bearer s3cret"))
    assert missing.value.status == 404 and str(missing.value) == message
    with pytest.raises(NotFound):
        running.core.model_metadata(name, version)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "s3cret"])
def test_a_missing_or_wrong_api_key_is_unauthorized(running: Running,
                                                    authorization: str | None) -> None:
    before = requests(running.core, "bad_request")
    with pytest.raises(Unauthorized, match="missing or wrong API key") as refused:
        running(running.core.infer("clf", texts("hello"), authorization=authorization))
    assert refused.value.status == 401
    assert requests(running.core, "bad_request") == before + 1  # the version it would have got


def test_requests_for_models_not_served_add_no_metric_series(running: Running) -> None:
    def series() -> int:
        return sum(len(family.samples) for family in running.core.metrics.registry.collect())

    for name in ("x1", "x2", "clf"):  # an unknown name, or a known one with an unknown version
        with pytest.raises(ServeError):
            running(running.core.infer(name, texts("hello"), "9" if name == "clf" else None))
    before = series()
    for i in range(50):
        with pytest.raises(ServeError):
            running(running.core.infer(f"random-{i}", texts("hello"), str(i)))
    assert series() == before
    value = running.core.metrics.registry.get_sample_value(
        "kiln_requests_total", {"model": "", "version": "", "outcome": "bad_request"})
    assert value is not None and value >= 53


def test_a_full_queue_rejects_and_a_late_answer_times_out(exported_run: Path) -> None:
    # batches wait up to 10 s to fill, so requests stay queued while the test looks at them
    settings = ServeSettings(threads=1, max_queue_size=2, max_queue_delay_ms=10_000,
                             max_batch_size=64)
    run = Running(InferenceCore(discover_models(exported_run, "clf"), settings))
    core = run.core
    try:
        run(core.start())
        with pytest.raises(TooLarge, match="at most 2") as never:  # no retry can help
            run(core.infer("clf", texts("a", "b", "c")))
        assert never.value.status == 413
        with pytest.raises(TimedOut) as late:
            run(core.infer("clf", texts("hello", timeout_s=0.05)))
        assert late.value.status == 504

        async def queue_full() -> None:
            waiting = asyncio.ensure_future(core.infer("clf", texts("a", "b")))  # fills the queue
            await asyncio.sleep(0.05)
            try:
                with pytest.raises(Overloaded) as full:
                    await core.infer("clf", texts("c"))
                assert full.value.status == 503 and full.value.headers == {"retry-after": "1"}
                # judged from the headers alone, before a transport reads the body: refused too
                early = core.refusal("clf", None, None)
                assert isinstance(early, Overloaded) and early.headers == {"retry-after": "1"}
                # what the usual path answers otherwise (404 here) is not judged early
                assert core.refusal("no-such-model", None, None) is None
            finally:
                waiting.cancel()

        assert core.refusal("clf", None, None) is None  # room in the queue: taken
        run(queue_full())
        assert (requests(core, "rejected"), requests(core, "timeout")) == (2, 1)
        gauge = core.metrics.registry.get_sample_value("kiln_inflight_requests", {"model": "clf"})
        assert gauge == 0
    finally:
        run.close()
    with pytest.raises(ServeError) as stopped:
        asyncio.run(core.infer("clf", texts("hello")))
    assert stopped.value.status == 503
