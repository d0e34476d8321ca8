"""`kiln train framework=keras`: the same config and run directory, trained with Keras ``fit``.

Read top to bottom: resolve device/precision/strategy, prepare the same tokenised data as the torch
path, build and compile the model inside the strategy's scope, restore the latest checkpoint, then
``fit`` over the tf.data stream. A small callback hands every finished batch to ``_after_batch``,
which keeps the run layer's schedule (``kiln.run.schedule``) in optimizer steps: log every
``log_every``, evaluate and checkpoint every ``eval_every`` / ``checkpoint_every`` (or at the end of
each epoch), early stopping, ``max_steps``. The model written to ``model/model.keras`` is a float32
copy of the best (or last) weights, with the manifest every later stage reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kiln.config import Config, dump_config
from kiln.data import PreparedData, pad_id, prepare_data
from kiln.errors import ConfigError
from kiln.extras import import_keras, keras_versions
from kiln.keras.checkpoint import (
    load_arrays,
    load_keras_checkpoint,
    save_arrays,
    save_keras_checkpoint,
)
from kiln.keras.data import TrainStream, eval_dataset, plan_stream, train_dataset
from kiln.keras.devices import KerasSetup, resolve_setup
from kiln.keras.optim import make_optimizer
from kiln.metrics import EvalResult, cross_entropy_sum, summarize
from kiln.models import model_kwargs, read_manifest, versions
from kiln.models.keras_model import build_keras_model, inference_copy, serving_function
from kiln.run.checkpoints import abandon_start, write_verified_dir
from kiln.run.logger import RunLogger
from kiln.run.model_dir import write_model_dir
from kiln.run.run_dir import CONFIG_FILE, TOKENIZER, start_run_dir
from kiln.run.schedule import (
    checkpoint_due,
    eval_due,
    record_eval,
    train_result,
    warmup_steps,
)
from kiln.run.state import TrainingDiverged, TrainResult, TrainState, describe_kept

tf, _ = import_keras()  # sets the TensorFlow backend before keras is first imported

import keras  # noqa: E402

BEST_FILE = "keras_weights.safetensors"  # in RUN/best/
MODEL_FILE = "model.keras"


@dataclass
class Window:
    """Training loss and examples since the last log line."""

    start: float
    samples: int = 0
    loss_sum: float = 0.0


@dataclass
class KerasRun:
    """What one keras training process works with, built by ``train_keras``."""

    cfg: Config
    setup: KerasSetup
    data: PreparedData
    kwargs: dict[str, Any]  # the model's constructor arguments
    model: Any
    stream: TrainStream
    total_steps: int
    resume_from: Path | None
    log: RunLogger
    evaluate: Callable[[], EvalResult]
    state: TrainState = field(default_factory=TrainState)
    micro: int = 0  # batches done over the whole run
    window: Window = field(default_factory=lambda: Window(time.perf_counter()))
    # Keras reports the running mean of the epoch's loss: (mean, examples) so far this epoch
    epoch_loss: tuple[float, int] = (0.0, 0)
    pending_eval: dict[str, float] = field(default_factory=dict)  # for Keras' epoch logs
    outside_steps: float = 0.0  # seconds in evaluation, checkpoints and logging

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def writes(self) -> bool:  # other workers of a multi-worker run train but write no outputs
        return self.setup.is_chief


def train_keras(cfg: Config, *, fresh: bool = False, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` (framework=keras) into ``cfg.run_dir``, resuming from its latest checkpoint
    unless ``fresh``.

    Raises:
        ConfigError, DataError, RunDirError: bad config, data or run directory.
        TrainingDiverged: the loss became non-finite.
    """
    try:
        r = _setup(cfg, fresh, progress)
    except BaseException:
        abandon_start(Path(cfg.run_dir))  # a failed start leaves things as they were
        raise
    _log_start(r)
    fit_start = time.perf_counter()
    try:
        _fit(r, _callbacks(r))
    except BaseException:
        r.log.close()  # a crash or divergence still leaves complete log files
        if r.writes:
            abandon_start(r.run_dir)
        raise
    loop_seconds = time.perf_counter() - fit_start - r.outside_steps
    model_dir = r.run_dir / "model"
    if r.writes:
        model_dir = _write_model(r)
        kept = describe_kept(read_manifest(model_dir)["training"])
        r.log.message(f"model written to {model_dir}: {kept}")
    r.log.close()
    return train_result(r.run_dir, model_dir, r.state, cfg.train, r.resume_from,
                        r.data.label_names, loop_seconds)


