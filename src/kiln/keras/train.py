"""`kiln train framework=keras`: the same config and run directory, trained with Keras ``fit``.

Read top to bottom: resolve device/precision/strategy, prepare the same tokenised data as the torch
path, build and compile the model inside the strategy's scope, restore the latest checkpoint, then
``fit`` over the tf.data stream. A small callback hands every finished batch to ``after_batch``,
which keeps the torch loop's schedule of events in optimizer steps: log every ``log_every``,
evaluate and checkpoint every ``eval_every`` / ``checkpoint_every`` (or at the end of each epoch),
early stopping, ``max_steps``. The model written to ``model/model.keras`` is a float32 copy of the
best (or last) weights, with the manifest every later stage reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kiln.config import Config, dump_config
from kiln.data import PreparedData, pad_id, prepare_data
from kiln.errors import ConfigError
from kiln.files import write_atomic
from kiln.keras.checkpoint import (
    load_arrays,
    load_keras_checkpoint,
    save_arrays,
    save_keras_checkpoint,
)
from kiln.keras.data import TrainStream, eval_dataset, plan_stream, train_dataset
from kiln.keras.devices import KerasSetup, resolve_setup
from kiln.keras.env import import_keras, keras_versions
from kiln.keras.model import build_keras_model, inference_copy, serving_function
from kiln.keras.optim import make_optimizer
from kiln.models import build_manifest, model_kwargs, save_model_files, versions
from kiln.train.logger import RunLogger
from kiln.train.loop import (
    TrainingDiverged,
    TrainResult,
    TrainState,
    eval_record,
    manifest_extra,
)
from kiln.train.metrics import EvalResult, cross_entropy_sum, summarize
from kiln.train.optim import warmup_steps
from kiln.train.run_dir import CONFIG_FILE, start_run_dir

tf, _ = import_keras()  # sets the TensorFlow backend before keras is first imported

import keras  # noqa: E402

BEST_FILE = "keras_weights.safetensors"  # in RUN/best/
MODEL_FILE = "model.keras"


class _Relay(keras.callbacks.Callback):
    """Passes Keras' batch and epoch events to the training function (no logic of its own)."""

    def __init__(self, after_batch: Callable[[float], None], epoch_begin: Callable[[], None],
                 epoch_end: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._after_batch, self._epoch_begin, self._epoch_end = after_batch, epoch_begin, epoch_end

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_begin()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._after_batch(float((logs or {}).get("loss", math.nan)))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_end(logs if logs is not None else {})


def train_keras(cfg: Config, *, fresh: bool = False, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` (framework=keras) into ``cfg.run_dir``, resuming from its latest checkpoint
    unless ``fresh``.

    Raises:
        ConfigError, DataError, RunDirError: bad config, data or run directory.
        TrainingDiverged: the loss became non-finite.
    """
    run_dir, tc = Path(cfg.run_dir), cfg.train
    setup = resolve_setup(cfg)
    resume_from = start_run_dir(run_dir, cfg, fresh)
    dump_config(cfg, run_dir / CONFIG_FILE, {**versions(), **keras_versions()})
    keras.utils.set_random_seed(cfg.seed)  # Python, NumPy and TensorFlow: initialisation, dropout

    data = prepare_data(cfg, run_dir)
    pad = pad_id(data.tokenizer)
    kwargs = model_kwargs(cfg.model, vocab_size=data.tokenizer.get_vocab_size(),
                          num_labels=len(data.label_names), max_length=cfg.data.max_length,
                          pad_id=pad)
    stream = plan_stream(data.train, tc.batch_size * setup.replicas)
    accum = tc.grad_accum_steps
    total_micro = stream.batches_per_epoch * tc.epochs
    if tc.max_steps > 0:
        total_micro = min(total_micro, tc.max_steps * accum)
    total_steps = total_micro // accum
    if total_steps == 0:
        raise ConfigError(f"train.grad_accum_steps={accum} is more than the {total_micro} batches "
                          "of the whole run; lower it or train longer")
    total_micro = total_steps * accum  # Keras averages exactly `accum` micro-batches per update

    with setup.strategy.scope():
        model = build_keras_model(kwargs, setup.policy)
        model.compile(optimizer=make_optimizer(model, tc, total_steps, warmup_steps(tc, total_steps)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=cfg.keras.jit_compile)
        optimizer = model.optimizer  # a LossScaleOptimizer around AdamW with mixed_float16
        optimizer.build(model.trainable_variables)
    state = TrainState()
    if resume_from is not None:
        state.load_state_dict(load_keras_checkpoint(resume_from, model, optimizer)["progress"])

    writes = setup.is_chief  # other workers of a multi-worker run train but write no outputs
    log_dir = run_dir if writes else run_dir / "workers" / setup.task  # their own logs only
    log_dir.mkdir(parents=True, exist_ok=True)
    log = RunLogger(log_dir, total_steps, start_step=state.step, progress=progress)
    log.message(
        f"kiln (keras {keras.__version__}, tensorflow {tf.__version__}): {len(data.train)} train / "
        f"{len(data.eval)} eval examples, {len(data.label_names)} labels, "
        f"{model.count_params():,} parameters, device {setup.device}, precision {setup.precision} "
        f"({setup.policy}), strategy {setup.strategy_name} ({setup.replicas} replicas), global batch "
        f"{stream.batch_size * accum}, {total_steps} steps"
        + (f", resumed at step {state.step}" if resume_from else ""))

    evaluate = _evaluator(model, data, tc.batch_size * 2, pad)
    micro = state.epoch * stream.batches_per_epoch + state.batch_in_epoch
    timing = {"outside_steps": 0.0}
    window = {"start": time.perf_counter(), "samples": 0, "loss_sum": 0.0}
    epoch_loss = {"mean": 0.0, "samples": 0}  # Keras reports the running mean of the epoch
    pending_eval: dict[str, float] = {}

    def checkpoint() -> None:
        if writes:
            save_keras_checkpoint(run_dir, state.step, model, optimizer,
                                  {"progress": state.state_dict()}, keep=tc.keep_checkpoints,
                                  extra_files=(run_dir / CONFIG_FILE,))

    def run_eval() -> None:
        result = evaluate()
        log.log_eval(state.step, result, state.epoch)
        pending_eval.update({f"val_{k}": v for k, v in result.scalars().items()})
        score = result.loss if tc.metric == "loss" else getattr(result, tc.metric)
        improved = state.best_metric is None or (
            score < state.best_metric if tc.metric == "loss" else score > state.best_metric)
        if improved:
            state.best_metric, state.best_step = score, state.step
            state.best_eval = eval_record(result)
            state.evals_without_improvement = 0
            if writes:
                write_atomic(run_dir / "best" / BEST_FILE,
                             lambda p: save_arrays(p, model.get_weights()))
        else:
            state.evals_without_improvement += 1
            if tc.early_stopping_patience and state.evals_without_improvement >= tc.early_stopping_patience:
                state.stopped_early = True
                log.message(f"early stopping at step {state.step}: no {tc.metric} improvement in "
                            f"{state.evals_without_improvement} evaluations")
        state.last_eval = eval_record(result)

    def epoch_begin() -> None:
        epoch_loss.update(mean=0.0, samples=0)

    def after_batch(running_loss: float) -> None:
        nonlocal micro
        batch_size = _batch_size(stream, len(data.train), state.batch_in_epoch)
        micro += 1
        state.batch_in_epoch += 1
        state.samples_seen += batch_size
        # the batch's own loss, from Keras' sample-weighted running mean of the epoch
        seen = epoch_loss["samples"] + batch_size
        window["loss_sum"] += running_loss * seen - epoch_loss["mean"] * epoch_loss["samples"]
        epoch_loss.update(mean=running_loss, samples=seen)
        window["samples"] += batch_size
        if not math.isfinite(running_loss):
            raise TrainingDiverged(
                f"non-finite loss at step {state.step + 1}; Keras applies every update, so "
                f"training stops at the first one. The last good checkpoint is kept in "
                f"{run_dir / 'checkpoints'}; lower train.lr or use train.max_grad_norm")
        end_of_epoch = state.batch_in_epoch >= stream.batches_per_epoch
        if end_of_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        updated = micro % accum == 0
        if not updated and not end_of_epoch:
            return  # in the middle of a gradient accumulation
        started = time.perf_counter()
        if updated:
            state.step = micro // accum
            if state.step % tc.log_every == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - window["start"]
                log.log_train(state.step, {
                    "loss": window["loss_sum"] / max(window["samples"], 1),
                    "lr": float(optimizer.learning_rate),
                    "samples_per_s": window["samples"] / max(elapsed, 1e-9),
                    "epoch": state.epoch,
                })
                window.update(start=time.perf_counter(), samples=0, loss_sum=0.0)
        done = state.step >= total_steps
        if done or (updated and tc.eval_every and state.step % tc.eval_every == 0) or (
                not tc.eval_every and end_of_epoch):
            run_eval()
        if done or state.stopped_early or (
                updated and tc.checkpoint_every and state.step % tc.checkpoint_every == 0) or (
                not tc.checkpoint_every and end_of_epoch):
            checkpoint()
        if done or state.stopped_early:
            model.stop_training = True
        timing["outside_steps"] += time.perf_counter() - started

    def epoch_end(logs: dict[str, Any]) -> None:
        logs.update(pending_eval)  # the TensorBoard callback after this one writes them too
        pending_eval.clear()

    callbacks = [_Relay(after_batch, epoch_begin, epoch_end)]
    if writes:
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=str(run_dir / "tensorboard" / "keras"), update_freq="epoch", profile_batch=0,
            write_graph=False))
    fit_start = time.perf_counter()
    try:
        _fit(model, data, stream, pad, cfg.seed, micro, total_micro, callbacks,
             lambda: state.stopped_early or state.step >= total_steps)
    except BaseException:
        log.close()  # a crash or divergence still leaves complete log files
        raise
    loop_seconds = time.perf_counter() - fit_start - timing["outside_steps"]

    model_dir = run_dir / "model"
    if writes:
        model_dir = _write_model_dir(cfg, run_dir, model, kwargs, data.label_names, state, setup)
        log.message(f"model written to {model_dir}")
    log.close()
    selected = state.best_eval if tc.select == "best" and state.best_eval else state.last_eval
    return TrainResult(run_dir=run_dir, model_dir=model_dir, eval=selected, step=state.step,
                       resumed_from=None if resume_from is None else int(resume_from.name[5:]),
                       label_names=data.label_names, loop_seconds=loop_seconds)


def _fit(model: Any, data: PreparedData, stream: TrainStream, pad: int, seed: int,
         start_micro: int, total_micro: int, callbacks: list[Any],
         finished: Callable[[], bool]) -> None:
    """``model.fit`` from micro-batch ``start_micro`` to ``total_micro``.

    Keras epochs are the data's epochs. A run resumed in the middle of an epoch first finishes that
    epoch in a fit of its own (its remaining batches), then fits the following epochs.
    """
    per_epoch = stream.batches_per_epoch
    end_epoch = math.ceil(total_micro / per_epoch)
    epoch, offset = divmod(start_micro, per_epoch)
    segments = []
    if offset:
        segments.append((epoch, epoch + 1, offset, min(per_epoch - offset, total_micro - start_micro)))
        epoch += 1
    if epoch < end_epoch:
        segments.append((epoch, end_epoch, 0, per_epoch))
    for first, end, skip, steps in segments:
        if finished():
            break
        batches = train_dataset(data.train, stream, pad, seed, first, end, skip)
        model.fit(batches, initial_epoch=first, epochs=end, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=0, shuffle=False)


def _batch_size(stream: TrainStream, n: int, index: int) -> int:
    """Examples in batch ``index`` of an epoch (only the last one can be short)."""
    return min(stream.batch_size, n - index * stream.batch_size)


def _evaluator(model: Any, data: PreparedData, batch_size: int, pad: int) -> Callable[[], EvalResult]:
    """Loss, accuracy, macro-F1 and confusion matrix on the evaluation set, as the torch path
    computes them (``kiln.train.metrics``)."""
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


def _write_model_dir(cfg: Config, run_dir: Path, model: Any, kwargs: dict[str, Any],
                     label_names: tuple[str, ...], state: TrainState, setup: KerasSetup) -> Path:
    """model/: a float32 model.keras of the best weights (by train.metric) or the last ones."""
    best_file = run_dir / "best" / BEST_FILE
    use_best = bool(cfg.train.select == "best" and state.best_eval and best_file.exists())
    final = inference_copy(model, kwargs)
    if use_best:
        final.set_weights(load_arrays(best_file, final.weights))
    manifest = build_manifest(
        cfg.model.name, kwargs, label_names, cfg.data.max_length,
        extra=manifest_extra(cfg, run_dir, state, use_best, setup.precision,
                             keras_policy=setup.policy, strategy=setup.strategy_name))
    manifest["framework"] = "keras"
    manifest["weights"] = MODEL_FILE
    manifest["versions"] = {**manifest["versions"], **keras_versions()}
    return save_model_files(run_dir / "model", lambda tmp: final.save(str(tmp / MODEL_FILE)),
                            run_dir / "tokenizer.json", manifest)

