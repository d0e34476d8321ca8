"""The training loop, readable top to bottom: one config in, one run directory out.

Each optimizer step: fetch grad_accum_steps micro-batches, run forward/backward on each with the
loss normalised over the whole accumulated batch, unscale and clip, step, log, maybe evaluate,
maybe checkpoint. State that a resume needs lives in TrainState and the checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from torch.profiler import record_function

from kiln.config import Config, TrainConfig
from kiln.data import (
    Batch,
    EpochBatchSampler,
    SortedBatchSampler,
    make_loader,
    pad_id,
    prepare_data,
)
from kiln.errors import RunDirError
from kiln.files import write_atomic
from kiln.models import build_manifest, init_model, model_kwargs, save_model_dir
from kiln.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_safetensors,
)
from kiln.train.distributed import (
    Dist,
    all_gather,
    all_reduce_sum,
    all_reduce_tensor,
    barrier,
    full_model_state,
    full_optimizer_state,
    init_distributed,
    load_optimizer_state,
    shard_fsdp,
    shutdown,
    wrap_ddp,
)
from kiln.train.evaluate import evaluate
from kiln.train.logger import NullLogger, RunLogger
from kiln.train.meters import count_flops, data_wait_advice, peak_flops, peak_memory_mb
from kiln.train.metrics import EvalResult
from kiln.train.optim import make_optimizer, make_scheduler, plan_steps
from kiln.train.precision import autocast_dtype, resolve_device, resolve_precision
from kiln.train.profile import DATA_WAIT, PROFILE_DIR, make_profiler
from kiln.train.profile import summarize as summarize_profile
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


def train(cfg: Config, *, fresh: bool = False, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` into ``cfg.run_dir``, resuming from its latest checkpoint unless ``fresh``.

    Started by torchrun (several processes), each process trains its share of every batch and
    only rank 0 writes; the result is that of one process with the same global batch.
    ``framework=keras`` hands the same config to the Keras path (``kiln.keras``).

    Raises:
        ConfigError, DataError, RunDirError: bad config, data or run directory.
        TrainingDiverged: too many steps in a row with a non-finite loss or gradient.
    """
    if cfg.framework == "keras":
        from kiln.keras import train_keras  # imports TensorFlow only now

        return train_keras(cfg, fresh=fresh, progress=progress)

    d, device = init_distributed(resolve_device(cfg.train.device))
    try:
        return _train(cfg, d, device, fresh, progress)
    finally:
        shutdown(d)


