"""The export/parity and benchmark sections: every artifact with its parity against the trained
model and its size, then the latency and throughput `kiln bench` measured."""

from __future__ import annotations

import math
from typing import Any

from kiln.report import figures
from kiln.report.html import (
    Html,
    badge,
    code,
    definitions,
    image,
    join,
    not_run,
    note,
    number,
    size,
    table,
)
from kiln.report.records import RunRecords

SCENARIOS = (("real", "real lengths"), ("fixed", "padded to max length"))


def export_section(run: RunRecords) -> Html:
    if run.parity is None and run.export is None:
        return not_run("export", f"kiln export {run.run_dir}")
    parity = run.parity or {}
    reference = parity.get("reference", {})
    tolerance = parity.get("tolerance", {})
    info = (run.export or {}).get("export", {})
    facts = definitions([
        ("trained model", f"{reference.get('artifact', '?')}, accuracy "
                          f"{number(reference.get('accuracy'))} on the eval set"),
        ("tolerance", f"accuracy drop at most {number(tolerance.get('max_accuracy_drop'), 'g')} "
                      f"points, argmax agreement at least "
                      f"{number(tolerance.get('min_argmax_agreement'), 'g')}"),
        # "recommended" before kiln 0.13: the same fixed-order pick, not a measurement
        ("preferred before a benchmark", info.get("preferred") or info.get("recommended")
         or "none passed"),
    ])
    rows = [_parity_row(run, entry) for entry in parity.get("artifacts", [])
            if isinstance(entry, dict)]
    if not rows:
        return join([facts, note("export/parity.json lists no artifacts")])
    headers = ["artifact", "file", "size", "max |diff|", "argmax agreement", "accuracy",
               "drop (points)", "macro F1", "parity"]
    return join([facts, table(headers, rows), _triton_note(run)])


def _parity_row(run: RunRecords, entry: dict[str, Any]) -> list[object]:
    passed = bool(entry.get("passed"))
    result: list[object] = [badge(passed)]
    if entry.get("failures"):
        result.append(": " + "; ".join(str(f) for f in entry["failures"]))
    layers = entry.get("fp32_layers") or []
    if layers:
        result.append(f" ({len(layers)} of {entry.get('quantizable_layers', '?')} layers kept "
                      "in fp32)")
    file = str(entry.get("file", ""))
    return [entry.get("artifact", "?"), file, size(artifact_bytes(run, file)),
            number(entry.get("max_abs_diff"), ".2e"), number(entry.get("argmax_agreement")),
            number(entry.get("accuracy")), number(entry.get("accuracy_drop"), ".2f"),
            number(entry.get("macro_f1")), join(result)]


def artifact_bytes(run: RunRecords, file: str) -> int | None:
    """The size of an artifact: its file, an OpenVINO model's .bin beside its .xml, or every
    file of a folder artifact; from the export manifest's checksums, else from the disk."""
    if not file:
        return None
    companion = file[:-4] + ".bin" if file.endswith(".xml") else None
    recorded = (run.export or {}).get("files", {})
    parts = [v.get("bytes", 0) for k, v in recorded.items() if isinstance(v, dict)
             and (k in (file, companion) or k.startswith(file + "/"))]
    if parts:
        return int(sum(parts))
    path = run.run_dir / "export" / file
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    candidates = [path, *([path.with_name(companion)] if companion else [])]
    found = [p.stat().st_size for p in candidates if p.is_file()]
    return sum(found) if found else None


def _triton_note(run: RunRecords) -> Html:
    folder = run.run_dir / "triton"
    if folder.is_dir():
        return note(f"Triton model repository: {folder}")
    return not_run("Triton packaging", f"kiln triton {run.run_dir}")


def benchmark_section(run: RunRecords) -> Html:
    report = run.bench
    if report is None:
        command = f"kiln bench {run.run_dir}"
        if run.export is None:
            return join([not_run("export", f"kiln export {run.run_dir}"),
                         note("then the benchmark: ", code(command))])
        return not_run("benchmark", command)
    results = {k: v for k, v in report.get("results", {}).items() if isinstance(v, dict)}
    if not results:
        return note("bench/report.json holds no results")
    names = list(results)
    batch = report.get("settings", {}).get("batch_size", "?")
    latency = figures.grouped_bars(
        names, [(label, [_value(results[n], f"latency_b1_{s}", "p50_ms") for n in names])
                for s, label in SCENARIOS],
        "ms per request (batch 1)", "Latency at batch 1: p50 (bars), p99 (marks)",
        marks=[[_value(results[n], f"latency_b1_{s}", "p99_ms") for n in names]
               for s, _ in SCENARIOS])
    throughput = figures.grouped_bars(
        names, [(label, [_value(results[n], f"throughput_{s}", "samples_per_s") for n in names])
                for s, label in SCENARIOS], f"samples/s (batch {batch})", "Throughput")
    return join([_bench_facts(report),
                 image(latency, "latency per artifact"),
                 image(throughput, "throughput per artifact"),
                 _bench_table(report, results)])


def _value(result: dict[str, Any], scenario: str, field: str) -> float:
    """A measurement of ``result``, NaN when it is missing (no bar is drawn)."""
    value = result.get(scenario, {}).get(field) if isinstance(result.get(scenario), dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def _bench_facts(report: dict[str, Any]) -> Html:
    s, machine = report.get("settings", {}), report.get("machine", {})
    return definitions([
        ("settings", f"{s.get('threads', '?')} threads; batch 1 on {s.get('texts', '?')} eval "
                     f"texts; batch {s.get('batch_size', '?')} for throughput; max length "
                     f"{s.get('max_length', '?')}"),
        ("machine", f"{machine.get('cpu_count', '?')} CPUs, {machine.get('platform', '?')}"),
        ("baseline", report.get("baseline", "?")),
        ("lowest latency", report.get("recommended", "?")),
        ("highest throughput", report.get("highest_throughput", report.get("recommended", "?"))),
    ])


def _bench_table(report: dict[str, Any], results: dict[str, Any]) -> Html:
    ratios = report.get("ratios", {})
    rows = []
    for name, r in results.items():
        q = ratios.get(name, {}) if isinstance(ratios.get(name), dict) else {}
        rows.append([name, number(_value(r, "latency_b1_real", "p50_ms"), ".2f"),
                     number(_value(r, "latency_b1_real", "p99_ms"), ".2f"),
                     number(_value(r, "latency_b1_fixed", "p50_ms"), ".2f"),
                     number(_value(r, "throughput_real", "samples_per_s"), ",.0f"),
                     number(_value(r, "throughput_fixed", "samples_per_s"), ",.0f"),
                     _times(q.get("p50_real_vs_eager_real")),
                     _times(q.get("throughput_real_vs_eager"))])
    return table(["artifact", "p50 ms (real)", "p99 ms (real)", "p50 ms (padded)",
                  "samples/s (real)", "samples/s (padded)", "p50 vs baseline",
                  "throughput vs baseline"], rows)


def _times(ratio: object) -> str:
    text = number(ratio, ".2f")
    return text + "x" if text[0].isdigit() else text
