"""The data section: where the data came from, split sizes, label distribution and text lengths.

What the run recorded comes first (the config's sources, the eval set's size and label counts in
the kept weights' confusion matrix, the token lengths export profiled for drift). The training
split's numbers are only in the data files: they are read when they are still where the config
says (the built-in dataset is in the run), and shown as not recorded when they are not."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.data import load_tokenizer, read_examples, split_holdout
from kiln.errors import KilnError
from kiln.report import figures
from kiln.report.html import NOT_RECORDED, Html, definitions, el, image, join, note, table
from kiln.report.records import RunRecords

MAX_DATA_BYTES = 200_000_000  # larger data files are not read for the report


@dataclass(frozen=True)
class Split:
    """One split as read from its file now."""

    name: str  # train or eval
    labels: Counter[str]
    chars: list[int]  # characters per text
    tokens: list[int]  # tokens per text as the model sees them (truncated); [] without tokenizer


def data_files(run: RunRecords) -> tuple[Path, Path | None]:
    """The train file and the eval file (None: held out of the train file), as training read
    them (kiln.data.prepare): with no data.train, the built-in dataset in ``RUN/data/``."""
    train, evaluation = run.setting("data.train"), run.setting("data.eval")
    if train is None:
        builtin = run.run_dir / "data"
        return builtin / "train.csv", Path(evaluation) if evaluation else builtin / "eval.csv"
    return Path(train), Path(evaluation) if evaluation else None


def data_section(run: RunRecords) -> Html:
    if run.config is None:
        return note("no config.yaml: the data sources are not recorded")
    splits, problem = read_splits(run)
    parts: list[object] = [_sources(run, problem)]
    parts += [el("h3", "Splits"), _split_table(run, splits)]
    parts += [el("h3", "Labels"), _label_table(run, splits)]
    chart = _length_chart(run, splits)
    if chart is not None:
        parts += [el("h3", "Text lengths"), chart]
    return join(parts)


def read_splits(run: RunRecords) -> tuple[list[Split], str | None]:
    """The splits read from the data files now, or ([], why they could not be read)."""
    train_path, eval_path = data_files(run)
    for path in (train_path, eval_path):
        if path is not None and not path.is_file():
            return [], f"{path} is not there now"
        if path is not None and path.stat().st_size > MAX_DATA_BYTES:
            return [], f"{path} is over {MAX_DATA_BYTES // 1_000_000} MB, not read for the report"
    columns = (run.setting("data.text_column", "text"), run.setting("data.label_column", "label"))
    try:
        train = read_examples(train_path, *columns)
        if eval_path is None:
            train, held = split_holdout(train, float(run.setting("data.eval_fraction", 0.1)),
                                        int(run.setting("seed", 0)), train_path)
        else:
            held = read_examples(eval_path, *columns)
        tokenizer_file = run.run_dir / "tokenizer.json"
        tokenizer = load_tokenizer(tokenizer_file) if tokenizer_file.is_file() else None
    except (KilnError, OSError) as exc:
        return [], str(exc)
    splits = []
    for name, examples in (("train", train), ("eval", held)):
        texts = [e.text for e in examples]
        tokens = [len(e.ids) for e in tokenizer.encode_batch(texts)] if tokenizer else []
        splits.append(Split(name, Counter(e.label for e in examples), [len(t) for t in texts],
                            tokens))
    return splits, None


def _sources(run: RunRecords, problem: str | None) -> Html:
    train_path, eval_path = data_files(run)
    builtin = run.setting("data.train") is None
    held = (f"held out of the train file: {run.setting('data.eval_fraction')} of it, seed "
            f"{run.setting('seed')}")
    return definitions([
        ("train", f"{train_path}" + (" (the built-in dataset)" if builtin else "")),
        ("eval", str(eval_path) if eval_path is not None else held),
        ("columns", f"text: {run.setting('data.text_column')}, "
                    f"label: {run.setting('data.label_column')}"),
        ("max length", f"{run.setting('data.max_length')} tokens"),
        ("tokenizer", _tokenizer_kind(run)),
        ("data files", "read now for the numbers below" if problem is None
         else f"not read ({problem}): train split numbers not recorded"),
    ])


def _tokenizer_kind(run: RunRecords) -> str:
    if run.setting("model.name") == "hf_encoder":
        return f"the pretrained encoder's ({run.setting('model.path')})"
    kind = run.setting("data.tokenizer.kind", "?")
    return f"{kind}, trained on the train split, vocabulary {run.setting('model.vocab_size')}"


def _split_table(run: RunRecords, splits: list[Split]) -> Html:
    by_name = {s.name: s for s in splits}
    limit = run.setting("data.max_length")
    rows = []
    for name in ("train", "eval"):
        split = by_name.get(name)
        examples = len(split.chars) if split else _recorded_eval_size(run, name)
        rows.append([name, examples, *_stats(split.chars if split else []),
                     *_stats(split.tokens if split else []),
                     _share_at(split.tokens if split else [], limit)])
    headers = ["split", "examples", "characters: median", "p95", "max", "tokens: median",
               "p95", "max", "at max length"]
    return table(headers, rows)


def _recorded_eval_size(run: RunRecords, name: str) -> object:
    size = run.training.get("eval", {}).get("num_examples") if name == "eval" else None
    return size if size is not None else NOT_RECORDED


def _stats(values: Sequence[int]) -> list[object]:
    if not values:
        return [NOT_RECORDED, "", ""]
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return [f"{statistics.median(ordered):g}", p95, ordered[-1]]


def _share_at(tokens: Sequence[int], limit: object) -> str:
    """The share of texts that fill the model's max length (most of them were cut)."""
    if not tokens or not isinstance(limit, int):
        return NOT_RECORDED
    return f"{sum(t >= limit for t in tokens) / len(tokens):.1%}"


