"""`kiln export` records the evaluation set's drift reference in the export's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.data import prepare_data
from kiln.runtime import load_predictor
from kiln.runtime.drift import STATISTICS, DriftReference, length_edges, reference_profile


def test_export_manifest_holds_the_drift_reference_of_the_evaluation_set(
        exported_run: Path) -> None:
    manifest = json.loads((exported_run / "export" / "kiln.json").read_text())
    reference = DriftReference.from_json(manifest["drift_reference"])
    texts = prepare_data(load_config(exported_run / "config.yaml"), exported_run).eval_texts
    assert reference.rows == len(texts) == 80
    assert reference.artifact == manifest["export"]["preferred"]
    assert reference.length_edges == length_edges(48)
    assert reference.labels == tuple(manifest["labels"])
    assert reference.unknown_token_id == 1  # [UNK], second of the special tokens
    for statistic in STATISTICS:
        assert sum(reference.proportions[statistic]) == pytest.approx(1.0)
    # the same numbers as the served predictor gives (the export's default artifact)
    again = reference_profile(load_predictor(exported_run), texts, reference.artifact)
    assert again == reference
