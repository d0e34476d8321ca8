"""Drift monitoring in the server: a sliding window of recent rows against the export's reference.

The inference thread puts each row in its bins (`kiln.runtime.drift.DriftReference.bin_row`, where
the token ids are); the event loop only adds those small tuples to a `DriftWindow` (counts kept up
to date as rows enter and leave, O(1) per row) and sets the gauges from a few dozen numbers per
batch. Series (labels: served model names, the four statistic names and the reference's bins,
so bounded):

| metric | multiprocess mode | what |
|---|---|---|
| kiln_drift_psi{model,statistic} | livemax | PSI of the window against the reference |
| kiln_drift_window_rows{model} | livesum | rows in the window(s) |
| kiln_drift_bin_rows{model,statistic,bin} | livesum | rows of the window(s) in each bin |
| kiln_drift_reference_share{model,statistic,bin} | max | the reference's share of each bin |

With ``--workers N`` each worker keeps its own window (the kernel spreads connections evenly, so
each sees the same mix) and `/metrics` shows the highest PSI among the live workers, so an alert
fires when any worker sees drift; the bin counts add up to the pooled window, whose share of a bin
is kiln_drift_bin_rows / kiln_drift_window_rows. A worker publishes PSI only once its window holds
`MIN_ROWS` rows (or the whole window, if smaller): PSI of a handful of rows is noise.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge

from kiln.models import read_manifest
from kiln.runtime import artifact_folder
from kiln.runtime.drift import (
    STATISTICS,
    DriftReference,
    RowBins,
    psi,
    shares,
    smoothed_shares,
)

log = logging.getLogger("kiln.serve")
MIN_ROWS = 100


class DriftWindow:
    """The last ``size`` rows' bins, counted per statistic, against a reference."""

    def __init__(self, reference: DriftReference, size: int) -> None:
        self.reference = reference
        self.size = size
        self.rows: collections.deque[RowBins] = collections.deque()
        self.counts = [[0] * len(reference.bins(s)) for s in STATISTICS]
        self.expected = [reference.expected(s) for s in STATISTICS]

    def add(self, rows: Iterable[RowBins]) -> None:
        for row in rows:
            if len(self.rows) == self.size:
                for counts, b in zip(self.counts, self.rows.popleft()):
                    counts[b] -= 1
            self.rows.append(row)
            for counts, b in zip(self.counts, row):
                counts[b] += 1

    def psi(self) -> dict[str, float]:
        """Each statistic's PSI, window against reference, both smoothed alike by half a reference
        row's share per bin (kiln.runtime.drift.PSEUDOCOUNT); {} while the window is empty."""
        if not self.rows:
            return {}
        alpha = self.reference.smoothing
        return {s: psi(smoothed_shares(shares(c), alpha), expected)
                for s, c, expected in zip(STATISTICS, self.counts, self.expected)}


class DriftGauges:
    """The drift series of every model (one registry, as ``make_metrics``'s)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.psi = Gauge("kiln_drift_psi", "Population stability index of the recent rows "
                         "against the export's evaluation set (highest of the live workers)",
                         ["model", "statistic"], registry=registry, multiprocess_mode="livemax")
        self.window_rows = Gauge("kiln_drift_window_rows", "Rows in the drift window(s)",
                                 ["model"], registry=registry, multiprocess_mode="livesum")
        self.bin_rows = Gauge("kiln_drift_bin_rows", "Rows of the drift window(s) in each bin",
                              ["model", "statistic", "bin"], registry=registry,
                              multiprocess_mode="livesum")
        self.reference_share = Gauge(
            "kiln_drift_reference_share", "Share of the evaluation set in each drift bin",
            ["model", "statistic", "bin"], registry=registry, multiprocess_mode="max")


class DriftMonitor:
    """One model's window and series: `observe` each finished batch's row bins."""

    def __init__(self, gauges: DriftGauges, model: str, reference: DriftReference,
                 size: int) -> None:
        self.window = DriftWindow(reference, size)
        self.min_rows = min(size, MIN_ROWS)
        self.model, self.gauges = model, gauges
        self.window_rows = gauges.window_rows.labels(model)
        self.bin_rows = [[gauges.bin_rows.labels(model, s, b) for b in reference.bins(s)]
                         for s in STATISTICS]
        self.psi: dict[str, Gauge] = {}  # labelled on first publication: no PSI before there is one
        for s in STATISTICS:
            for b, share in zip(reference.bins(s), reference.proportions[s]):
                gauges.reference_share.labels(model, s, b).set(share)

    def observe(self, rows: list[RowBins]) -> None:
        if not rows:
            return
        self.window.add(rows)
        self.window_rows.set(len(self.window.rows))
        for series, counts in zip(self.bin_rows, self.window.counts):
            for gauge, count in zip(series, counts):
                gauge.set(count)
        if len(self.window.rows) >= self.min_rows:
            if not self.psi:
                self.psi = {s: self.gauges.psi.labels(self.model, s) for s in STATISTICS}
            for statistic, value in self.window.psi().items():
                self.psi[statistic].set(value)


def load_reference(folder: Path, model: str) -> DriftReference | None:
    """The drift reference in the manifest of the model served from ``folder`` (None, with a
    log line saying why, when it has none that can be used)."""
    served = artifact_folder(folder)
    data = read_manifest(served).get("drift_reference")
    if data is None:
        log.warning("kiln serve: model '%s' (%s) has no drift reference in its manifest (not "
                    "exported, or exported before kiln recorded one; `kiln export RUN` adds it): "
                    "no drift metrics for it", model, served)
        return None
    try:
        return DriftReference.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("kiln serve: model '%s' (%s): drift reference unreadable (%s): no drift "
                    "metrics for it", model, served, exc)
        return None