def _setup(cfg: Config, fresh: bool, progress: bool | None) -> KerasRun:
    """Run directory, data, the compiled model and its optimizer, restored from the latest
    checkpoint."""
    run_dir, tc = Path(cfg.run_dir), cfg.train
    setup = resolve_setup(cfg)
    resume_from = start_run_dir(run_dir, cfg, fresh)
    dump_config(cfg, run_dir / CONFIG_FILE, {**versions(), **keras_versions()})
    keras.utils.set_random_seed(cfg.seed)  # Python, NumPy and TensorFlow: initialisation, dropout
    data = prepare_data(cfg, run_dir)
    kwargs = model_kwargs(cfg.model, vocab_size=data.tokenizer.get_vocab_size(),
                          num_labels=len(data.label_names), max_length=cfg.data.max_length,
                          pad_id=pad_id(data.tokenizer))
    stream = plan_stream(data.train, tc.batch_size * setup.replicas)
    total_steps = _total_steps(cfg, stream)
    with setup.strategy.scope():
        model = build_keras_model(kwargs, setup.policy)
        model.compile(optimizer=make_optimizer(model, tc, total_steps, warmup_steps(tc, total_steps)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=cfg.keras.jit_compile)
        model.optimizer.build(model.trainable_variables)  # a LossScaleOptimizer with fp16
    state = TrainState()
    if resume_from is not None:
        state.load_state_dict(load_keras_checkpoint(resume_from, model, model.optimizer)["progress"])
    log_dir = run_dir if setup.is_chief else run_dir / "workers" / setup.task  # their own logs
    log_dir.mkdir(parents=True, exist_ok=True)
    return KerasRun(cfg=cfg, setup=setup, data=data, kwargs=kwargs, model=model, stream=stream,
                    total_steps=total_steps, resume_from=resume_from,
                    log=RunLogger(log_dir, total_steps, start_step=state.step, progress=progress),
                    evaluate=_evaluator(model, data, tc.batch_size * 2, pad_id(data.tokenizer)),
                    state=state,
                    micro=state.epoch * stream.batches_per_epoch + state.batch_in_epoch)


def _total_steps(cfg: Config, stream: TrainStream) -> int:
    """Optimizer steps of the whole run.

    Raises:
        ConfigError: the accumulation is longer than the whole run.
    """
    tc, accum = cfg.train, cfg.train.grad_accum_steps
    total_micro = stream.batches_per_epoch * tc.epochs
    if tc.max_steps > 0:
        total_micro = min(total_micro, tc.max_steps * accum)
    if total_micro // accum == 0:
        raise ConfigError(f"train.grad_accum_steps={accum} is more than the {total_micro} batches "
                          "of the whole run; lower it or train longer")
    return total_micro // accum  # Keras averages exactly `accum` micro-batches per update


def _log_start(r: KerasRun) -> None:
    s, data = r.setup, r.data
    r.log.message(
        f"kiln (keras {keras.__version__}, tensorflow {tf.__version__}): {len(data.train)} train / "
        f"{len(data.eval)} eval examples, {len(data.label_names)} labels, "
        f"{r.model.count_params():,} parameters, device {s.device}, precision {s.precision} "
        f"({s.policy}; {s.precision_reason}), strategy {s.strategy_name} ({s.replicas} replicas), global batch "
        f"{r.stream.batch_size * r.cfg.train.grad_accum_steps}, {r.total_steps} steps"
        + (f", resumed at step {r.state.step}" if r.resume_from else ""))


class _Relay(keras.callbacks.Callback):
    """Passes Keras' batch and epoch events to the training functions (no logic of its own)."""

    def __init__(self, run: KerasRun) -> None:
        super().__init__()
        self.run = run

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.run.epoch_loss = (0.0, 0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        _after_batch(self.run, float((logs or {}).get("loss", math.nan)))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:  # the TensorBoard callback after this one writes them too
            logs.update(self.run.pending_eval)
        self.run.pending_eval.clear()


def _callbacks(r: KerasRun) -> list[Any]:
    callbacks: list[Any] = [_Relay(r)]
    if r.writes:
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=str(r.run_dir / "tensorboard" / "keras"), update_freq="epoch", profile_batch=0,
            write_graph=False))
    return callbacks


def _after_batch(r: KerasRun, running_loss: float) -> None:
    """Count a finished batch; at the end of an optimizer step (or an epoch) log, evaluate and
    checkpoint as the schedule says.

    Raises:
        TrainingDiverged: the loss is not finite (Keras applies every update).
    """
    state, tc = r.state, r.cfg.train
    _count_batch(r, running_loss)
    end_of_epoch = state.batch_in_epoch >= r.stream.batches_per_epoch
    if end_of_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    updated = r.micro % tc.grad_accum_steps == 0
    if not updated and not end_of_epoch:
        return  # in the middle of a gradient accumulation
    started = time.perf_counter()
    if updated:
        state.step = r.micro // tc.grad_accum_steps
        if state.step % tc.log_every == 0 or state.step == r.total_steps:
            _log_window(r)
    done = state.step >= r.total_steps
    if eval_due(state, tc, updated, end_of_epoch, done):
        _evaluate(r)
    if checkpoint_due(state, tc, updated, end_of_epoch, done) and r.writes:
        save_keras_checkpoint(r.run_dir, state.step, r.model, r.model.optimizer,
                              {"progress": state.state_dict()}, keep=tc.keep_checkpoints,
                              extra_files=(r.run_dir / CONFIG_FILE, r.run_dir / TOKENIZER))
    if done or state.stopped_early:
        r.model.stop_training = True
    r.outside_steps += time.perf_counter() - started


