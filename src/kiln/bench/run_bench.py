"""`kiln bench RUN`: latency and throughput of every verified artifact against the trained model
(eager fp32 for torch runs, the Keras model for keras runs)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.bench.contention import Contention, idle_check, watched
from kiln.bench.harness import Inputs, latency_of, latency_samples, measure_throughput
from kiln.bench.peaks import Peaks, measure_peaks, peak_share, workload_flops
from kiln.bench.plots import write_plots
from kiln.config import load_config
from kiln.data import prepare_data
from kiln.errors import RunDirError
from kiln.files import replacing_dir
from kiln.models import MANIFEST, read_manifest
from kiln.runtime import PREFERENCE, make_backend, reference_artifact, runs_here
from kiln.runtime.predictor import Backend, pad_batch

TIE = 0.05  # artifacts this close to the best are equal within one run's noise
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
    rounds: int = 3  # each artifact measured this many times, interleaved with the others
    retries: int = 2  # re-measurements of a round that other processes disturbed


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
    peaks = measure_peaks(settings.threads)  # what each artifact's rate is a share of
    work = Workloads(singles, fixed_singles, batches, fixed_batches)
    before = idle_check()
    results = _measure_all(folder, manifest, names, work, settings)
    report = _summarize(results, baseline, settings, max_length, len(sequences), peaks,
                        workload_flops(manifest, [ids.shape[1] for ids, _ in batches]))
    report["machine"]["contention_before"] = asdict(before)
    report["warnings"] = _warnings(results, baseline, before)
    _write_report(run / "bench", report)
    return report


@dataclass(frozen=True)
class Workloads:
    """What each artifact is timed on: single texts at their real lengths and padded to the max
    length (batch 1), and batches of both."""

    singles: list[Inputs]
    fixed_singles: list[Inputs]
    batches: list[Inputs]
    fixed_batches: list[Inputs]


def _measure_all(folder: Path, manifest: dict[str, Any], names: list[str], work: Workloads,
                 settings: BenchSettings) -> dict[str, Any]:
    """Every artifact measured in ``settings.rounds`` interleaved rounds (each artifact once per
    round, so a slow minute of the machine hits them all alike), then combined."""
    backends = {name: make_backend(folder, manifest, name, threads=settings.threads)
                for name in names}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(settings.rounds):
        for name in names:
            rounds[name].append(_measure_round(backends[name], work, settings))
    return {name: _combine(backends[name].info(), rounds[name]) for name in names}


def _measure_round(backend: Backend, work: Workloads, settings: BenchSettings) -> dict[str, Any]:
    """One round of the four measurements, redone (up to ``settings.retries`` times) while other
    processes took more than a small share of the machine; the least disturbed attempt."""
    seconds = max(settings.min_seconds / settings.rounds, 0.05)

    def once() -> dict[str, Any]:
        return {
            "fixed_ms": latency_samples(backend, work.fixed_singles, settings.warmup,
                                        settings.repeats),
            "real_ms": latency_samples(backend, work.singles, settings.warmup, settings.repeats),
            "throughput_fixed": measure_throughput(backend, work.fixed_batches, 1, seconds),
            "throughput_real": measure_throughput(backend, work.batches, 1, seconds),
        }

    best: tuple[dict[str, Any], Contention] | None = None
    for _ in range(1 + settings.retries):
        attempt = watched(once)
        if best is None or attempt[1].total < best[1].total:
            best = attempt
        if not attempt[1].contended:
            break
    assert best is not None
    return {**best[0], "contention": best[1]}


def _combine(info: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One artifact's figures from its rounds, leaving out disturbed rounds when clean ones exist:
    latency percentiles over all kept calls, the median throughput of the kept rounds."""
    clean = [r for r in rounds if not r["contention"].contended] or rounds
    result: dict[str, Any] = {"info": info}
    for key, field in (("latency_b1_fixed", "fixed_ms"), ("latency_b1_real", "real_ms")):
        result[key] = latency_of(np.concatenate([r[field] for r in clean])).to_json()
    for key in ("throughput_fixed", "throughput_real"):
        median = float(np.median([r[key].samples_per_s for r in clean]))
        result[key] = {**rounds[0][key].to_json(), "samples_per_s": median,
                       "batches": sum(r[key].batches for r in clean),
                       "seconds": sum(r[key].seconds for r in clean)}
    result["rounds"] = [{"p50_real_ms": float(np.median(r["real_ms"])),
                         "samples_per_s_real": r["throughput_real"].samples_per_s,
                         **asdict(r["contention"]), "contended": r["contention"].contended}
                        for r in rounds]
    result["disturbed_rounds"] = sum(r["contention"].contended for r in rounds)
    return result


