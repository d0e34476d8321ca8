"""The schedule both trainers keep, in optimizer steps: when to evaluate and checkpoint, which
evaluation is the best so far, when to stop early, and which weights a run ends with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kiln.config import TrainConfig
from kiln.metrics import EvalResult
from kiln.run.checkpoints import damage
from kiln.run.logger import Logger
from kiln.run.state import TrainResult, TrainState, eval_record


def warmup_steps(tc: TrainConfig, total_steps: int) -> int:
    """Learning-rate warmup in optimizer steps: ``warmup_steps``, or ``warmup_ratio`` of the run
    when that is negative."""
    return tc.warmup_steps if tc.warmup_steps >= 0 else int(tc.warmup_ratio * total_steps)


def eval_due(state: TrainState, tc: TrainConfig, updated: bool, end_of_epoch: bool,
             done: bool) -> bool:
    """Evaluate now? Every ``eval_every`` optimizer steps (0: at the end of each epoch) and at the
    end. ``updated``: this batch finished an optimizer step (not a mid-accumulation batch)."""
    every = tc.eval_every
    return done or (updated and bool(every) and state.step % every == 0) or (
        not every and end_of_epoch)


def checkpoint_due(state: TrainState, tc: TrainConfig, updated: bool, end_of_epoch: bool,
                   done: bool) -> bool:
    """Checkpoint now? Every ``checkpoint_every`` optimizer steps (0: at the end of each epoch),
    at the end, and when stopping early."""
    every = tc.checkpoint_every
    return done or state.stopped_early or (updated and bool(every) and state.step % every == 0) or (
        not every and end_of_epoch)


def record_eval(state: TrainState, result: EvalResult, tc: TrainConfig, log: Logger) -> bool:
    """Log an evaluation and keep score of ``train.metric``; stops early after
    ``early_stopping_patience`` evaluations without improvement. Returns whether it is the best
    so far (the caller then keeps these weights as the best)."""
    log.log_eval(state.step, result, state.epoch)
    score = result.loss if tc.metric == "loss" else getattr(result, tc.metric)
    improved = state.best_metric is None or (
        score < state.best_metric if tc.metric == "loss" else score > state.best_metric)
    if improved:
        state.best_metric, state.best_step = score, state.step
        state.best_eval = eval_record(result)
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
        patience = tc.early_stopping_patience
        if patience and state.evals_without_improvement >= patience:
            state.stopped_early = True
            log.message(f"early stopping at step {state.step}: no {tc.metric} improvement in "
                        f"{state.evals_without_improvement} evaluations")
    state.last_eval = eval_record(result)
    return improved


def uses_best(tc: TrainConfig, state: TrainState, best_file: Path,
              report: Callable[[str], None] = lambda message: None) -> bool:
    """Whether the run ends with its best weights (``train.select=best`` and a best evaluation
    was kept, intact) rather than its last ones; damaged best weights are reported and not used."""
    if tc.select != "best" or not state.best_eval:
        return False
    problem = damage(best_file.parent) if best_file.exists() else f"{best_file.name} is missing"
    if problem is None:
        return True
    report(f"the best weights (step {state.best_step}) in {best_file.parent} cannot be used "
           f"({problem}); model/ gets the last weights instead")
    return False


def train_result(run_dir: Path, model_dir: Path, state: TrainState, tc: TrainConfig,
                 resume_from: Path | None, label_names: tuple[str, ...],
                 loop_seconds: float) -> TrainResult:
    """What a finished run reports: the evaluation of the weights it kept."""
    selected = state.best_eval if tc.select == "best" and state.best_eval else state.last_eval
    return TrainResult(run_dir=run_dir, model_dir=model_dir, eval=selected, step=state.step,
                       resumed_from=None if resume_from is None else int(resume_from.name[5:]),
                       label_names=label_names, loop_seconds=loop_seconds)