def _count_batch(r: KerasRun, running_loss: float) -> None:
    """Add a finished batch to the counters and the log window."""
    state = r.state
    batch_size = min(r.stream.batch_size,
                     len(r.data.train) - state.batch_in_epoch * r.stream.batch_size)
    r.micro += 1
    state.batch_in_epoch += 1
    state.samples_seen += batch_size
    # the batch's own loss, from Keras' sample-weighted running mean of the epoch
    mean, seen = r.epoch_loss
    r.window.loss_sum += running_loss * (seen + batch_size) - mean * seen
    r.epoch_loss = (running_loss, seen + batch_size)
    r.window.samples += batch_size
    if not math.isfinite(running_loss):
        raise TrainingDiverged(
            f"non-finite loss at step {state.step + 1}; Keras applies every update, so "
            f"training stops at the first one. The last good checkpoint is kept in "
            f"{r.run_dir / 'checkpoints'}; lower train.lr or use train.max_grad_norm")


def _log_window(r: KerasRun) -> None:
    w = r.window
    elapsed = time.perf_counter() - w.start
    r.log.log_train(r.state.step, {
        "loss": w.loss_sum / max(w.samples, 1),
        "lr": float(r.model.optimizer.learning_rate),
        "samples_per_s": w.samples / max(elapsed, 1e-9),
        "epoch": r.state.epoch,
    })
    r.window = Window(time.perf_counter())


def _evaluate(r: KerasRun) -> None:
    """Evaluate; keep the weights when they are the best so far."""
    result = r.evaluate()
    r.pending_eval.update({f"val_{k}": v for k, v in result.scalars().items()})
    if record_eval(r.state, result, r.cfg.train, r.log) and r.writes:
        write_verified_dir(r.run_dir / "best",
                           lambda tmp: save_arrays(tmp / BEST_FILE, r.model.get_weights()))


def _fit(r: KerasRun, callbacks: list[Any]) -> None:
    """``model.fit`` from the run's position to its last batch.

    Keras epochs are the data's epochs. A run resumed in the middle of an epoch first finishes that
    epoch in a fit of its own (its remaining batches), then fits the following epochs.
    """
    per_epoch = r.stream.batches_per_epoch
    total_micro = r.total_steps * r.cfg.train.grad_accum_steps
    end_epoch = math.ceil(total_micro / per_epoch)
    epoch, offset = divmod(r.micro, per_epoch)
    segments = []
    if offset:
        segments.append((epoch, epoch + 1, offset, min(per_epoch - offset, total_micro - r.micro)))
        epoch += 1
    if epoch < end_epoch:
        segments.append((epoch, end_epoch, 0, per_epoch))
    pad = pad_id(r.data.tokenizer)
    for first, end, skip, steps in segments:
        if r.state.stopped_early or r.state.step >= r.total_steps:
            break
        batches = train_dataset(r.data.train, r.stream, pad, r.cfg.seed, first, end, skip)
        r.model.fit(batches, initial_epoch=first, epochs=end, steps_per_epoch=steps,
                    callbacks=callbacks, verbose=0, shuffle=False)


def _evaluator(model: Any, data: PreparedData, batch_size: int, pad: int) -> Callable[[], EvalResult]:
    """Loss, accuracy, macro-F1 and confusion matrix on the evaluation set, as the torch path
    computes them (``kiln.metrics``)."""
    batches = eval_dataset(data.eval, batch_size, pad)
    forward = serving_function(model)
    num_classes = len(data.label_names)

    def evaluate() -> EvalResult:
        losses, labels, preds = 0.0, [], []
        for features, y in batches:
            logits = forward(features["input_ids"], features["attention_mask"]).numpy()
            y = y.numpy()
            losses += float(cross_entropy_sum(logits, y))
            labels.append(y)
            preds.append(logits.argmax(-1))
        return summarize(losses, np.concatenate(labels), np.concatenate(preds), num_classes)

    return evaluate


def _write_model(r: KerasRun) -> Path:
    """model/: a float32 model.keras of the best weights (by train.metric) or the last ones."""
    best_file = r.run_dir / "best" / BEST_FILE

    def write_weights(path: Path, use_best: bool) -> None:
        final = inference_copy(r.model, r.kwargs)
        if use_best:
            final.set_weights(load_arrays(best_file, final.weights))
        final.save(str(path))

    s = r.setup
    return write_model_dir(r.cfg, r.run_dir, r.state, r.kwargs, r.data.label_names, s.precision,
                           best_file=best_file, write_weights=write_weights,
                           weights_file=MODEL_FILE, framework="keras",
                           training={"keras_policy": s.policy, "strategy": s.strategy_name,
                                     "precision_reason": s.precision_reason},
                           versions=keras_versions(), report=r.log.message)