def _label_table(run: RunRecords, splits: list[Split]) -> Html:
    """Counts per label: train from the file, eval from the confusion matrix training recorded
    (its rows are the true labels of the eval set), else from the file."""
    by_name = {s.name: s.labels for s in splits}
    confusion = run.training.get("eval", {}).get("confusion") or []
    labels = run.labels or sorted(set().union(*by_name.values()) if by_name else set())
    recorded = ({name: sum(row) for name, row in zip(labels, confusion)}
                if len(confusion) == len(labels) else by_name.get("eval"))
    counts = {"train": by_name.get("train"), "eval": recorded}
    rows = [[label, *(_count(counts[s], label) for s in ("train", "eval"))] for label in labels]
    if not rows:
        return note("label names not recorded (no trained model yet)")
    return table(["label", "train", "eval"], rows)


def _count(counts: Counter[str] | dict[str, int] | None, label: str) -> str:
    if not counts:
        return NOT_RECORDED
    total = sum(counts.values())
    n = counts.get(label, 0)
    return f"{n:,} ({n / total:.1%})" if total else "0"


def _length_chart(run: RunRecords, splits: list[Split]) -> Html | None:
    """Token lengths of both splits from the files, else the eval set's length bins that export
    recorded as its drift reference."""
    if splits:
        use_tokens = all(s.tokens for s in splits)
        samples = [(s.name, s.tokens if use_tokens else s.chars) for s in splits]
        unit = "tokens" if use_tokens else "characters"
        return image(figures.histogram(samples, f"Text length ({unit} per text)", unit),
                     f"text lengths in {unit}")
    reference = (run.export or {}).get("drift_reference", {})
    lengths = reference.get("statistics", {}).get("token_length", {}) if reference else {}
    if not lengths.get("bins"):
        return None
    chart = figures.bars([f"≤{b}" for b in lengths["bins"]], lengths["proportions"],
                         "Eval set token lengths (recorded by export)", "share of texts")
    return join([note(f"recorded by export on {reference.get('rows', '?')} eval texts"),
                 image(chart, "eval set token lengths")])
