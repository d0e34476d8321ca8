"""The torch training loop, readable top to bottom: one config in, one run directory out.

Each optimizer step (``_step``): fetch grad_accum_steps micro-batches, run forward/backward on each
with the loss normalised over the whole accumulated batch, unscale and clip, step; then log, maybe
evaluate, maybe checkpoint (``_loop``). State that a resume needs lives in TrainState and the
checkpoint. What a run is beyond torch (state, schedule, logger, model folder) is ``kiln.run``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    PreparedData,
    SortedBatchSampler,
    make_loader,
    pad_id,
    prepare_data,
)
from kiln.errors import RunDirError
from kiln.models import init_model, model_kwargs, read_manifest
from kiln.run.checkpoints import abandon_start, resume_point, write_verified_dir
from kiln.run.logger import Logger, NullLogger, RunLogger
from kiln.run.model_dir import write_model_dir
from kiln.run.run_dir import CONFIG_FILE, TOKENIZER, start_run_dir
from kiln.run.schedule import checkpoint_due, eval_due, record_eval, train_result
from kiln.run.state import TrainingDiverged, TrainResult, TrainState, describe_kept
from kiln.train.checkpoint import load_checkpoint, save_checkpoint, save_safetensors
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
from kiln.train.meters import (
    FlopModel,
    count_flops,
    data_wait_advice,
    peak_flops,
    peak_memory_mb,
)
from kiln.train.optim import make_optimizer, make_scheduler, plan_steps
from kiln.train.precision import (
    Precision,
    autocast_dtype,
    resolve_device,
    resolve_precision,
    use_fused_adamw,
)
from kiln.train.profile import DATA_WAIT, PROFILE_DIR, make_profiler
from kiln.train.profile import summarize as summarize_profile
from kiln.train.rng import restore_rng_state, rng_state, seed_everything

BEST_FILE = "model.safetensors"  # in RUN/best/


def train_torch(cfg: Config, *, fresh: bool = False, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` with PyTorch into ``cfg.run_dir``, resuming from its latest checkpoint unless
    ``fresh``.

    Started by torchrun (several processes), each process trains its share of every batch and
    only rank 0 writes; the result is that of one process with the same global batch.

    Raises:
        ConfigError, DataError, RunDirError: bad config, data or run directory.
        TrainingDiverged: too many steps in a row with a non-finite loss or gradient.
    """
    d, device = init_distributed(resolve_device(cfg.train.device))
    try:
        return _train(cfg, d, device, fresh, progress)
    except BaseException:
        if d.is_main:  # a start that fails before its first checkpoint leaves things as they were
            abandon_start(Path(cfg.run_dir))
        raise
    finally:
        shutdown(d)


@dataclass
class Run:
    """What one training process works with, built once by ``_setup``."""

    cfg: Config
    d: Dist
    device: torch.device
    precision: Precision
    data: PreparedData
    kwargs: dict[str, Any]  # the model's constructor arguments
    model: nn.Module  # the plain module: its state dict is what gets saved
    net: nn.Module  # what a step runs: the model under DDP/FSDP and torch.compile
    flops: FlopModel
    peak: tuple[float, str]  # FLOP/s per device, and where the figure comes from
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    sampler: EpochBatchSampler
    loader: Any
    eval_loader: Any
    total_steps: int
    global_batch: int
    resume_from: Path | None
    state: TrainState = field(default_factory=TrainState)
    log: Logger = field(default_factory=NullLogger)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def tc(self) -> TrainConfig:
        return self.cfg.train

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.precision.name)


def _train(
    cfg: Config, d: Dist, device: torch.device, fresh: bool, progress: bool | None
) -> TrainResult:
    r = _setup(cfg, d, device, fresh)
    if d.is_main:
        r.log = RunLogger(r.run_dir, r.total_steps, start_step=r.state.step, progress=progress)
    _log_start(r)
    try:
        loop_seconds = _loop(r)
    except BaseException:
        r.log.close()  # a crash or divergence still leaves complete log files
        raise
    weights = full_model_state(r.model)
    if d.is_main:
        _write_model(r, weights)
        kept = describe_kept(read_manifest(r.run_dir / "model")["training"])
        r.log.message(f"model written to {r.run_dir / 'model'}: {kept}")
    r.log.close()
    barrier(d)
    return train_result(r.run_dir, r.run_dir / "model", r.state, r.tc, r.resume_from,
                        r.data.label_names, loop_seconds)