def _train(
    cfg: Config, d: Dist, device: torch.device, fresh: bool, progress: bool | None
) -> TrainResult:
    run_dir, tc = Path(cfg.run_dir), cfg.train
    precision = resolve_precision(tc.precision, device)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    # Rank 0 prepares the run directory, the tokenizer and the built-in data; the other ranks
    # then find them in place and only read.
    if d.is_main:
        resume_from = start_run_dir(run_dir, cfg, fresh)
        data = prepare_data(cfg, run_dir)
    barrier(d)
    if not d.is_main:
        resume_from = latest_checkpoint(run_dir)
        data = prepare_data(cfg, run_dir)
    seed_everything(cfg.seed)  # the same initial weights on every rank

    pad = pad_id(data.tokenizer)
    kwargs = model_kwargs(cfg.model, vocab_size=data.tokenizer.get_vocab_size(),
                          num_labels=len(data.label_names), max_length=cfg.data.max_length,
                          pad_id=pad)
    model = init_model(cfg.model, kwargs).to(device)
    flops = count_flops(model, data.tokenizer.get_vocab_size(), cfg.data.max_length, device)
    checkpoint_state: tuple[Any, Any, Any] | None = None
    if resume_from is not None:
        checkpoint_state = load_checkpoint(resume_from, device)
        model.load_state_dict(checkpoint_state[0])
    if d.rank:
        seed_everything(cfg.seed + 1_000_003 * d.rank)  # different dropout masks on each rank
    # `model` stays the plain module (its state dict is what gets saved); `net` is what a step runs.
    net: nn.Module
    if tc.strategy == "fsdp" and d.enabled:
        net = shard_fsdp(model)
    else:
        net = wrap_ddp(model, d, device)
    if tc.compile:
        net = cast(nn.Module, torch.compile(net))
    optimizer = make_optimizer(model, tc)
    sampler = EpochBatchSampler(data.train.lengths, tc.batch_size, cfg.seed,
                                cfg.data.bucket_by_length, d.rank, d.world_size)
    loader = make_loader(data.train, sampler, cfg.data, pad, cfg.seed)
    eval_loader = make_loader(
        data.eval, SortedBatchSampler(data.eval.lengths, 2 * tc.batch_size, d.rank, d.world_size),
        cfg.data, pad, cfg.seed)
    _, total_steps = plan_steps(len(sampler), tc)
    scheduler = make_scheduler(optimizer, tc, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    amp_dtype = autocast_dtype(precision)
    state = TrainState()
    global_batch = tc.batch_size * tc.grad_accum_steps * d.world_size
    if checkpoint_state is not None:
        _, optim_state, trainer_state = checkpoint_state
        load_optimizer_state(model, optimizer, optim_state)
        scheduler.load_state_dict(trainer_state["scheduler"])
        scaler.load_state_dict(trainer_state["scaler"])
        sampler.load_state_dict(trainer_state["sampler"])
        state.load_state_dict(trainer_state["progress"])
        rngs = trainer_state.get("rng_ranks", [trainer_state["rng"]])
        restore_rng_state(rngs[d.rank] if d.rank < len(rngs) else rngs[0])
        _adapt_position(trainer_state, state, sampler, global_batch, tc, d)
        del checkpoint_state

    log: RunLogger | NullLogger = (
        RunLogger(run_dir, total_steps, start_step=state.step, progress=progress)
        if d.is_main else NullLogger())
    peak, peak_source = peak_flops(device, precision)
    log.message(
        f"kiln: {len(data.train)} train / {len(data.eval)} eval examples, "
        f"{len(data.label_names)} labels, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"device {device.type}, precision {precision}, global batch {global_batch} "
        f"({tc.batch_size} per device x {tc.grad_accum_steps} accumulation x {d.world_size} "
        f"processes{', ' + tc.strategy if d.enabled else ''}), {total_steps} steps"
        + (f", resumed at step {state.step}" if resume_from else "")
    )
    log.message(f"MFU measured against {peak / 1e12:.2f} TFLOP/s per device ({peak_source})"
                if peak else f"no MFU: {peak_source}")
    if tc.strategy == "fsdp" and not d.enabled:
        log.message("train.strategy=fsdp in one process: nothing to shard, training unsharded "
                    "(start several with kiln train --nproc-per-node N)")
    if state.micro_split > 1:
        log.message(f"micro-batches split in {state.micro_split} (an earlier out-of-memory error)")

    def checkpoint() -> None:
        model_state = full_model_state(model)  # collectives: every rank takes part
        optim_state = full_optimizer_state(model, optimizer)
        rngs = all_gather(d, rng_state())
        if d.is_main:
            save_checkpoint(
                run_dir, state.step, model_state, optim_state,
                {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "sampler": sampler.state_dict(), "progress": state.state_dict(),
                 "rng": rngs[0], "rng_ranks": rngs, "world_size": d.world_size,
                 "global_batch": global_batch, "global_micro_batch": tc.batch_size * d.world_size},
                keep=tc.keep_checkpoints, extra_files=(run_dir / CONFIG_FILE,),
            )
        barrier(d)

    def run_eval() -> None:
        result = evaluate(model, eval_loader, len(data.label_names), device, amp_dtype,
                          reduce=lambda t: all_reduce_tensor(d, t))
        log.log_eval(state.step, result, state.epoch)
        score = result.loss if tc.metric == "loss" else getattr(result, tc.metric)
        improved = state.best_metric is None or (
            score < state.best_metric if tc.metric == "loss" else score > state.best_metric)
        if improved:  # every rank sees the same reduced result and takes the same branch
            state.best_metric, state.best_step = score, state.step
            state.best_eval = eval_record(result)
            state.evals_without_improvement = 0
            weights = full_model_state(model)
            if d.is_main:
                write_atomic(run_dir / "best" / "model.safetensors",
                             lambda p: save_safetensors(weights, p))
        else:
            state.evals_without_improvement += 1
            if tc.early_stopping_patience and state.evals_without_improvement >= tc.early_stopping_patience:
                state.stopped_early = True
                log.message(f"early stopping at step {state.step}: no {tc.metric} improvement in "
                            f"{state.evals_without_improvement} evaluations")
        state.last_eval = eval_record(result)

    def forward_backward(group: list[Batch], num_examples: int) -> torch.Tensor:
        """Gradients of the group's summed loss / num_examples; returns that loss (this rank's
        share). Gradients are synchronised between ranks only on the group's last micro-batch."""
        chunks = [c for b in group for c in _split_batch(b, state.micro_split)]
        total = torch.zeros((), device=device)
        for i, chunk in enumerate(chunks):
            with _gradient_sync(net, model, d, tc.strategy, sync=i == len(chunks) - 1), \
                    torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                   enabled=amp_dtype is not None):
                logits = net(chunk["input_ids"].to(device, non_blocking=True),
                             chunk["attention_mask"].to(device, non_blocking=True))
                loss = F.cross_entropy(logits.float(), chunk["labels"].to(device),
                                       reduction="sum") / num_examples
                # DDP and FSDP average gradients over ranks; undo that to get the global sum.
                scaler.scale(loss * d.world_size).backward()
            total += loss.detach()
        return total

    profiler = make_profiler(cfg.profiler, run_dir / "tensorboard" / PROFILE_DIR, device) \
        if cfg.profile and d.is_main and state.step < cfg.profiler.steps else None
    if profiler is not None:
        profiler.start()
    try:
        model.train()
        loop_seconds = 0.0
        # Per log window, summed over ranks at each log step: loss, examples, non-padding tokens,
        # model FLOPs, seconds waiting for data, seconds in steps.
        window = torch.zeros(6, dtype=torch.float64)
        loss_sum = torch.zeros((), device=device)
        data_wait_warned = False
        while state.step < total_steps and not state.stopped_early:
            sampler.set_epoch(state.epoch, start=state.batch_in_epoch)
            micro_batches = iter(loader)
            while state.step < total_steps and not state.stopped_early:
                step_start = time.perf_counter()
                # marked for the profiler only: record_function costs a dispatcher call per step
                with record_function(DATA_WAIT) if profiler is not None else contextlib.nullcontext():
                    group: list[Batch] = list(itertools.islice(micro_batches, tc.grad_accum_steps))
                data_wait = time.perf_counter() - step_start
                if not group:
                    break
                # Sum of per-example losses over the whole accumulated (global) batch, divided by
                # its size: the gradient equals that of one batch grad_accum_steps x world_size
                # times larger.
                local_examples = sum(len(b["labels"]) for b in group)
                num_examples = int(all_reduce_sum(d, [local_examples], device)[0])
                while True:
                    try:
                        step_loss = forward_backward(group, num_examples)
                        break
                    except torch.OutOfMemoryError:
                        if not _halve_micro_batch(state, group, optimizer, device, d, log, tc,
                                                  global_batch):
                            raise
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                grad_norm = _full(nn.utils.clip_grad_norm_(model.parameters(),
                                                           tc.max_grad_norm or math.inf))
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
                end_of_epoch = state.batch_in_epoch >= len(sampler)
                if end_of_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                step_seconds = time.perf_counter() - step_start
                loop_seconds += step_seconds
                window += torch.tensor([
                    0.0, local_examples,
                    sum(int(b["attention_mask"].sum()) for b in group),  # CPU tensors
                    sum(flops.train_flops(*b["input_ids"].shape) for b in group),
                    data_wait, step_seconds], dtype=torch.float64)
                loss_sum += step_loss  # stays on the device; read at log steps only
                if profiler is not None:
                    profiler.step()
                    if state.step >= cfg.profiler.steps:
                        profiler.stop()
                        log.message(summarize_profile(profiler, device, cfg.profiler.row_limit))
                        log.message(f"profiler trace written to {run_dir / 'tensorboard' / PROFILE_DIR}")
                        profiler = None

                if state.step % tc.log_every == 0 or state.step == total_steps:
                    steps_in_window = (state.step - 1) % tc.log_every + 1
                    window[0] = loss_sum.item()  # a device sync, once per log step
                    loss_sum.zero_()
                    reduced = all_reduce_tensor(d, window.to(device)).tolist()  # nccl: on device
                    loss, examples, tokens, flop, wait, seconds = reduced
                    seconds /= d.world_size  # the ranks run in step: mean time per rank
                    wait /= d.world_size
                    flops_per_s = flop / max(seconds, 1e-9)
                    scalars = {
                        "loss": loss / steps_in_window,
                        "lr": float(scheduler.get_last_lr()[0]),
                        "grad_norm": float(grad_norm),
                        "samples_per_s": examples / max(seconds, 1e-9),
                        "tokens_per_s": tokens / max(seconds, 1e-9),  # non-padding tokens
                        "step_time_s": seconds / steps_in_window,
                        "data_wait_share": wait / max(seconds, 1e-9),
                        "flops_per_s": flops_per_s,
                        "mfu": flops_per_s / (peak * d.world_size) if peak else 0.0,
                        "peak_memory_mb": peak_memory_mb(device),
                        "epoch": state.epoch,
                    }
                    log.log_train(state.step, scalars)
                    # The first window includes DataLoader start-up; judge from the second on.
                    if (tc.data_wait_warning and not data_wait_warned and state.step > tc.log_every
                            and scalars["data_wait_share"] > tc.data_wait_warning):
                        log.message("warning: " + data_wait_advice(
                            scalars["data_wait_share"], cfg.data.num_workers, cfg.data.pin_memory,
                            device.type == "cuda"))
                        data_wait_warned = True
                    window.zero_()
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
    finally:
        if profiler is not None:
            profiler.stop()

    weights = full_model_state(model)
    model_dir = run_dir / "model"
    if d.is_main:
        _write_model_dir(cfg, run_dir, weights, kwargs, data.label_names, state, precision)
        log.message(f"model written to {model_dir}")
    log.close()
    barrier(d)
    selected = state.best_eval if tc.select == "best" and state.best_eval else state.last_eval
    return TrainResult(run_dir=run_dir, model_dir=model_dir, eval=selected, step=state.step,
                       resumed_from=None if resume_from is None else int(resume_from.name[5:]),
                       label_names=data.label_names, loop_seconds=loop_seconds)


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


