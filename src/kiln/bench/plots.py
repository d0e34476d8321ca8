"""PNG plots of a bench report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCENARIOS = (("fixed", "padded to max length"), ("real", "real lengths"))


def write_plots(report: dict[str, Any], folder: Path) -> list[Path]:
    """latency.png (p50 bars, p99 marks, at batch 1) and throughput.png (samples/s), per artifact."""
    batch = report["settings"]["batch_size"]
    return [
        _grouped_bars(report, folder / "latency.png", "latency_b1_{}", "p50_ms",
                      "ms per request (batch 1)", "Latency at batch 1, p50 (bars) and p99 (marks)",
                      marks="p99_ms"),
        _grouped_bars(report, folder / "throughput.png", "throughput_{}", "samples_per_s",
                      f"samples/s (batch {batch})", "Throughput"),
    ]


def _grouped_bars(report: dict[str, Any], path: Path, key: str, field: str, ylabel: str,
                  title: str, marks: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for offset, (scenario, label) in enumerate(SCENARIOS):
        values = [report["results"][n][key.format(scenario)] for n in names]
        xs = [i + (offset - 0.5) * 0.38 for i in range(len(names))]
        ax.bar(xs, [v[field] for v in values], 0.36, label=label)
        if marks:
            ax.scatter(xs, [v[marks] for v in values], marker="_", s=200, color="black")
    ax.set_xticks(list(range(len(names))), names, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
