"""The training loop, readable top to bottom: one config in, one run directory out.

Each optimizer step: fetch grad_accum_steps micro-batches, run forward/backward on each with the
loss normalised over the whole accumulated batch, unscale and clip, step, log, maybe evaluate,
maybe checkpoint. State that a resume needs lives in TrainState and the checkpoint.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from kiln.config import Config
from kiln.data import (
    Batch,
    EpochBatchSampler,
    SortedBatchSampler,
    make_loader,
    pad_id,
    prepare_data,
)
from kiln.files import write_atomic
from kiln.models import build_manifest, build_model, model_kwargs, save_model_dir
from kiln.train.checkpoint import load_checkpoint, save_checkpoint, save_safetensors
from kiln.train.evaluate import evaluate
from kiln.train.logger import RunLogger
from kiln.train.metrics import EvalResult
from kiln.train.optim import make_optimizer, make_scheduler, plan_steps
from kiln.train.precision import autocast_dtype, resolve_device, resolve_precision
from kiln.train.rng import restore_rng_state, rng_state, seed_everything
from kiln.train.run_dir import CONFIG_FILE, start_run_dir


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


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


def train(cfg: Config, *, fresh: bool = False, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` into ``cfg.run_dir``, resuming from its latest checkpoint unless ``fresh``.

    ``framework=keras`` hands the same config to the Keras path (``kiln.keras``).

    Raises:
        ConfigError, DataError, RunDirError: bad config, data or run directory.
    """
    if cfg.framework == "keras":
        from kiln.keras import train_keras  # imports TensorFlow only now

        return train_keras(cfg, fresh=fresh, progress=progress)
    run_dir, tc = Path(cfg.run_dir), cfg.train
    device = resolve_device(tc.device)
    precision = resolve_precision(tc.precision, device)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    resume_from = start_run_dir(run_dir, cfg, fresh)
    seed_everything(cfg.seed)

    data = prepare_data(cfg, run_dir)
    pad = pad_id(data.tokenizer)
    kwargs = model_kwargs(cfg.model, vocab_size=data.tokenizer.get_vocab_size(),
                          num_labels=len(data.label_names), max_length=cfg.data.max_length,
                          pad_id=pad)
    model = build_model(cfg.model.name, kwargs).to(device)
    optimizer = make_optimizer(model, tc)
    sampler = EpochBatchSampler(data.train.lengths, tc.batch_size, cfg.seed, cfg.data.bucket_by_length)
    loader = make_loader(data.train, sampler, cfg.data, pad, cfg.seed)
    eval_loader = make_loader(data.eval, SortedBatchSampler(data.eval.lengths, 2 * tc.batch_size),
                              cfg.data, pad, cfg.seed)
    _, total_steps = plan_steps(len(sampler), tc)
    scheduler = make_scheduler(optimizer, tc, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    amp_dtype = autocast_dtype(precision)
    state = TrainState()
    if resume_from is not None:
        model_state, optim_state, trainer_state = load_checkpoint(resume_from, device)
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        scheduler.load_state_dict(trainer_state["scheduler"])
        scaler.load_state_dict(trainer_state["scaler"])
        sampler.load_state_dict(trainer_state["sampler"])
        state.load_state_dict(trainer_state["progress"])
        restore_rng_state(trainer_state["rng"])

    log = RunLogger(run_dir, total_steps, start_step=state.step, progress=progress)
    global_batch = tc.batch_size * tc.grad_accum_steps
    log.message(
        f"kiln: {len(data.train)} train / {len(data.eval)} eval examples, "
        f"{len(data.label_names)} labels, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"device {device.type}, precision {precision}, global batch {global_batch}, "
        f"{total_steps} steps" + (f", resumed at step {state.step}" if resume_from else "")
    )

    def checkpoint() -> None:
        save_checkpoint(
            run_dir, state.step, model.state_dict(), optimizer.state_dict(),
            {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
             "sampler": sampler.state_dict(), "progress": state.state_dict(), "rng": rng_state()},
            keep=tc.keep_checkpoints, extra_files=(run_dir / CONFIG_FILE,),
        )

    def run_eval() -> None:
        result = evaluate(model, eval_loader, len(data.label_names), device, amp_dtype)
        log.log_eval(state.step, result, state.epoch)
        score = result.loss if tc.metric == "loss" else getattr(result, tc.metric)
        improved = state.best_metric is None or (
            score < state.best_metric if tc.metric == "loss" else score > state.best_metric)
        if improved:
            state.best_metric, state.best_step = score, state.step
            state.best_eval = _eval_record(result)
            state.evals_without_improvement = 0
            write_atomic(run_dir / "best" / "model.safetensors",
                         lambda p: save_safetensors(model.state_dict(), p))
        else:
            state.evals_without_improvement += 1
            if tc.early_stopping_patience and state.evals_without_improvement >= tc.early_stopping_patience:
                state.stopped_early = True
                log.message(f"early stopping at step {state.step}: no {tc.metric} improvement in "
                            f"{state.evals_without_improvement} evaluations")
        state.last_eval = _eval_record(result)

    try:
        model.train()
        loop_seconds, window_start, window_samples, window_tokens = 0.0, time.perf_counter(), 0, 0
        loss_sum = torch.zeros((), device=device)
        while state.step < total_steps and not state.stopped_early:
            sampler.set_epoch(state.epoch, start=state.batch_in_epoch)
            micro_batches = iter(loader)
            while state.step < total_steps and not state.stopped_early:
                step_start = time.perf_counter()
                group: list[Batch] = list(itertools.islice(micro_batches, tc.grad_accum_steps))
                if not group:
                    break
                # Sum of per-example losses over the whole accumulated batch, divided by its size:
                # the gradient equals that of one batch grad_accum_steps times larger.
                num_examples = sum(len(b["labels"]) for b in group)
                window_tokens += sum(int(b["attention_mask"].sum()) for b in group)  # CPU tensors
                for batch in group:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                        enabled=amp_dtype is not None):
                        logits = model(batch["input_ids"].to(device, non_blocking=True),
                                       batch["attention_mask"].to(device, non_blocking=True))
                    loss = F.cross_entropy(logits.float(), batch["labels"].to(device),
                                           reduction="sum") / num_examples
                    scaler.scale(loss).backward()
                    loss_sum += loss.detach()
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm or math.inf)
                # A non-finite loss makes every gradient non-finite, so the norm alone decides whether
                # the update is skipped (as the fp16 scaler does). A device sync point, once per step.
                finite = bool(torch.isfinite(grad_norm))
                if finite or scaler.is_enabled():
                    scaler.step(optimizer)  # with fp16 the scaler itself skips inf/NaN steps
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.bad_steps = 0 if finite else state.bad_steps + 1
                if state.bad_steps:
                    log.message(f"step {state.step + 1}: non-finite loss or gradient, update skipped "
                                f"({state.bad_steps} in a row)")
                if tc.max_bad_steps and state.bad_steps >= tc.max_bad_steps:
                    raise TrainingDiverged(
                        f"{state.bad_steps} steps in a row had a non-finite loss or gradient (step "
                        f"{state.step + 1}); training stopped. The last good checkpoint is kept in "
                        f"{run_dir / 'checkpoints'}; lower train.lr or use train.max_grad_norm")

                state.step += 1
                state.batch_in_epoch += len(group)
                state.samples_seen += num_examples
                window_samples += num_examples
                end_of_epoch = state.batch_in_epoch >= len(sampler)
                if end_of_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                loop_seconds += time.perf_counter() - step_start

                if state.step % tc.log_every == 0 or state.step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    steps_in_window = (state.step - 1) % tc.log_every + 1
                    log.log_train(state.step, {
                        "loss": loss_sum.item() / steps_in_window,  # a device sync, once per log step
                        "lr": float(scheduler.get_last_lr()[0]),
                        "grad_norm": float(grad_norm),
                        "samples_per_s": window_samples / max(elapsed, 1e-9),
                        "tokens_per_s": window_tokens / max(elapsed, 1e-9),  # non-padding tokens
                        "epoch": state.epoch,
                    })
                    loss_sum.zero_()
                    window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
                done = state.step >= total_steps
                if done or (tc.eval_every and state.step % tc.eval_every == 0) or (
                        not tc.eval_every and end_of_epoch):
                    run_eval()
                if done or state.stopped_early or (
                        tc.checkpoint_every and state.step % tc.checkpoint_every == 0) or (
                        not tc.checkpoint_every and end_of_epoch):
                    checkpoint()
                if end_of_epoch:
                    break

    except BaseException:
        log.close()  # a crash or divergence still leaves complete log files
        raise

    model_dir = _write_model_dir(cfg, run_dir, model, kwargs, data.label_names, state, precision)
    log.message(f"model written to {model_dir}")
    log.close()
    selected = state.best_eval if tc.select == "best" and state.best_eval else state.last_eval
    return TrainResult(run_dir=run_dir, model_dir=model_dir, eval=selected, step=state.step,
                       resumed_from=None if resume_from is None else int(resume_from.name[5:]),
                       label_names=data.label_names, loop_seconds=loop_seconds)


