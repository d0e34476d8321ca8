"""Triton's nv_inference_* series and statistics extension, from the counts kiln keeps."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kiln.serve import InferenceCore, ServeSettings, discover_models
from kiln.serve.errors import NotFound, Unauthorized
from kiln.serve.protocol import OUTPUTS, InferRequest
from tests.serve.test_server import TEXTS, start_server

COUNTERS = ("request_success", "request_failure", "count", "exec_count", "request_duration_us",
            "queue_duration_us", "compute_input_duration_us", "compute_infer_duration_us",
            "compute_output_duration_us")


def texts(*rows: str) -> InferRequest:
    return InferRequest(id=None, texts=list(rows), input_ids=None, outputs=list(OUTPUTS),
                        binary_outputs=set(), timeout_s=None)


def nv_values(text: str) -> dict[tuple[str, str], float]:
    """(series name without nv_inference_, reason or "") -> value, for model clf version 1."""
    values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("nv_inference_") and s.labels.get("model") == "clf":
                assert s.labels["version"] == "1"
                # (prometheus_client's parser names a counter's samples <name>_total)
                name = s.name[len("nv_inference_"):].removesuffix("_total")
                values[(name, s.labels.get("reason", ""))] = s.value
    return values


@pytest.fixture(scope="module")
def core_after_requests(exported_run: Path) -> Iterator[InferenceCore]:
    """A core that answered two requests (three texts) and refused one with a wrong key."""
    core = InferenceCore(discover_models(exported_run, "clf"),
                         ServeSettings(threads=1, api_key="k"))

    async def traffic() -> None:
        await core.start()
        await core.infer("clf", texts("where is my parcel", "refund please"),
                         authorization="Bearer k")
        await core.infer("clf", texts("the app crashes"), authorization="Bearer k")
        with pytest.raises(Unauthorized):
            await core.infer("clf", texts("x"), authorization="Bearer wrong")

    loop = asyncio.new_event_loop()
    loop.run_until_complete(traffic())
    yield core
    loop.run_until_complete(core.stop())
    loop.close()


def test_nv_inference_series_have_tritons_names_types_and_counts(
        core_after_requests: InferenceCore) -> None:
    text = core_after_requests.metrics_exposition().decode()
    for name in COUNTERS:  # no _total suffix, declared as Triton declares them
        assert f"# TYPE nv_inference_{name} counter\n" in text
        assert f"nv_inference_{name}_total" not in text
    assert "# TYPE nv_inference_pending_request_count gauge\n" in text
    assert 'nv_inference_request_success{model="clf",version="1"} 2\n' in text
    values = nv_values(text)
    assert values[("request_failure", "OTHER")] == 1  # the wrong key
    assert values[("count", "")] == 3  # rows
    assert 1 <= values[("exec_count", "")] <= 2  # the two requests in one batch or two
    for name in ("request_duration_us", "queue_duration_us", "compute_infer_duration_us",
                 "compute_input_duration_us", "compute_output_duration_us"):
        assert values[(name, "")] > 0, name
    # each request is given its batch's compute time: the sum is at least one batch's
    assert values[("request_duration_us", "")] >= values[("compute_infer_duration_us", "")] / 2
    # the series the statistics extension needs but Triton does not export stay off /metrics
    assert "nv_inference_success_duration_us" not in text


def test_statistics_extension_agrees_with_the_metrics(core_after_requests: InferenceCore) -> None:
    core = core_after_requests
    values = nv_values(core.metrics_exposition().decode())
    [stats] = core.statistics("clf")["model_stats"]
    assert (stats["name"], stats["version"]) == ("clf", "1")
    assert stats["inference_count"] == 3 and stats["execution_count"] == values[("exec_count", "")]
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 2 and inference["fail"]["count"] == 1
    assert inference["queue"]["count"] == 2 and inference["compute_infer"]["count"] == 2
    assert inference["compute_infer"]["ns"] == int(values[("compute_infer_duration_us", "")]
                                                   * 1000)
    assert inference["success"]["ns"] > 0 and stats["last_inference"] > 1.6e12  # ms since epoch
    assert core.statistics()["model_stats"] == [stats]  # every model: the one served
    with pytest.raises(NotFound):
        core.statistics("no-such-model")
    with pytest.raises(NotFound):
        core.statistics("clf", "7")


@pytest.mark.slow
def test_two_workers_nv_counts_add_up_to_the_requests_sent(exported_run: Path) -> None:
    from kiln.bench.load import LoadSettings, run_load

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, url = start_server(exported_run, env, "--workers", "2", "--threads", "1")
    try:
        report = run_load(url, TEXTS, LoadSettings(model="clf", concurrency=8, duration_s=1.0))
        assert report["ok"] > 0 and report["errors"] == {}
        with urllib.request.urlopen(f"http://{url}/metrics") as answer:
            values = nv_values(answer.read().decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert values[("request_success", "")] == report["ok"]  # both workers', summed
    assert values[("count", "")] == report["ok"]  # one text per request
    assert 1 <= values[("exec_count", "")] <= report["ok"]
    assert values.get(("pending_request_count", ""), 0) == 0  # nothing waits once answered
