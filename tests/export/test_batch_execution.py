"""How kiln runs a batch: mixed lengths as groups of similar lengths (fewer padding tokens, the
same logits), and backends that several threads run at once."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from kiln.runtime import load_predictor, pad_batch
from kiln.runtime.predictor import length_groups


def test_groups_cover_every_row_once_and_never_split_a_length() -> None:
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 64))]
        groups = length_groups(lengths, call_cost=rng.choice([0, 8, 64, 1000]))
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        spans = [(min(lengths[i] for i in g), max(lengths[i] for i in g)) for g in groups]
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), spans  # ordered, disjoint


def test_without_a_cost_per_group_each_distinct_length_runs_alone() -> None:
    groups = length_groups([5, 3, 5, 9, 3, 3, 12])
    assert groups == [[1, 4, 5], [0, 2], [3], [6]]


def test_a_cost_per_group_merges_lengths_when_padding_is_cheaper() -> None:
    assert length_groups([10, 11], call_cost=0) == [[0], [1]]
    assert length_groups([10, 11], call_cost=100) == [[0, 1]]  # 2 padded tokens < 100
    assert length_groups([2, 60], call_cost=10) == [[0], [1]]  # 58 padded tokens > 10


def test_groups_follow_the_shapes_the_backend_pads_to() -> None:
    def sixteens(rows: int, length: int) -> tuple[int, int]:  # lengths as OpenVINO pads them
        return rows, -(-length // 16) * 16

    # 3..14 tokens all cost 16 there: one group; run as they are, each length alone
    assert length_groups([3, 5, 14, 20], sixteens, call_cost=1) == [[0, 1, 2], [3]]
    assert length_groups([3, 5, 14, 20], call_cost=1) == [[0], [1], [2], [3]]


def test_grouped_logits_equal_one_padded_batch_in_the_rows_order(exported_run: Path) -> None:
    predictor = load_predictor(exported_run, "onnx-fp32", threads=1)
    rng = random.Random(1)
    ids = [[rng.randint(1, predictor.vocabulary - 1) for _ in range(rng.randint(1, 30))]
           for _ in range(24)]
    grouped = predictor.logits_by_length(ids)
    padded = predictor.logits(*pad_batch(ids, predictor.pad_id))
    assert len(length_groups([len(r) for r in ids])) > 1
    np.testing.assert_allclose(grouped, padded, atol=1e-5)


def test_the_openvino_backend_runs_several_threads_at_once(exported_run: Path) -> None:
    pytest.importorskip("openvino")
    predictor = load_predictor(exported_run, "openvino-fp32", threads=1)
    rng = random.Random(2)
    batches = [[[rng.randint(1, predictor.vocabulary - 1) for _ in range(rng.randint(1, 40))]
                for _ in range(rng.randint(1, 9))] for _ in range(12)]
    expected = [predictor.logits(*pad_batch(b, predictor.pad_id)) for b in batches]
    got: dict[int, list[np.ndarray]] = {}

    def work(worker: int) -> None:  # each thread runs every batch, in its own order
        order = list(range(len(batches)))
        random.Random(worker).shuffle(order)
        got[worker] = [np.empty(0)] * len(batches)
        for i in order:
            got[worker][i] = predictor.logits(*pad_batch(batches[i], predictor.pad_id))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for worker in range(4):
        for want, have in zip(expected, got[worker]):
            np.testing.assert_allclose(have, want, atol=1e-5)


def test_openvino_gets_a_stream_per_concurrent_caller_and_no_pinned_cores(
        exported_run: Path) -> None:
    pytest.importorskip("openvino")
    compiled = load_predictor(exported_run, "openvino-fp32", threads=1,
                              concurrency=2).backend.compiled  # type: ignore[attr-defined]
    assert compiled.get_property("NUM_STREAMS") == 2  # one stream runs one inference at a time
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    # pinned, two processes' threads would start from the same core
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
