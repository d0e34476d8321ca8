"""kiln serve fills the machine's cores by default: one single-threaded model instance per core."""

from __future__ import annotations

from kiln.serve.settings import compute_layout


def test_by_default_each_core_gets_one_single_threaded_instance() -> None:
    assert compute_layout(None, None, workers=1, cores=8)[:2] == (8, 1)
    assert compute_layout(None, None, workers=2, cores=8)[:2] == (4, 1)
    assert compute_layout(None, None, workers=4, cores=2)[:2] == (1, 1)  # never below one


def test_a_given_thread_count_sets_how_many_instances_fit() -> None:
    assert compute_layout(None, 2, workers=1, cores=8)[:2] == (4, 2)
    assert compute_layout(None, 16, workers=1, cores=8)[:2] == (1, 16)


def test_a_given_instance_count_shares_the_cores_out_as_threads() -> None:
    assert compute_layout(2, None, workers=1, cores=8)[:2] == (2, 4)
    assert compute_layout(3, 5, workers=2, cores=8) == (3, 5, "as asked")


def test_the_layout_says_why() -> None:
    assert "one single-threaded instance per core: 8 cores, 2 workers" in compute_layout(
        None, None, workers=2, cores=8)[2]
