"""The report's plots as PNG bytes (matplotlib's Agg canvas; no display, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import NamedTuple

from matplotlib.figure import Figure

DPI = 100
MAX_TICK_LABEL = 24  # characters of a label name shown on an axis


class Series(NamedTuple):
    """One line of a line chart."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    marker: str = ""  # "o": points (eval records), "": a plain line (train records)


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def plain(text: str) -> str:
    """``text`` as matplotlib shows it literally (``$`` would start mathtext), cut to fit."""
    short = text if len(text) <= MAX_TICK_LABEL else text[: MAX_TICK_LABEL - 1] + "…"
    return short.replace("$", r"\$")


def line_chart(series: Sequence[Series], title: str, ylabel: str,
               mark_step: float | None = None, log_y: bool = False) -> bytes:
    """Curves over training steps; ``mark_step`` draws a dashed line at a step (the kept one)."""
    fig = Figure(figsize=(5.4, 3.4))
    ax = fig.add_subplot()
    for s in series:
        ax.plot(s.xs, s.ys, marker=s.marker or None, markersize=4, label=plain(s.label))
    if mark_step is not None:
        ax.axvline(mark_step, color="grey", linestyle="--", linewidth=1, label="kept weights")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def confusion_chart(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes:
    """The confusion matrix as a heat map, counts written in the cells (up to 20 classes)."""
    n = len(labels)
    side = min(max(4.0, 0.6 * n + 2.0), 14.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    shown = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    names = [plain(label) for label in labels]
    ax.set_xticks(range(n), names, rotation=35 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        top = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=9,
                        color="white" if count > top / 2 else "black")
    ax.set_title("confusion matrix (eval set, kept weights)")
    return png(fig)


def grouped_bars(names: Sequence[str], groups: Sequence[tuple[str, Sequence[float]]],
                 ylabel: str, title: str,
                 marks: Sequence[Sequence[float]] | None = None) -> bytes:
    """One group of bars per name (an artifact), one bar per group entry (a scenario);
    ``marks`` (same shape as the bars) are drawn as black ticks (p99 over p50 bars)."""
    fig = Figure(figsize=(min(max(6.0, 0.9 * len(names) + 2.5), 11.0), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / max(len(groups), 1)
    for g, (label, values) in enumerate(groups):
        xs = [i + (g - (len(groups) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, values, width * 0.95, label=label)
        if marks is not None:
            ax.scatter(xs, marks[g], marker="_", s=200, color="black", zorder=3)
    ax.set_xticks(range(len(names)), [plain(n) for n in names], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


def histogram(samples: Sequence[tuple[str, Sequence[int]]], title: str, xlabel: str) -> bytes:
    """Overlaid histograms (as shares of each sample, so splits of any size compare)."""
    fig = Figure(figsize=(5.4, 3.4))
    ax = fig.add_subplot()
    top = max((max(values) for _, values in samples if values), default=1)
    bins = min(40, max(top, 1))
    for label, values in samples:
        if values:
            ax.hist(values, bins=bins, range=(0, top), alpha=0.55, label=plain(label),
                    weights=[1 / len(values)] * len(values))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of texts")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return png(fig)


def bars(names: Sequence[str], values: Sequence[float], title: str, ylabel: str) -> bytes:
    """A single bar chart (the recorded token-length bins, say)."""
    fig = Figure(figsize=(5.4, 3.4))
    ax = fig.add_subplot()
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), [plain(n) for n in names])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)