def _adapt_position(
    saved: dict[str, Any], state: TrainState, sampler: EpochBatchSampler, global_batch: int,
    tc: TrainConfig, d: Dist,
) -> None:
    """Resume at another world size (e.g. an FSDP run on 4 ranks continued on 2): the global batch
    must stay the same; the position in the epoch is kept in examples.

    Raises:
        RunDirError: the global batch (batch_size x grad_accum_steps x processes) would change.
    """
    if saved.get("global_batch", global_batch) != global_batch:
        raise RunDirError(
            f"the run was trained with a global batch of {saved['global_batch']} and this resume "
            f"would use {global_batch} ({tc.batch_size} per device x {tc.grad_accum_steps} "
            f"accumulation x {d.world_size} processes); set train.batch_size or "
            "train.grad_accum_steps so that the global batch stays the same")
    before, now = saved.get("global_micro_batch", sampler.batch_size), sampler.batch_size
    if before != now:
        sampler.start = state.batch_in_epoch = state.batch_in_epoch * before // now


def _split_batch(batch: Batch, pieces: int) -> list[Batch]:
    """``batch`` cut into ``pieces`` smaller micro-batches along the batch dimension."""
    if pieces == 1:
        return [batch]
    parts = {k: torch.tensor_split(v, pieces) for k, v in batch.items()}
    return [{k: v[i] for k, v in parts.items()} for i in range(pieces) if len(parts["labels"][i])]


