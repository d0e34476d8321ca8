"""Drift monitoring: PSI and bins, the sliding window, and the core's kiln_drift_* series on
in-distribution and shifted traffic."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.data import builtin, prepare_data
from kiln.runtime.drift import (
    EPSILON,
    STATISTICS,
    DriftReference,
    bin_of,
    length_edges,
    psi,
    shares,
    smoothed_shares,
)
from kiln.serve import InferenceCore, ServeSettings, discover_models
from kiln.serve.drift import MIN_ROWS, DriftWindow
from kiln.serve.protocol import OUTPUTS, InferRequest


def reference(labels: Sequence[str] = ("a", "b")) -> DriftReference:
    """A reference over max_length 16 with every row in the first bin of each statistic."""
    edges = length_edges(16)
    empty = DriftReference(edges, tuple(labels), 1, {}, 0)
    props = {s: tuple(1.0 if i == 0 else 0.0 for i in range(len(empty.bins(s))))
             for s in STATISTICS}
    return DriftReference(edges, tuple(labels), 1, props, 1000)


def test_psi_is_zero_for_equal_shares_and_matches_the_formula() -> None:
    assert psi([0.25, 0.75], [0.25, 0.75]) == 0.0
    expected = (0.5 - 0.25) * math.log(0.5 / 0.25) + (0.5 - 0.75) * math.log(0.5 / 0.75)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)
    # an empty bin counts as EPSILON, so PSI stays finite; empty on both sides adds nothing
    assert psi([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]) == pytest.approx(
        2 * (1 - EPSILON) * math.log(1 / EPSILON))


def test_bins_take_values_up_to_their_upper_edge() -> None:
    assert length_edges(48) == (4, 8, 16, 32, 47, 48)
    assert length_edges(64) == (4, 8, 16, 32, 63, 64)
    edges = (0.0, 0.05, 0.1)
    assert [bin_of(edges, v) for v in (0.0, 0.01, 0.05, 0.07, 0.5)] == [0, 1, 1, 2, 2]
    assert shares([1, 3]) == [0.25, 0.75] and shares([0, 0]) == [0.0, 0.0]


def test_shares_are_smoothed_by_half_a_reference_row_per_bin() -> None:
    assert smoothed_shares([1.0, 0.0], 0.5) == [0.75, 0.25]
    # 1000 reference rows that left a bin empty: its share is taken as 0.5 / 1001, not 0
    assert reference().expected("predicted_class") == pytest.approx([1000.5 / 1001, 0.5 / 1001])


def test_a_row_is_binned_by_length_unknown_share_label_and_confidence() -> None:
    ref = reference()
    # 10 tokens, 2 of them unknown (id 1); label 1 with probability 0.97
    assert ref.bin_row([2, 1, 5, 1, 6, 7, 8, 9, 10, 3], [0.03, 0.97], 1) == (2, 3, 1, 10)
    assert ref.bins("confidence")[10] == "0.99" and ref.bins("unknown_tokens")[3] == "0.2"


def test_reference_survives_the_manifest_and_refuses_foreign_bins() -> None:
    ref = reference(("x", "y", "z"))
    assert DriftReference.from_json(ref.to_json()) == ref
    bad = ref.to_json()
    bad["statistics"]["confidence"]["bins"] = ["0.5", "1"]
    with pytest.raises(ValueError, match="confidence"):
        DriftReference.from_json(bad)


def test_window_keeps_the_last_rows_and_their_counts() -> None:
    window = DriftWindow(reference(), size=100)
    assert window.psi() == {}
    window.add([(0, 0, 0, 0)] * 100)
    assert window.psi() == dict.fromkeys(STATISTICS, 0.0)
    window.add([(1, 0, 1, 0)] * 40)  # 40 of the in-distribution rows leave
    assert len(window.rows) == 100
    assert window.counts[0][:2] == [60, 40] and window.counts[2] == [60, 40]
    assert window.psi()["token_length"] > 0.2 and window.psi()["unknown_tokens"] == 0.0


def infer(texts: list[str]) -> InferRequest:
    return InferRequest(id=None, texts=texts, input_ids=None, outputs=list(OUTPUTS),
                        binary_outputs=set(), timeout_s=None)


def serve_rows(folder: Path, rows: list[str], **settings: int) -> InferenceCore:
    """A core of ``folder`` (as model "clf") that answered ``rows`` 16 at a time, stopped."""
    core = InferenceCore(discover_models(folder, "clf"), ServeSettings(threads=1, **settings))

    async def lifetime() -> None:
        await core.start()
        try:
            for start in range(0, len(rows), 16):
                await core.infer("clf", infer(rows[start:start + 16]))
        finally:
            await core.stop()

    asyncio.run(lifetime())
    return core


def drift_psi(core: InferenceCore) -> dict[str, float | None]:
    get = core.metrics.registry.get_sample_value
    return {s: get("kiln_drift_psi", {"model": "clf", "statistic": s}) for s in STATISTICS}


@pytest.fixture(scope="module")
def eval_texts(exported_run: Path) -> list[str]:
    return list(prepare_data(load_config(exported_run / "config.yaml"), exported_run).eval_texts)


def test_the_runs_own_evaluation_texts_do_not_drift(exported_run: Path,
                                                    eval_texts: list[str]) -> None:
    rows = eval_texts * 3  # 240 rows: past MIN_ROWS, the evaluation set's mix three times
    core = serve_rows(exported_run, rows, drift_window=1000)
    measured = drift_psi(core)
    print("in-distribution PSI:", measured)
    assert all(v is not None and v < 0.1 for v in measured.values()), measured
    get = core.metrics.registry.get_sample_value
    assert get("kiln_drift_window_rows", {"model": "clf"}) == len(rows)
    assert sum(get("kiln_drift_bin_rows", {"model": "clf", "statistic": "predicted_class",
                                           "bin": label}) or 0
               for label in ("account", "billing", "shipping", "technical")) == len(rows)


def test_a_fresh_sample_of_the_same_distribution_does_not_drift(exported_run: Path) -> None:
    fresh = [text for text, _ in builtin.generate(seed=11, n_train=1, n_eval=300).eval]
    measured = drift_psi(serve_rows(exported_run, fresh, drift_window=1000))
    print("fresh same-distribution PSI:", measured)
    assert all(v is not None and v < 0.1 for v in measured.values()), measured


def rare_script_texts(n: int, seed: int = 0) -> list[str]:
    """Texts of made-up words in Greek and Cyrillic letters, which the tokenizer never saw."""
    rng = random.Random(seed)
    letters = "αβγδεζηθικλμνξπρστυφχψωбгджзилпфцчшщъыьэюя"
    return [" ".join("".join(rng.choices(letters, k=rng.randint(3, 9)))
                     for _ in range(rng.randint(4, 12))) for _ in range(n)]


def test_texts_in_another_script_drift_in_unknown_tokens(exported_run: Path) -> None:
    core = serve_rows(exported_run, rare_script_texts(200), drift_window=200)
    measured = drift_psi(core)
    print("foreign-script PSI:", measured)
    assert measured["unknown_tokens"] is not None and measured["unknown_tokens"] > 0.2


def test_long_texts_drift_in_token_length(exported_run: Path, eval_texts: list[str]) -> None:
    rng = random.Random(1)
    rows = [" ".join(rng.sample(eval_texts, 5)) for _ in range(200)]  # the same words, 5x longer
    core = serve_rows(exported_run, rows, drift_window=200)
    measured = drift_psi(core)
    print("long-text PSI:", measured)
    assert measured["token_length"] is not None and measured["token_length"] > 0.2
    assert measured["unknown_tokens"] is not None and measured["unknown_tokens"] < 0.1


def test_psi_waits_for_enough_rows(exported_run: Path, eval_texts: list[str]) -> None:
    core = serve_rows(exported_run, eval_texts[:MIN_ROWS // 2], drift_window=1000)
    assert drift_psi(core) == dict.fromkeys(STATISTICS)
    assert core.metrics.registry.get_sample_value(
        "kiln_drift_window_rows", {"model": "clf"}) == MIN_ROWS // 2


def test_a_model_without_reference_serves_without_drift_series(
        exported_run: Path, eval_texts: list[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kiln.serve"):
        core = serve_rows(exported_run / "model", eval_texts[:16])  # the trained model: no export
    assert "no drift reference" in caplog.text and "kiln export" in caplog.text
    assert b"kiln_drift_psi{" not in core.metrics_exposition()
    assert b"kiln_drift_window_rows{" not in core.metrics_exposition()


def test_drift_window_0_turns_drift_off(exported_run: Path, eval_texts: list[str]) -> None:
    core = serve_rows(exported_run, eval_texts[:16], drift_window=0)
    assert b"kiln_drift_window_rows{" not in core.metrics_exposition()