def _write_model_dir(
    cfg: Config, run_dir: Path, model: nn.Module, kwargs: dict[str, Any],
    label_names: tuple[str, ...], state: TrainState, precision: str,
) -> Path:
    """Write model/: the best weights (by train.metric) or the last ones, as train.select says."""
    best_file = run_dir / "best" / "model.safetensors"
    use_best = cfg.train.select == "best" and state.best_eval and best_file.exists()
    weights = load_file(str(best_file)) if use_best else model.state_dict()
    manifest = build_manifest(
        cfg.model.name, kwargs, label_names, cfg.data.max_length,
        extra={
            "training": {
                "run_dir": str(run_dir),
                "selected": "best" if use_best else "last",
                "step": state.best_step if use_best else state.step,
                "total_steps": state.step,
                "metric": cfg.train.metric,
                "eval": {k: v for k, v in (state.best_eval if use_best else state.last_eval).items()},
                "precision": precision,
                "seed": cfg.seed,
            },
            "data": {"text_column": cfg.data.text_column, "label_column": cfg.data.label_column},
        },
    )
    return save_model_dir(run_dir / "model", weights, run_dir / "tokenizer.json", manifest)


def _eval_record(result: EvalResult) -> dict[str, Any]:
    return {**result.scalars(), "confusion": result.confusion, "num_examples": result.num_examples}