def _setup(cfg: Config, d: Dist, device: torch.device, fresh: bool) -> Run:
    """Run directory, data, model, optimizer, loaders; restored from the latest checkpoint."""
    run_dir, tc = Path(cfg.run_dir), cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    # Rank 0 prepares the run directory, the tokenizer and the built-in data; the other ranks
    # then find them in place and only read.
    resume_from = start_run_dir(run_dir, cfg, fresh) if d.is_main else None
    data = prepare_data(cfg, run_dir) if d.is_main else None
    barrier(d)
    if not d.is_main:
        resume_from, data = resume_point(run_dir), prepare_data(cfg, run_dir)
    assert data is not None
    seed_everything(cfg.seed)  # the same initial weights on every rank
    pad = pad_id(data.tokenizer)
    kwargs = model_kwargs(cfg.model, vocab_size=data.tokenizer.get_vocab_size(),
                          num_labels=len(data.label_names), max_length=cfg.data.max_length,
                          pad_id=pad)
    model = init_model(cfg.model, kwargs).to(device)
    flops = count_flops(model, data.tokenizer.get_vocab_size(), cfg.data.max_length, device)
    checkpoint = load_checkpoint(resume_from, device) if resume_from is not None else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint[0])
    precision = _resolve_precision(tc, d, device, checkpoint[2] if checkpoint else None)
    if d.rank:
        seed_everything(cfg.seed + 1_000_003 * d.rank)  # different dropout masks on each rank
    net = _wrap(model, cfg, d, device)  # before the optimizer: FSDP replaces the parameters
    optimizer = make_optimizer(model, tc, fused=use_fused_adamw(precision.name, device)
                               and not (d.enabled and tc.strategy == "fsdp"))
    sampler = EpochBatchSampler(data.train.lengths, tc.batch_size, cfg.seed,
                                cfg.data.bucket_by_length, d.rank, d.world_size)
    loader = make_loader(data.train, sampler, cfg.data, pad, cfg.seed)
    eval_loader = make_loader(
        data.eval, SortedBatchSampler(data.eval.lengths, 2 * tc.batch_size, d.rank, d.world_size),
        cfg.data, pad, cfg.seed)
    _, total_steps = plan_steps(len(sampler), tc)
    r = Run(cfg=cfg, d=d, device=device, precision=precision, data=data, kwargs=kwargs,
            model=model, net=net, flops=flops, peak=peak_flops(device, precision.name),
            optimizer=optimizer, scheduler=make_scheduler(optimizer, tc, total_steps),
            scaler=torch.amp.GradScaler(device.type, enabled=precision.name == "fp16"),
            sampler=sampler, loader=loader, eval_loader=eval_loader, total_steps=total_steps,
            global_batch=tc.batch_size * tc.grad_accum_steps * d.world_size,
            resume_from=resume_from)
    if checkpoint is not None:
        _restore(r, checkpoint[1], checkpoint[2])
    return r


def _resolve_precision(tc: TrainConfig, d: Dist, device: torch.device,
                       trainer_state: dict[str, Any] | None) -> Precision:
    """train.precision for this run: ``auto`` as decided when the run started (on resume), and
    the same on every rank (each times its own matmuls, and near the threshold they can differ)."""
    precision = resolve_precision(tc.precision, device,
                                  started=(trainer_state or {}).get("precision"))
    votes = int(all_reduce_sum(d, [precision.name == "bf16"], device)[0])
    if 0 < votes < d.world_size:
        return Precision("fp32", f"auto: bf16 measured faster on only {votes} of "
                                 f"{d.world_size} processes")
    return precision


def _wrap(model: nn.Module, cfg: Config, d: Dist, device: torch.device) -> nn.Module:
    """The module a step runs: sharded (FSDP) or replicated (DDP) over processes, compiled."""
    net = shard_fsdp(model) if cfg.train.strategy == "fsdp" and d.enabled else wrap_ddp(
        model, d, device)
    return cast(nn.Module, torch.compile(net)) if cfg.train.compile else net


def _restore(r: Run, optim_state: Any, trainer_state: dict[str, Any]) -> None:
    """Optimizer, schedule, scaler, sampler position, progress and RNG states of a checkpoint."""
    load_optimizer_state(r.model, r.optimizer, optim_state)
    r.scheduler.load_state_dict(trainer_state["scheduler"])
    r.scaler.load_state_dict(trainer_state["scaler"])
    r.sampler.load_state_dict(trainer_state["sampler"])
    r.state.load_state_dict(trainer_state["progress"])
    rngs = trainer_state.get("rng_ranks", [trainer_state["rng"]])
    restore_rng_state(rngs[r.d.rank] if r.d.rank < len(rngs) else rngs[0])
    _adapt_position(trainer_state, r.state, r.sampler, r.global_batch, r.tc, r.d)


