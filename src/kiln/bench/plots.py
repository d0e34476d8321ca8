"""PNG plots of a bench report (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_plots(report: dict[str, Any], folder: Path) -> list[Path]:
    """latency.png (p50/p99 at batch 1) and throughput.png (samples/s), per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    results = report["results"]
    x = range(len(names))
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for offset, (key, label) in enumerate([("latency_b1_fixed", "fixed length"),
                                           ("latency_b1_real", "real lengths")]):
        xs = [i + (offset - 0.5) * 0.38 for i in x]
        ax.bar(xs, [results[n][key]["p50_ms"] for n in names], 0.36, label=f"p50, {label}")
        ax.scatter(xs, [results[n][key]["p99_ms"] for n in names], marker="_", s=200, color="black",
                   label="p99" if offset else None)
    ax.set_xticks(list(x), names, rotation=20, ha="right")
    ax.set_ylabel("ms per request (batch 1)")
    ax.set_title("Latency at batch 1")
    ax.legend()
    fig.tight_layout()
    paths.append(folder / "latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for offset, (key, label) in enumerate([("throughput_fixed", "fixed length"),
                                           ("throughput_real", "real lengths")]):
        ax.bar([i + (offset - 0.5) * 0.38 for i in x],
               [results[n][key]["samples_per_s"] for n in names], 0.36, label=label)
    ax.set_xticks(list(x), names, rotation=20, ha="right")
    ax.set_ylabel(f"samples/s (batch {report['settings']['batch_size']})")
    ax.set_title("Throughput")
    ax.legend()
    fig.tight_layout()
    paths.append(folder / "throughput.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
