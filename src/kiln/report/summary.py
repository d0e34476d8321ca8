"""The summary, config and "serve and deploy" sections: how the run went in a few lines, what
exactly ran, and the commands that ship it."""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from kiln.config import iter_keys
from kiln.report.html import (
    NOT_RECORDED,
    Html,
    code,
    commands,
    definitions,
    el,
    join,
    not_run,
    note,
    number,
    table,
)
from kiln.report.records import RunRecords
from kiln.report.training import best_eval
from kiln.run import describe_kept
from kiln.runtime.load import ArtifactChoice, choose_artifact

MODEL_KWARGS = ("preset", "embed_dim", "num_layers", "num_heads", "ff_dim", "vocab_size", "path")


def summary_section(run: RunRecords) -> Html:
    evals = run.records("eval")
    final, best = (evals[-1] if evals else None), best_eval(run)
    facts = definitions([
        ("run", f"{run.name} ({run.run_dir.resolve()})"),
        ("stages", _stages(run)),
        ("model", _model(run)),
        ("final eval accuracy", _scored(final)),
        ("best eval accuracy", _scored(best)),
        ("weights kept", _kept(run)),
        ("recommended artifact", _recommendation(run)),
    ])
    if not run.problems:
        return facts
    problems = el("ul", *(el("li", p) for p in run.problems), class_="problems")
    return join([facts, el("h3", "Files that could not be read"), problems])


def _stages(run: RunRecords) -> Html:
    folder = run.run_dir
    done = [("trained", run.model is not None), ("exported", run.export is not None),
            ("Triton repository", (folder / "triton").is_dir()),
            ("benchmarked", run.bench is not None),
            ("deployment files", (folder / "deploy").is_dir())]
    return join([el("span", f"{name} {'yes' if ok else 'no'}", class_="pass" if ok else "todo")
                 for name, ok in done], "  ·  ")


def _model(run: RunRecords) -> str:
    manifest = run.model or {}
    model = manifest.get("model", {})
    kwargs = model.get("kwargs", {}) if isinstance(model, dict) else {}
    name = model.get("name") if isinstance(model, dict) else None
    name = name or run.setting("model.name", NOT_RECORDED)
    details = {k: kwargs.get(k, run.setting(f"model.{k}")) for k in MODEL_KWARGS}
    shown = ", ".join(f"{k} {v}" for k, v in details.items() if v is not None)
    framework = manifest.get("framework") or run.setting("framework", "torch")
    classes = f", {len(run.labels)} classes" if run.labels else ""
    return f"{name} ({framework}{', ' + shown if shown else ''}{classes})"


def _scored(record: dict[str, Any] | None) -> str:
    if record is None:
        return NOT_RECORDED
    return (f"{number(record.get('accuracy'))} at step {record.get('step')} "
            f"(macro F1 {number(record.get('macro_f1'))})")


def _kept(run: RunRecords) -> str:
    return describe_kept(run.training) if run.training else "no trained model yet"


def choice(run: RunRecords) -> ArtifactChoice | None:
    """What `kiln serve RUN` (and predict, deploy) uses by default, and why: the one rule of
    kiln.runtime.choose_artifact, over the export if there is one, else the trained model."""
    if run.export is not None:
        return choose_artifact(run.run_dir / "export", run.export)
    return choose_artifact(run.run_dir / "model", run.model) if run.model is not None else None


def _recommendation(run: RunRecords) -> Html:
    picked = choice(run)
    if picked is None:
        return not_run("training", f"kiln train {run.run_dir}/config.yaml")
    parts: list[object] = [code(picked.name), ": ", picked.reason]
    bench = run.bench or {}
    if picked.measured:
        parts.append(_against_baseline(bench, picked.name))
    return join(parts)


def _against_baseline(bench: dict[str, Any], name: str) -> str:
    """How the picked artifact compares with the trained model, and the pick for a busy server
    when that differs (batching favours other artifacts)."""
    results = bench.get("results", {})
    ratio = bench.get("ratios", {}).get(name, {}).get("p50_real_vs_eager_real")
    text = f", {number(ratio, '.2f')}x the p50 of the trained model ({bench.get('baseline', '?')})"
    busy = bench.get("highest_throughput")
    if busy and busy != name:
        rate = results.get(busy, {}).get("throughput_real", {}).get("samples_per_s")
        batch = bench.get("settings", {}).get("batch_size", "?")
        text += (f"; under load {busy} has the highest throughput at batch {batch} "
                 f"({number(rate, ',.0f')} samples/s)")
    return text


def config_section(run: RunRecords) -> Html:
    if run.config is None:
        return note("no config.yaml in the run: the config is not recorded")
    known = {key: (default, description) for key, _, default, description in iter_keys()}
    rows, changed = [], []
    for key, value in _flatten({k: v for k, v in run.config.items() if k != "versions"}):
        default, description = known.get(key, (value, "not a key of this kiln version"))
        row = [key, _show(value), description]
        rows.append(row)
        if _show(value) != _show(default):
            changed.append([key, _show(value), _show(default), description])
    versions = run.config.get("versions") or {}
    headers = ["key", "value", "default", "meaning"]
    return join([
        el("h3", f"Changed from the defaults ({len(changed)} of {len(rows)} keys)"),
        table(headers, changed) if changed else note("none: every key has its default"),
        el("details", el("summary", f"every key as it ran (config.yaml, {len(rows)} keys)"),
           table(["key", "value", "meaning"], rows)),
        el("h3", "Versions"),
        definitions(sorted(versions.items())) if versions else note(NOT_RECORDED)])


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _show(value: Any) -> str:
    """A config value as YAML writes a scalar: null, true, 0.0005, [a, b]."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def serve_section(run: RunRecords) -> Html:
    target = shlex.quote(str(run.run_dir))
    picked = choice(run)
    served = picked.name if picked is not None else "the trained model"
    lines = [
        f"kiln serve {target}   # {served} as model '{run.name}' on 127.0.0.1:8000 "
        "(HTTP; gRPC on 8001)",
        f"curl -s localhost:8000/v2/models/{shlex.quote(run.name)}/infer -d "
        """'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["some text"]}]}'""",
    ]
    busy = (run.bench or {}).get("highest_throughput")
    if busy and busy != served:
        lines.append(f"kiln serve {target} --artifact {busy} --workers {os.cpu_count() or 1}"
                     "   # under load: the highest throughput, one worker per core")
    lines += [
        f"kiln bench {target} --url 127.0.0.1:8000   # load test of the running server",
        f"kiln predict {target} --data FILE --out predictions.csv   # batch scoring of a file",
        f"kiln triton {target}   # a Triton model repository in {target}/triton/",
        f"kiln deploy {target}   # Dockerfiles, Kubernetes, KServe, Prometheus and Grafana files "
        f"in {target}/deploy/",
    ]
    parts: list[object] = [commands(lines)]
    if run.export is None:
        parts.insert(0, note("not exported yet: serve and predict use the trained model; "
                             "triton and deploy need ", code(f"kiln export {run.run_dir}"),
                             " first"))
    return join(parts)