def _log_start(r: Run) -> None:
    tc, d, data = r.tc, r.d, r.data
    r.log.message(
        f"kiln: {len(data.train)} train / {len(data.eval)} eval examples, "
        f"{len(data.label_names)} labels, {sum(p.numel() for p in r.model.parameters()):,} "
        f"parameters, device {r.device.type}, precision {r.precision.name} "
        f"({r.precision.reason}), global batch "
        f"{r.global_batch} ({tc.batch_size} per device x {tc.grad_accum_steps} accumulation x "
        f"{d.world_size} processes{', ' + tc.strategy if d.enabled else ''}), "
        f"{r.total_steps} steps" + (f", resumed at step {r.state.step}" if r.resume_from else ""))
    peak, peak_source = r.peak
    r.log.message(f"MFU measured against {peak / 1e12:.2f} TFLOP/s per device ({peak_source})"
                  if peak else f"no MFU: {peak_source}")
    if tc.strategy == "fsdp" and not d.enabled:
        r.log.message("train.strategy=fsdp in one process: nothing to shard, training unsharded "
                      "(start several with kiln train --nproc-per-node N)")
    if r.state.micro_split > 1:
        r.log.message(f"micro-batches split in {r.state.micro_split} (an earlier out-of-memory "
                      "error)")


@dataclass
class Window:
    """Per log window, summed over ranks at each log step: loss, examples, non-padding tokens,
    model FLOPs, seconds waiting for data, seconds in steps."""

    totals: torch.Tensor
    loss_sum: torch.Tensor  # stays on the device; read at log steps only
    data_wait_warned: bool = False


def _loop(r: Run) -> float:
    """Train to ``total_steps`` (or an early stop); returns the seconds spent in steps."""
    state, tc = r.state, r.tc
    profiler = _start_profiler(r)
    window = Window(torch.zeros(6, dtype=torch.float64), torch.zeros((), device=r.device))
    loop_seconds = 0.0
    r.model.train()
    try:
        while state.step < r.total_steps and not state.stopped_early:
            r.sampler.set_epoch(state.epoch, start=state.batch_in_epoch)
            micro_batches = iter(r.loader)
            while state.step < r.total_steps and not state.stopped_early:
                step_start = time.perf_counter()
                # marked for the profiler only: record_function costs a dispatcher call per step
                with record_function(DATA_WAIT) if profiler else contextlib.nullcontext():
                    group: list[Batch] = list(itertools.islice(micro_batches, tc.grad_accum_steps))
                data_wait = time.perf_counter() - step_start
                if not group:
                    break
                step_loss, grad_norm, local_examples = _step(r, group)
                end_of_epoch = state.batch_in_epoch >= len(r.sampler)
                if end_of_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                step_seconds = time.perf_counter() - step_start
                loop_seconds += step_seconds
                _add_to_window(r, window, group, step_loss, local_examples, data_wait,
                               step_seconds)
                profiler = _advance_profiler(r, profiler)
                if state.step % tc.log_every == 0 or state.step == r.total_steps:
                    _log_window(r, window, grad_norm)
                done = state.step >= r.total_steps
                if eval_due(state, tc, True, end_of_epoch, done):
                    _evaluate(r)
                if checkpoint_due(state, tc, True, end_of_epoch, done):
                    _checkpoint(r)
                if end_of_epoch:
                    break
    finally:
        if profiler is not None:
            profiler.stop()
    return loop_seconds


