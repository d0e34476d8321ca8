"""Drift: how far live inputs and predictions have moved from the evaluation data.

`kiln export` records a `DriftReference` of the evaluation set in the manifest (key
``drift_reference``): for each of four statistics, fixed bins and the share of evaluation rows in
each. `kiln serve` puts every live row in the same bins (`DriftReference.bin_row`, in the
inference thread) and compares a window of recent rows with the reference by the population
stability index (`psi`). The statistics:

- ``token_length``: tokens per row, as the model sees them (truncated to max_length); bins by
  powers of two, then max_length - 1 and max_length (the bin of truncated rows);
- ``unknown_tokens``: the share of a row's tokens that are the tokenizer's unknown token; bins
  0, (0, 0.05], (0.05, 0.1], (0.1, 0.2], (0.2, 0.5], (0.5, 1];
- ``predicted_class``: one bin per label;
- ``confidence``: the highest class probability; bins of 0.1 over [0, 0.9], then (0.9, 0.95],
  (0.95, 0.99], (0.99, 1].

A numeric bin is named by its upper edge and holds the values above the previous edge up to it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

from kiln.runtime.predictor import Predictor, pad_batch, softmax

STATISTICS = ("token_length", "unknown_tokens", "predicted_class", "confidence")
# The reference is a sample: an evaluation set of 80 rows that left a bin empty says its share is
# below about 1/80, not that it is 0. So every bin's share, on both sides, gets the share of half a
# reference row added (additive smoothing, 0.5 / rows, then renormalised): with 80 reference rows
# an empty bin counts as 0.6 %, and a fresh sample of the same distribution stays well under PSI
# 0.1 (taken as 0, 1.3 % of live rows in one such bin alone added 0.065). Both sides are smoothed
# alike, so equal shares still give 0 and bins both leave empty add nothing.
PSEUDOCOUNT = 0.5
# A share still below EPSILON (a side of over 5,000 rows with an empty bin) is taken as EPSILON,
# so PSI stays finite: such a bin holding a share p of the other side adds about p * ln(p / 1e-4).
EPSILON = 1e-4
UNKNOWN_EDGES = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
CONFIDENCE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
RowBins = tuple[int, int, int, int]  # a row's bin of each statistic, in STATISTICS order


def length_edges(max_length: int) -> tuple[int, ...]:
    """Upper edges of the token-length bins: 4, 8, 16, ... below ``max_length``, then
    ``max_length - 1`` and ``max_length`` (rows that filled the model's length, or were cut)."""
    edges = {max_length - 1, max_length}
    edge = 4
    while edge < max_length - 1:
        edges.add(edge)
        edge *= 2
    return tuple(sorted(e for e in edges if e > 0))


def bin_of(edges: Sequence[float], value: float) -> int:
    """The bin of ``value``: the first whose upper edge is at least ``value`` (the last bin for
    values beyond every edge)."""
    return min(bisect.bisect_left(edges, value), len(edges) - 1)


def psi(live: Sequence[float], reference: Sequence[float], epsilon: float = EPSILON) -> float:
    """Population stability index of the shares ``live`` against ``reference`` (same bins):
    sum of (live - reference) * ln(live / reference), empty shares taken as ``epsilon``.
    0 for equal distributions; by the usual rule of thumb < 0.1 stable, 0.1-0.2 worth watching,
    > 0.2 drifted."""
    total = 0.0
    for p, q in zip(live, reference, strict=True):
        p, q = max(p, epsilon), max(q, epsilon)
        total += (p - q) * math.log(p / q)
    return total


def shares(counts: Sequence[int]) -> list[float]:
    """``counts`` as proportions of their sum (all 0 when there are none)."""
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def smoothed_shares(shares: Sequence[float], alpha: float) -> list[float]:
    """``shares`` with ``alpha`` added to every bin, renormalised (see PSEUDOCOUNT)."""
    total = sum(shares) + alpha * len(shares)
    return [(p + alpha) / total for p in shares]


def unknown_token_id(tokenizer: Tokenizer) -> int | None:
    """The id of ``tokenizer``'s unknown token (None: it has none, as byte-level BPE)."""
    model = tokenizer.model
    token = getattr(model, "unk_token", None)
    if token:
        return tokenizer.token_to_id(token)
    unk_id = getattr(model, "unk_id", None)  # Unigram
    return int(unk_id) if unk_id is not None else None


@dataclass(frozen=True)
class DriftReference:
    """The bins of each statistic and the evaluation set's share of rows in each."""

    length_edges: tuple[int, ...]
    labels: tuple[str, ...]
    unknown_token_id: int | None
    proportions: dict[str, tuple[float, ...]]  # by statistic, one share per bin
    rows: int  # evaluation rows it was measured on
    artifact: str = ""  # the artifact whose predictions it holds

    def bins(self, statistic: str) -> list[str]:
        """The names of ``statistic``'s bins (a label, or a numeric bin's upper edge)."""
        if statistic == "predicted_class":
            return list(self.labels)
        edges = {"token_length": self.length_edges, "unknown_tokens": UNKNOWN_EDGES,
                 "confidence": CONFIDENCE_EDGES}[statistic]
        return [f"{edge:g}" for edge in edges]

    @property
    def smoothing(self) -> float:
        """The share added to every bin of both sides before PSI: half a reference row's."""
        return PSEUDOCOUNT / max(self.rows, 1)

    def expected(self, statistic: str) -> list[float]:
        """The reference's smoothed shares of ``statistic``'s bins, as PSI compares them."""
        return smoothed_shares(self.proportions[statistic], self.smoothing)

    def bin_row(self, ids: Sequence[int], probabilities: Sequence[float], label: int) -> RowBins:
        """The bins of one row: its token ids (as the model got them), its class probabilities
        and the index of its predicted label."""
        unknown = ids.count(self.unknown_token_id) if self.unknown_token_id is not None else 0
        return (bin_of(self.length_edges, len(ids)),
                bin_of(UNKNOWN_EDGES, unknown / max(len(ids), 1)),
                label,
                bin_of(CONFIDENCE_EDGES, probabilities[label]))

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "artifact": self.artifact,
            "unknown_token_id": self.unknown_token_id,
            "statistics": {s: {"bins": self.bins(s), "proportions": list(self.proportions[s])}
                           for s in STATISTICS},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DriftReference:
        """The reference a manifest holds.

        Raises:
            ValueError: it is not one (a statistic missing, or bins that do not match).
        """
        stats = data["statistics"]
        reference = cls(
            length_edges=tuple(int(b) for b in stats["token_length"]["bins"]),
            labels=tuple(stats["predicted_class"]["bins"]),
            unknown_token_id=data.get("unknown_token_id"),
            proportions={s: tuple(float(p) for p in stats[s]["proportions"]) for s in STATISTICS},
            rows=int(data.get("rows", 0)), artifact=str(data.get("artifact", "")))
        for s in STATISTICS:
            if stats[s]["bins"] != reference.bins(s) or len(reference.proportions[s]) != len(
                    reference.bins(s)):
                raise ValueError(f"drift_reference: the bins of {s} are not kiln's")
        return reference


def reference_profile(predictor: Predictor, texts: Sequence[str], artifact: str = "",
                      batch_size: int = 64) -> DriftReference:
    """The drift reference of ``texts`` (the evaluation set) as ``predictor`` sees them:
    tokenised, truncated and scored exactly as `kiln serve` does for a text."""
    empty = DriftReference(length_edges(predictor.max_length), tuple(predictor.label_names),
                           unknown_token_id(predictor.tokenizer), {}, 0, artifact)
    counts = [[0] * len(empty.bins(s)) for s in STATISTICS]
    for start in range(0, len(texts), batch_size):
        encoded = predictor.tokenizer.encode_batch(list(texts[start:start + batch_size]))
        ids = [e.ids[: predictor.max_length] for e in encoded]
        probabilities = softmax(predictor.logits(*pad_batch(ids, predictor.pad_id)))
        for row, p, label in zip(ids, probabilities.tolist(), probabilities.argmax(-1).tolist()):
            for s, b in enumerate(empty.bin_row(row, p, label)):
                counts[s][b] += 1
    return DriftReference(empty.length_edges, empty.labels, empty.unknown_token_id,
                          {s: tuple(shares(c)) for s, c in zip(STATISTICS, counts)},
                          len(texts), artifact)