def _warnings(results: dict[str, Any], baseline: str, before: Contention) -> list[str]:
    """What makes this report's figures less than trustworthy, in words."""
    warnings = []
    if before.contended:
        warnings.append(f"the machine was busy when the bench started ({before.describe()})")
    for name, r in results.items():
        bad, total = r["disturbed_rounds"], len(r["rounds"])
        if bad == total:
            worst = max(r["rounds"], key=lambda x: x["others"] + x["steal"])
            warnings.append(f"{name}: every round was disturbed (other processes took "
                            f"{worst['others']:.0%} of the CPUs, steal {worst['steal']:.0%}), "
                            "after retries: its figures are unreliable"
                            + ("; so are all the ratios, as it is the baseline"
                               if name == baseline else ""))
        elif bad:
            warnings.append(f"{name}: {bad} of {total} rounds disturbed by other processes and "
                            "left out")
    if warnings:
        warnings.append("re-run `kiln bench` on an idle machine for figures to rely on")
    return warnings


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
               eval_texts: int, peaks: Peaks | None = None,
               flops_per_sample: float | None = None) -> dict[str, Any]:
    base = results[baseline]
    ratios = {}
    for name, r in results.items():
        # batch `settings.batch_size` on real texts, against the machine's peak for its precision
        r["peak_share"] = peak_share(name, r["throughput_real"]["samples_per_s"],
                                     flops_per_sample, peaks)
        ratios[name] = {
            "p50_real_vs_eager_fixed": r["latency_b1_real"]["p50_ms"] / base["latency_b1_fixed"]["p50_ms"],
            "p50_real_vs_eager_real": r["latency_b1_real"]["p50_ms"] / base["latency_b1_real"]["p50_ms"],
            "throughput_real_vs_eager": r["throughput_real"]["samples_per_s"] / base["throughput_real"]["samples_per_s"],
            "throughput_fixed_vs_eager": r["throughput_fixed"]["samples_per_s"] / base["throughput_fixed"]["samples_per_s"],
        }
    recommended, why = pick(results, lambda r: r["latency_b1_real"]["p50_ms"], lower=True)
    # under load a server batches, so its best artifact can differ from the batch-1 latency one
    highest_throughput, _ = pick(results, lambda r: r["throughput_real"]["samples_per_s"],
                                 lower=False)
    return {
        "baseline": baseline,
        "recommended": recommended,
        "recommended_why": f"lowest p50 at batch 1 on real texts{why}",
        "highest_throughput": highest_throughput,
        "settings": {**settings.__dict__, "artifacts": list(results), "max_length": max_length,
                     "eval_texts": eval_texts},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "peaks": peaks.to_json() if peaks is not None else None,
                    "matmul_gflop_per_sample": (flops_per_sample / 1e9
                                                if flops_per_sample is not None else None)},
        "results": results,
        "ratios": ratios,
    }


def pick(results: dict[str, Any], value: Callable[[dict[str, Any]], float],
         lower: bool) -> tuple[str, str]:
    """The best artifact by ``value``, stable across re-runs: artifacts within ``TIE`` of the
    best are a tie (the noise of one run on a shared machine), broken by kiln's fixed order.
    Artifacts whose every round was disturbed are chosen only if all were. Returns the name and
    a note on ties (empty when there was none)."""
    steady = {n: r for n, r in results.items() if r["disturbed_rounds"] < len(r["rounds"])}
    candidates = steady or results
    best = (min if lower else max)(value(r) for r in candidates.values())
    close = [n for n, r in candidates.items()
             if (value(r) <= best * (1 + TIE) if lower else value(r) >= best * (1 - TIE))]
    order = [n for n in PREFERENCE if n in close] + [n for n in close if n not in PREFERENCE]
    if len(close) == 1:
        return order[0], ""
    return order[0], (f" ({', '.join(sorted(close))} within {TIE:.0%} of each other, a tie on one "
                      "machine's noise: kiln's fixed order breaks it)")


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
        "| samples/s real | p50 real / eager fixed | p50 real / eager real | thr real / eager "
        "| GFLOP/s real (share of peak) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    unreliable = {n for n, r in report["results"].items()
                  if r.get("disturbed_rounds", 0) == len(r.get("rounds", [None]))}
    for name, r in report["results"].items():
        q = report["ratios"][name]
        mark = " (!)" if name in unreliable or report["baseline"] in unreliable else ""
        lines.append(
            f"| {name} | {r['latency_b1_fixed']['p50_ms']:.2f} | {r['latency_b1_real']['p50_ms']:.2f} "
            f"| {r['latency_b1_real']['p99_ms']:.2f} | {r['throughput_fixed']['samples_per_s']:.0f} "
            f"| {r['throughput_real']['samples_per_s']:.0f} | {q['p50_real_vs_eager_fixed']:.3f}{mark} "
            f"| {q['p50_real_vs_eager_real']:.3f}{mark} | {q['throughput_real_vs_eager']:.2f}x{mark} "
            f"| {_share_cell(r.get('peak_share'))} |")
    why = report.get("recommended_why", "lowest p50 at batch 1 on real texts")
    lines += ["", f"recommended for serving ({why}): **{report['recommended']}**", ""]
    if report.get("highest_throughput", report["recommended"]) != report["recommended"]:
        lines += [f"highest throughput on real texts at batch {s['batch_size']} (for a server "
                  f"under load): **{report['highest_throughput']}**", ""]
    if report.get("warnings"):
        lines += ["**warning**: the machine was not quiet; (!) marks figures measured under "
                  "contention", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(lines)


def _share_cell(share: dict[str, Any] | None) -> str:
    if not share:
        return "-"
    return f"{share['achieved_gflops']:.0f} ({share['share']:.0%} of {share['precision']})"


def _write_report(target: Path, report: dict[str, Any]) -> None:
    with replacing_dir(target) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(format_report(report), encoding="utf-8")
        write_plots(report, tmp)