def _step(r: Run, group: list[Batch]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step on a group of micro-batches; returns the loss (this rank's share, on
    the device), the gradient norm and this rank's example count."""
    state, tc, d = r.state, r.tc, r.d
    # Sum of per-example losses over the whole accumulated (global) batch, divided by its size:
    # the gradient equals that of one batch grad_accum_steps x world_size times larger.
    local_examples = sum(len(b["labels"]) for b in group)
    num_examples = int(all_reduce_sum(d, [local_examples], r.device)[0])
    while True:
        try:
            step_loss = _forward_backward(r, group, num_examples)
            break
        except torch.OutOfMemoryError:
            if not _halve_micro_batch(r, group):
                raise
    r.scaler.unscale_(r.optimizer)  # clip the true gradients, not the fp16-scaled ones
    grad_norm = _full(nn.utils.clip_grad_norm_(r.model.parameters(), tc.max_grad_norm or math.inf))
    # A non-finite loss makes every gradient non-finite, so the norm alone decides whether the
    # update is skipped (as the fp16 scaler does). A device sync point, once per step.
    finite = bool(torch.isfinite(grad_norm))
    if finite or r.scaler.is_enabled():
        r.scaler.step(r.optimizer)  # with fp16 the scaler itself skips inf/NaN steps
    r.scaler.update()
    r.scheduler.step()
    r.optimizer.zero_grad(set_to_none=True)
    _count_bad_step(r, finite)
    state.step += 1
    state.batch_in_epoch += len(group)
    state.samples_seen += num_examples
    return step_loss, grad_norm, local_examples


def _forward_backward(r: Run, group: list[Batch], num_examples: int) -> torch.Tensor:
    """Gradients of the group's summed loss / num_examples; returns that loss (this rank's
    share). Gradients are synchronised between ranks only on the group's last micro-batch."""
    chunks = [c for b in group for c in _split_batch(b, r.state.micro_split)]
    total = torch.zeros((), device=r.device)
    amp = r.amp_dtype
    for i, chunk in enumerate(chunks):
        with _gradient_sync(r.net, r.model, r.d, r.tc.strategy, sync=i == len(chunks) - 1), \
                torch.autocast(r.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = r.net(chunk["input_ids"].to(r.device, non_blocking=True),
                           chunk["attention_mask"].to(r.device, non_blocking=True))
            loss = F.cross_entropy(logits.float(), chunk["labels"].to(r.device),
                                   reduction="sum") / num_examples
            # DDP and FSDP average gradients over ranks; undo that to get the global sum.
            r.scaler.scale(loss * r.d.world_size).backward()
        total += loss.detach()
    return total


def _count_bad_step(r: Run, finite: bool) -> None:
    """Count steps skipped in a row for a non-finite loss or gradient; too many stop the run.

    Raises:
        TrainingDiverged: ``train.max_bad_steps`` in a row.
    """
    state, tc = r.state, r.tc
    state.bad_steps = 0 if finite else state.bad_steps + 1
    if state.bad_steps:
        r.log.message(f"step {state.step + 1}: non-finite loss or gradient, update skipped "
                      f"({state.bad_steps} in a row)")
    if tc.max_bad_steps and state.bad_steps >= tc.max_bad_steps:
        raise TrainingDiverged(
            f"{state.bad_steps} steps in a row had a non-finite loss or gradient (step "
            f"{state.step + 1}); training stopped. The last good checkpoint is kept in "
            f"{r.run_dir / 'checkpoints'}; lower train.lr or use train.max_grad_norm")


def _add_to_window(r: Run, window: Window, group: list[Batch], step_loss: torch.Tensor,
                   local_examples: int, data_wait: float, step_seconds: float) -> None:
    window.totals += torch.tensor([
        0.0, local_examples,
        sum(int(b["attention_mask"].sum()) for b in group),  # CPU tensors
        sum(r.flops.train_flops(*b["input_ids"].shape) for b in group),
        data_wait, step_seconds], dtype=torch.float64)
    window.loss_sum += step_loss


def _log_window(r: Run, window: Window, grad_norm: torch.Tensor) -> None:
    """Log the window's means and rates (summed over ranks), then start a new window."""
    state, tc, d = r.state, r.tc, r.d
    steps_in_window = (state.step - 1) % tc.log_every + 1
    window.totals[0] = window.loss_sum.item()  # a device sync, once per log step
    window.loss_sum.zero_()
    reduced = all_reduce_tensor(d, window.totals.to(r.device)).tolist()  # nccl: on device
    loss, examples, tokens, flop, wait, seconds = reduced
    seconds, wait = seconds / d.world_size, wait / d.world_size  # ranks run in step: mean time
    flops_per_s = flop / max(seconds, 1e-9)
    peak, _ = r.peak
    scalars = {
        "loss": loss / steps_in_window,
        "lr": float(r.scheduler.get_last_lr()[0]),
        "grad_norm": float(grad_norm),
        "samples_per_s": examples / max(seconds, 1e-9),
        "tokens_per_s": tokens / max(seconds, 1e-9),  # non-padding tokens
        "step_time_s": seconds / steps_in_window,
        "data_wait_share": wait / max(seconds, 1e-9),
        "flops_per_s": flops_per_s,
        "mfu": flops_per_s / (peak * d.world_size) if peak else 0.0,
        "peak_memory_mb": peak_memory_mb(r.device),
        "epoch": state.epoch,
    }
    r.log.log_train(state.step, scalars)
    # The first window includes DataLoader start-up; judge from the second on.
    if (tc.data_wait_warning and not window.data_wait_warned and state.step > tc.log_every
            and scalars["data_wait_share"] > tc.data_wait_warning):
        r.log.message("warning: " + data_wait_advice(
            scalars["data_wait_share"], r.cfg.data.num_workers, r.cfg.data.pin_memory,
            r.device.type == "cuda"))
        window.data_wait_warned = True
    window.totals.zero_()


def _evaluate(r: Run) -> None:
    """Evaluate; keep the weights when they are the best so far."""
    # On CPU in fp32 even when the steps run in bf16: the model ships in fp32, so the accuracy that
    # selects and reports it is the shipped model's (the same `kiln eval` gives).
    amp = r.amp_dtype if r.device.type == "cuda" else None
    result = evaluate(r.model, r.eval_loader, len(r.data.label_names), r.device, amp,
                      reduce=lambda t: all_reduce_tensor(r.d, t))
    # every rank sees the same reduced result and takes the same branch
    if record_eval(r.state, result, r.tc, r.log):
        weights = full_model_state(r.model)  # a collective: every rank takes part
        if r.d.is_main:
            write_verified_dir(r.run_dir / "best",
                               lambda tmp: save_safetensors(weights, tmp / BEST_FILE))


def _checkpoint(r: Run) -> None:
    model_state = full_model_state(r.model)  # collectives: every rank takes part
    optim_state = full_optimizer_state(r.model, r.optimizer)
    rngs = all_gather(r.d, rng_state())
    if r.d.is_main:
        save_checkpoint(
            r.run_dir, r.state.step, model_state, optim_state,
            {"scheduler": r.scheduler.state_dict(), "scaler": r.scaler.state_dict(),
             "sampler": r.sampler.state_dict(), "progress": r.state.state_dict(),
             "rng": rngs[0], "rng_ranks": rngs, "world_size": r.d.world_size,
             "global_batch": r.global_batch,
             "global_micro_batch": r.tc.batch_size * r.d.world_size,
             "precision": {"name": r.precision.name, "reason": r.precision.reason,
                           "device": r.device.type}},
            keep=r.tc.keep_checkpoints,
            extra_files=(r.run_dir / CONFIG_FILE, r.run_dir / TOKENIZER),
        )
    barrier(r.d)


def _start_profiler(r: Run) -> Any:
    if not (r.cfg.profile and r.d.is_main and r.state.step < r.cfg.profiler.steps):
        return None
    profiler = make_profiler(r.cfg.profiler, r.run_dir / "tensorboard" / PROFILE_DIR, r.device)
    profiler.start()
    return profiler


def _advance_profiler(r: Run, profiler: Any) -> Any:
    """Step the profiler; once its steps are done, stop it and print its summary."""
    if profiler is None:
        return None
    profiler.step()
    if r.state.step < r.cfg.profiler.steps:
        return profiler
    profiler.stop()
    r.log.message(summarize_profile(profiler, r.device, r.cfg.profiler.row_limit))
    r.log.message(f"profiler trace written to {r.run_dir / 'tensorboard' / PROFILE_DIR}")
    return None


def _write_model(r: Run, last_weights: dict[str, torch.Tensor]) -> Path:
    best_file = r.run_dir / "best" / BEST_FILE

    def write_weights(path: Path, use_best: bool) -> None:
        save_safetensors(load_file(str(best_file)) if use_best else last_weights, path)

    return write_model_dir(r.cfg, r.run_dir, r.state, r.kwargs, r.data.label_names,
                           r.precision.name, best_file=best_file, write_weights=write_weights,
                           training={"precision_reason": r.precision.reason},
                           report=r.log.message)


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


def _halve_micro_batch(r: Run, group: list[Batch]) -> bool:
    """After torch.OutOfMemoryError: drop the partial gradients and run the same micro-batches in
    twice as many pieces (the global batch, and so the update, stay the same).

    Returns False when that cannot help: a piece is already one example, or several processes run
    (the other ranks could not follow the change).
    """
    state = r.state
    largest = max(len(b["labels"]) for b in group)
    piece = -(-largest // state.micro_split)
    if piece <= 1 or r.d.enabled:
        return False
    r.optimizer.zero_grad(set_to_none=True)
    if r.device.type == "cuda":
        torch.cuda.empty_cache()
    state.micro_split *= 2
    r.log.message(
        f"out of memory at a micro-batch of {piece} examples: continuing with micro-batches of "
        f"{-(-largest // state.micro_split)} and {r.tc.grad_accum_steps * state.micro_split} "
        f"accumulation steps; the global batch ({r.global_batch}) and the update are unchanged")
    return True


def _full(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (under FSDP clip_grad_norm_ returns a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
