"""kiln serve past its capacity: every request gets an answer, 200 or 503, none is dropped."""

import os
from pathlib import Path

import pytest

from kiln.bench.load import LoadSettings, run_load
from tests.serve.test_server import TEXTS, start_server


@pytest.mark.slow
def test_four_times_the_capacity_gets_only_200_or_503(exported_run: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, url = start_server(exported_run, env, "--workers", "2", "--max-queue-size", "64")
    try:
        capacity = run_load(url, TEXTS, LoadSettings(model="clf", concurrency=16, duration_s=2))
        assert capacity["ok"] > 0 and capacity["errors"] == {}
        flood = run_load(url, TEXTS, LoadSettings(
            model="clf", rate=4 * capacity["requests_per_s"], concurrency=1024, duration_s=3,
            timeout_s=30))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    statuses = {"200": flood["ok"], **flood["errors"]}
    # no reset, refused or timed-out connection and no other status: answered or told to retry
    assert set(statuses) <= {"200", "503"}, statuses
    assert flood["ok"] > 0
