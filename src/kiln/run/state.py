"""Where a training run stands and what it produced, for either trainer."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import KilnError, RunDirError
from kiln.metrics import EvalResult


class TrainingDiverged(KilnError):
    """Too many consecutive steps had a non-finite loss or gradient."""

    exit_code = 1  # not bad input: the run itself failed; the message says what to change


@dataclass
class TrainState:
    """Progress counters: together with the RNG states, exactly where training stands."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    batch_in_epoch: int = 0  # micro-batches of that epoch already consumed
    samples_seen: int = 0
    best_metric: float | None = None
    best_step: int = -1
    best_eval: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    evals_without_improvement: int = 0
    stopped_early: bool = False
    bad_steps: int = 0  # consecutive steps skipped for a non-finite loss or gradient
    micro_split: int = 1  # each micro-batch runs in this many pieces (after out-of-memory errors)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    model_dir: Path
    eval: dict[str, Any]  # metrics of the weights in model_dir
    step: int
    resumed_from: int | None
    label_names: tuple[str, ...]
    loop_seconds: float  # time in training steps, without evaluation and checkpoints


def describe_kept(training: dict[str, Any]) -> str:
    """Which step's weights a model folder holds and why, from its manifest's "training" record:
    "weights of step 462 of 770: the best eval accuracy (0.9120; train.select=best)"."""
    step, total = training.get("step"), training.get("total_steps")
    metric = training.get("metric", "accuracy")
    value = training.get("eval", {}).get(metric)
    scored = f" {value:.4f}" if isinstance(value, (int, float)) else ""
    if training.get("selected") == "last":
        return f"weights of the last step, {total} (train.select=last; eval {metric}{scored})"
    if step == total:
        return (f"weights of the last step, {total}, which had the best eval {metric}{scored} "
                "(train.select=best)")
    return (f"weights of step {step} of {total}: the best eval {metric}{scored} "
            "(train.select=best)")


def eval_record(result: EvalResult) -> dict[str, Any]:
    """An evaluation as kept in TrainState and the manifest: scalars, confusion, example count."""
    return {**result.scalars(), "confusion": result.confusion, "num_examples": result.num_examples}


def finished_result(run_dir: Path) -> TrainResult:
    """The TrainResult of a run that finished in other processes (e.g. under torchrun), from its
    model/kiln.json.

    Raises:
        RunDirError: the run has no model/ (training did not finish).
    """
    manifest_file = run_dir / "model" / "kiln.json"
    if not manifest_file.exists():
        raise RunDirError(f"{run_dir} has no finished model ({manifest_file} is missing)")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    training = manifest["training"]
    return TrainResult(run_dir=run_dir, model_dir=run_dir / "model", eval=training["eval"],
                       step=training["total_steps"], resumed_from=None,
                       label_names=tuple(manifest["labels"]), loop_seconds=0.0)