@contextlib.contextmanager
def _gradient_sync(
    net: nn.Module, model: nn.Module, d: Dist, strategy: str, sync: bool
) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps; sync on the group's last one."""
    if not d.enabled:
        yield
    elif strategy == "fsdp":  # (with several processes)
        cast(Any, model).set_requires_gradient_sync(sync)  # FSDP2's per-module switch
        yield
    else:
        ddp: Any = getattr(net, "_orig_mod", net)  # under torch.compile
        with contextlib.nullcontext() if sync else ddp.no_sync():
            yield


def _halve_micro_batch(
    state: TrainState, group: list[Batch], optimizer: torch.optim.Optimizer,
    device: torch.device, d: Dist, log: RunLogger | NullLogger, tc: TrainConfig,
    global_batch: int,
) -> bool:
    """After torch.OutOfMemoryError: drop the partial gradients and run the same micro-batches in
    twice as many pieces (the global batch, and so the update, stay the same).

    Returns False when that cannot help: a piece is already one example, or several processes run
    (the other ranks could not follow the change).
    """
    largest = max(len(b["labels"]) for b in group)
    piece = -(-largest // state.micro_split)
    if piece <= 1 or d.enabled:
        return False
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    state.micro_split *= 2
    log.message(
        f"out of memory at a micro-batch of {piece} examples: continuing with micro-batches of "
        f"{-(-largest // state.micro_split)} and {tc.grad_accum_steps * state.micro_split} "
        f"accumulation steps; the global batch ({global_batch}) and the update are unchanged")
    return True


def _full(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (under FSDP clip_grad_norm_ returns a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def _write_model_dir(
    cfg: Config, run_dir: Path, last_weights: dict[str, torch.Tensor], kwargs: dict[str, Any],
    label_names: tuple[str, ...], state: TrainState, precision: str,
) -> Path:
    """Write model/: the best weights (by train.metric) or the last ones, as train.select says."""
    best_file = run_dir / "best" / "model.safetensors"
    use_best = cfg.train.select == "best" and state.best_eval and best_file.exists()
    weights = load_file(str(best_file)) if use_best else last_weights
    manifest = build_manifest(cfg.model.name, kwargs, label_names, cfg.data.max_length,
                              extra=manifest_extra(cfg, run_dir, state, bool(use_best), precision))
    return save_model_dir(run_dir / "model", weights, run_dir / "tokenizer.json", manifest)


def manifest_extra(cfg: Config, run_dir: Path, state: TrainState, use_best: bool, precision: str,
                   **training: Any) -> dict[str, Any]:
    """The manifest's "training" and "data" records: which weights were kept and how they scored
    (``training`` adds framework-specific entries)."""
    return {
        "training": {
            "run_dir": str(run_dir),
            "selected": "best" if use_best else "last",
            "step": state.best_step if use_best else state.step,
            "total_steps": state.step,
            "metric": cfg.train.metric,
            "eval": dict(state.best_eval if use_best else state.last_eval),
            "precision": precision,
            **training,
            "seed": cfg.seed,
        },
        "data": {"text_column": cfg.data.text_column, "label_column": cfg.data.label_column},
    }


def eval_record(result: EvalResult) -> dict[str, Any]:
    """An evaluation as kept in TrainState and the manifest: scalars, confusion, example count."""
    return {**result.scalars(), "confusion": result.confusion, "num_examples": result.num_examples}
