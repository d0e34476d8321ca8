"""`kiln bench RUN`: latency and throughput of every verified artifact against the trained model
(eager fp32 for torch runs, the Keras model for keras runs)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.bench.harness import Inputs, measure_latency, measure_throughput
from kiln.bench.plots import write_plots
from kiln.config import load_config
from kiln.data import prepare_data
from kiln.errors import RunDirError
from kiln.files import replacing_dir
from kiln.models import MANIFEST, read_manifest
from kiln.runtime import make_backend, reference_artifact, runs_here
from kiln.runtime.predictor import pad_batch

BASELINE = "torch-fp32"  # the baseline of a torch run; a keras run's is keras-fp32
FALLBACK_BASELINE = "onnx-fp32"  # when the trained model's framework is not installed here


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 2
    texts: int = 100  # evaluation texts timed one by one (batch 1)
    batch_size: int = 32
    warmup: int = 5
    repeats: int = 1
    min_seconds: float = 2.0  # per throughput measurement
    artifacts: Sequence[str] | None = None  # None: the baseline and every passed artifact


def bench_run(run_dir: str | os.PathLike[str], settings: BenchSettings = BenchSettings()) -> dict[str, Any]:
    """Measure every artifact of ``run_dir/export`` and write ``run_dir/bench/``.

    Scenarios: (a) ``fixed``: texts padded to the model's max length, as a server that pads to a
    fixed shape sees them; (b) ``real``: the same evaluation texts at their real lengths. The trained
    model (``baseline_artifact``) is measured in the same run as the baseline; the ratio keys keep
    the name ``eager`` for it.

    Raises:
        RunDirError: no export, or an unknown/failed artifact was asked for.
    """
    run = Path(run_dir)
    folder = run / "export"
    if not (folder / MANIFEST).exists():
        raise RunDirError(f"{run} has no export/{MANIFEST}; run `kiln export {run}` first")
    manifest = read_manifest(folder)
    max_length = int(manifest["max_length"])
    pad = int(manifest["model"]["kwargs"].get("pad_id", 0))
    data = prepare_data(load_config(run / "config.yaml"), run)
    sequences = [ids.tolist() for ids in data.eval.ids]
    singles = [pad_batch([s], pad) for s in sequences[: settings.texts]]
    fixed_singles = [_pad_to(ids, mask, max_length, pad) for ids, mask in singles]
    batches = [pad_batch(sequences[i:i + settings.batch_size], pad)
               for i in range(0, min(len(sequences), 20 * settings.batch_size), settings.batch_size)]
    batches = [b for b in batches if len(b[0]) == settings.batch_size] or batches[:1]
    fixed_batches = [_pad_to(ids, mask, max_length, pad) for ids, mask in batches]

    baseline = baseline_artifact(manifest)
    names = list(settings.artifacts) if settings.artifacts else [baseline] + [
        n for n, e in manifest.get("artifacts", {}).items()
        if e["passed"] and (e["precision"] != "fp16" or torch.cuda.is_available())
        and runs_here(n, manifest) and n != baseline]
    if baseline not in names:
        names.insert(0, baseline)
    torch.set_num_threads(settings.threads)
    results: dict[str, Any] = {}
    for name in names:
        backend = make_backend(folder, manifest, name, threads=settings.threads)
        results[name] = {
            "info": backend.info(),
            "latency_b1_fixed": measure_latency(backend, fixed_singles, settings.warmup,
                                                settings.repeats).to_json(),
            "latency_b1_real": measure_latency(backend, singles, settings.warmup,
                                               settings.repeats).to_json(),
            "throughput_fixed": measure_throughput(backend, fixed_batches, 1,
                                                   settings.min_seconds).to_json(),
            "throughput_real": measure_throughput(backend, batches, 1,
                                                  settings.min_seconds).to_json(),
        }
    report = _summarize(results, baseline, settings, max_length, len(sequences))
    _write_report(run / "bench", report)
    return report


def _pad_to(ids: np.ndarray, mask: np.ndarray, length: int, pad: int) -> Inputs:
    extra = length - ids.shape[1]
    return (np.pad(ids, ((0, 0), (0, extra)), constant_values=pad),
            np.pad(mask, ((0, 0), (0, extra)), constant_values=0))


def baseline_artifact(manifest: dict[str, Any]) -> str:
    """What the other artifacts are compared with: the trained model in its own framework
    (torch-fp32 eager, or keras-fp32 through a tf.function), or the fp32 ONNX export when that
    framework is not installed where the benchmark runs.

    Raises:
        RunDirError: neither can run here.
    """
    reference = reference_artifact(manifest)
    if runs_here(reference, manifest):
        return reference
    if manifest.get("artifacts", {}).get(FALLBACK_BASELINE, {}).get("passed"):
        return FALLBACK_BASELINE
    raise RunDirError(f"cannot run the baseline {reference} here and the export has no passed "
                      f"{FALLBACK_BASELINE}; install the framework that trained the model")


def _summarize(results: dict[str, Any], baseline: str, settings: BenchSettings, max_length: int,
               eval_texts: int) -> dict[str, Any]:
    base = results[baseline]
    ratios = {}
    for name, r in results.items():
        ratios[name] = {
            "p50_real_vs_eager_fixed": r["latency_b1_real"]["p50_ms"] / base["latency_b1_fixed"]["p50_ms"],
            "p50_real_vs_eager_real": r["latency_b1_real"]["p50_ms"] / base["latency_b1_real"]["p50_ms"],
            "throughput_real_vs_eager": r["throughput_real"]["samples_per_s"] / base["throughput_real"]["samples_per_s"],
            "throughput_fixed_vs_eager": r["throughput_fixed"]["samples_per_s"] / base["throughput_fixed"]["samples_per_s"],
        }
    recommended = min(results, key=lambda n: results[n]["latency_b1_real"]["p50_ms"])
    # under load a server batches, so its best artifact can differ from the batch-1 latency one
    highest_throughput = max(results, key=lambda n: results[n]["throughput_real"]["samples_per_s"])
    return {
        "baseline": baseline,
        "recommended": recommended,
        "highest_throughput": highest_throughput,
        "settings": {**settings.__dict__, "artifacts": list(results), "max_length": max_length,
                     "eval_texts": eval_texts},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "results": results,
        "ratios": ratios,
    }


def format_report(report: dict[str, Any]) -> str:
    """Markdown table of latencies, throughputs and ratios against the baseline (the trained
    model in its own framework)."""
    s = report["settings"]
    lines = [
        f"# kiln bench ({s['threads']} threads, batch 1 on {s['texts']} texts, batch "
        f"{s['batch_size']} for throughput, max length {s['max_length']}; baseline "
        f"{report['baseline']})",
        "",
        "| artifact | p50 b1 fixed ms | p50 b1 real ms | p99 b1 real ms | samples/s fixed "
        "| samples/s real | p50 real / eager fixed | p50 real / eager real | thr real / eager |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        q = report["ratios"][name]
        lines.append(
            f"| {name} | {r['latency_b1_fixed']['p50_ms']:.2f} | {r['latency_b1_real']['p50_ms']:.2f} "
            f"| {r['latency_b1_real']['p99_ms']:.2f} | {r['throughput_fixed']['samples_per_s']:.0f} "
            f"| {r['throughput_real']['samples_per_s']:.0f} | {q['p50_real_vs_eager_fixed']:.3f} "
            f"| {q['p50_real_vs_eager_real']:.3f} | {q['throughput_real_vs_eager']:.2f}x |")
    lines += ["", f"recommended for serving (lowest p50 at batch 1 on real texts): "
              f"**{report['recommended']}**", ""]
    if report.get("highest_throughput", report["recommended"]) != report["recommended"]:
        lines += [f"highest throughput on real texts at batch {s['batch_size']} (for a server "
                  f"under load): **{report['highest_throughput']}**", ""]
    return "\n".join(lines)


def _write_report(target: Path, report: dict[str, Any]) -> None:
    with replacing_dir(target) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(format_report(report), encoding="utf-8")
        write_plots(report, tmp)
