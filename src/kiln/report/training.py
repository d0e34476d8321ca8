"""The training and evaluation sections: curves from metrics.jsonl, and the kept weights' eval
(confusion matrix, per-class precision/recall/F1) from the model's manifest."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from kiln.report import figures
from kiln.report.figures import Series
from kiln.report.html import Html, definitions, el, image, join, note, number, table
from kiln.report.records import RunRecords

MAX_EVAL_ROWS = 30  # eval records listed in the table (the latest ones)
# per-step measurements of the train records, summarised by their median
SPEED = (("samples_per_s", "samples/s", ",.0f"), ("tokens_per_s", "tokens/s", ",.0f"),
         ("step_time_s", "step time (s)", ".4f"), ("data_wait_share", "share of time waiting "
          "for data", ".1%"), ("mfu", "model FLOPs utilisation", ".1%"),
         ("peak_memory_mb", "peak memory (MB)", ",.0f"))


def training_section(run: RunRecords) -> Html:
    train, evals = run.records("train"), run.records("eval")
    if not train and not evals:
        return note("metrics.jsonl has no training records yet: run ",
                    el("code", f"kiln train {run.run_dir}/config.yaml"),
                    " (a run with checkpoints resumes)")
    kept = run.training.get("step")
    charts = [_loss_chart(train, evals), _lr_chart(train), _eval_chart(evals, kept)]
    parts: list[object] = [el("div", *(c for c in charts if c), class_="figures")]
    speed = _speed_rows(train)
    if speed:
        parts += [el("h3", "Speed (median over logged steps)"), definitions(speed)]
    parts += [el("h3", "Evaluations"), _eval_table(evals)]
    return join(parts)


def _loss_chart(train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> Html | None:
    series = [Series(name, *_curve(records, "loss"), marker)
              for name, records, marker in (("train loss", train, ""), ("eval loss", evals, "o"))]
    series = [s for s in series if s.xs]
    if not series:
        return None
    return image(figures.line_chart(series, "Loss", "cross-entropy"), "training and eval loss")


def _lr_chart(train: list[dict[str, Any]]) -> Html | None:
    xs, ys = _curve(train, "lr")
    if not xs:
        return None
    return image(figures.line_chart([Series("learning rate", xs, ys)], "Learning rate", "lr"),
                 "learning rate")


def _eval_chart(evals: list[dict[str, Any]], kept: object) -> Html | None:
    series = [Series(key, *_curve(evals, key), "o") for key in ("accuracy", "macro_f1")]
    series = [s for s in series if s.xs]
    if not series:
        return None
    mark = float(kept) if isinstance(kept, (int, float)) else None
    return image(figures.line_chart(series, "Eval metrics", "score", mark_step=mark),
                 "eval accuracy and macro-F1")


def _curve(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over ``records``, skipping records without a number for it."""
    pairs = [(float(r["step"]), float(r[key])) for r in records
             if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _speed_rows(train: list[dict[str, Any]]) -> list[tuple[str, str]]:
    rows = []
    for key, name, spec in SPEED:
        values = _curve(train, key)[1]
        if values:
            rows.append((name, number(statistics.median(values), spec)))
    return rows


def _eval_table(evals: list[dict[str, Any]]) -> Html:
    if not evals:
        return note("no evaluations recorded (train.eval_every and the end of each epoch "
                    "write them)")
    shown = evals[-MAX_EVAL_ROWS:]
    rows = [(r["step"], r.get("epoch", ""), number(r.get("loss")), number(r.get("accuracy")),
             number(r.get("macro_f1"))) for r in shown]
    head = [] if len(shown) == len(evals) else [
        note(f"the latest {len(shown)} of {len(evals)} evaluations")]
    return join([*head, table(["step", "epoch", "loss", "accuracy", "macro F1"], rows)])


def best_eval(run: RunRecords, metric: str = "accuracy") -> dict[str, Any] | None:
    """The eval record with the highest ``metric`` (the first of equals)."""
    scored = [r for r in run.records("eval") if isinstance(r.get(metric), (int, float))]
    return max(scored, key=lambda r: r[metric]) if scored else None


def evaluation_section(run: RunRecords) -> Html:
    result = run.training.get("eval")
    if run.model is None:
        return note("no trained model yet (model/kiln.json): run ",
                    el("code", f"kiln train {run.run_dir}/config.yaml"), " to finish training")
    if not isinstance(result, dict) or not result.get("confusion"):
        return note("the model's manifest has no evaluation recorded (no eval set?)")
    labels, matrix = run.labels, result["confusion"]
    if len(labels) != len(matrix):
        labels = [str(i) for i in range(len(matrix))]
    summary = definitions([
        ("weights", f"{run.training.get('selected', '?')} (step {run.training.get('step', '?')})"),
        ("examples", result.get("num_examples", "not recorded")),
        ("accuracy", number(result.get("accuracy"))),
        ("macro F1", number(result.get("macro_f1"))),
        ("loss", number(result.get("loss")))])
    return join([summary, image(figures.confusion_chart(matrix, labels), "confusion matrix"),
                 el("h3", "Per class"), per_class_table(matrix, labels)])


def per_class_metrics(matrix: Sequence[Sequence[int]]) -> list[tuple[float, float, float, int]]:
    """(precision, recall, F1, support) of each class of a confusion matrix (true rows,
    predicted columns); a class never predicted has precision 0, one never present recall 0."""
    metrics = []
    for i, row in enumerate(matrix):
        tp, support, predicted = row[i], sum(row), sum(r[i] for r in matrix)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics.append((precision, recall, f1, support))
    return metrics


def per_class_table(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> Html:
    """Each class's precision, recall, F1 and support, then their unweighted mean (macro)."""
    metrics = per_class_metrics(matrix)
    rows: list[list[object]] = [[label, number(p), number(r), number(f), n]
                                for label, (p, r, f, n) in zip(labels, metrics)]
    means = [sum(m[k] for m in metrics) / max(len(metrics), 1) for k in range(3)]
    rows.append([el("b", "macro average"), *(number(v) for v in means),
                 sum(m[3] for m in metrics)])
    return table(["class", "precision", "recall", "F1", "support"], rows)
