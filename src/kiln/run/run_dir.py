"""Starting, resuming and checking a run directory."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from kiln.config import Config, dump_config, read_yaml
from kiln.data import load_tokenizer, prepare_data
from kiln.errors import RunDirError
from kiln.files import temp_dir
from kiln.models import versions
from kiln.run.checkpoints import (
    STARTING,
    abandon_start,
    latest_checkpoint,
    remove_stale_temporaries,
    replaced_dir,
    resume_point,
)

CONFIG_FILE = "config.yaml"
TOKENIZER = "tokenizer.json"

# Keys that may change when a run is resumed: they do not change what the next step computes.
RESUMABLE_CHANGES = {
    "run_dir",
    "train.epochs",
    "train.max_steps",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.early_stopping_patience",
    "train.num_threads",
    "train.max_bad_steps",
    "train.batch_size",  # with grad_accum_steps: the global batch is checked to stay the same
    "train.grad_accum_steps",
    "train.strategy",  # checkpoints hold full (unsharded) state, whatever the strategy
    "train.compile",
    "train.data_wait_warning",
    "profile",
    "profiler.wait",
    "profiler.warmup",
    "profiler.active",
    "profiler.row_limit",
    "data.num_workers",
    "data.pin_memory",
    "data.prefetch_factor",
    "data.persistent_workers",
}

# What a training run writes: a --fresh start replaces a folder holding any of them.
RUN_OUTPUTS = ("checkpoints", "tensorboard", "metrics.jsonl", "model", "best", "tokenizer.json",
               CONFIG_FILE, "data")


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The raw config a run was started with, if it has checkpoints to resume from."""
    if latest_checkpoint(run_dir) is None or not (run_dir / CONFIG_FILE).exists():
        return None
    raw = read_yaml(run_dir / CONFIG_FILE)
    raw.pop("versions", None)
    return raw


def start_run_dir(run_dir: Path, cfg: Config, fresh: bool) -> Path | None:
    """Prepare ``run_dir`` for training and return the checkpoint to resume from (or None).

    A new run folder, or a ``--fresh`` one, is first assembled aside with the data checked and the
    tokenizer trained (``prepare_data``), so a bad config or bad data leaves nothing behind and an
    existing run untouched. ``--fresh`` then moves the old run to ``.NAME.replaced`` beside it,
    removed when the new run writes its first checkpoint and put back if it fails before
    (``abandon_start``; also at the next start after a crash).

    Raises:
        RunDirError: the run has checkpoints but ``cfg`` changes keys that a resume cannot change,
            or none of its checkpoints is intact.
        DataError, ConfigError: for a new or fresh run, the data or config cannot be used.
    """
    abandon_start(run_dir)  # a start that crashed before its first checkpoint
    if fresh and any((run_dir / name).exists() for name in RUN_OUTPUTS):
        _stage(run_dir, cfg, replace=True)
    elif not run_dir.exists():
        _stage(run_dir, cfg, replace=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    resume_from = resume_point(run_dir, report=lambda message: print(f"kiln: {message}",
                                                                     file=sys.stderr, flush=True))
    if resume_from is not None:
        check_tokenizer(run_dir, resume_from)
        _check_unchanged(run_dir, cfg)
    dump_config(cfg, run_dir / CONFIG_FILE, versions())
    return resume_from


def _stage(run_dir: Path, cfg: Config, replace: bool) -> None:
    """Assemble the new run's folder beside ``run_dir`` (data checked, tokenizer trained), then
    put it in place, moving an old run aside when ``replace``."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_dir(run_dir.parent, f".tmp-{run_dir.name}-")
    try:
        prepare_data(cfg, staging)  # raises here, before anything of the old run is touched
        (staging / STARTING).touch()
        if replace:
            shutil.rmtree(replaced_dir(run_dir), ignore_errors=True)
            os.rename(run_dir, replaced_dir(run_dir))
            print(f"kiln: --fresh: the previous run is kept in {replaced_dir(run_dir)} until the "
                  "new run writes its first checkpoint", file=sys.stderr, flush=True)
        os.rename(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def config_changes(run_dir: Path, cfg: Config) -> list[str]:
    """The keys whose values differ between the run's config.yaml and ``cfg``."""
    raw = read_yaml(run_dir / CONFIG_FILE)
    raw.pop("versions", None)
    return sorted(_diff(raw, cfg.model_dump(mode="json")))


def _check_unchanged(run_dir: Path, cfg: Config) -> None:
    """Raises RunDirError when ``cfg`` changes keys that a resume cannot change."""
    saved = saved_config(run_dir)
    if saved is None:
        return
    changed = sorted(k for k in _diff(saved, cfg.model_dump(mode="json"))
                     if k not in RESUMABLE_CHANGES)
    if changed:
        raise RunDirError(
            f"{run_dir} holds a run with a different config ({', '.join(changed)} changed); "
            "resume it with the same config, or pass --fresh to start over, or choose "
            "another run_dir"
        )


def check_tokenizer(run_dir: Path, checkpoint: Path) -> None:
    """The run's tokenizer.json must be the one the checkpoint was trained with.

    Raises:
        RunDirError: it was replaced (by another run's, say), naming both vocabulary sizes.
    """
    ours, saved = run_dir / TOKENIZER, checkpoint / TOKENIZER
    if not saved.exists() or not ours.exists() or ours.read_bytes() == saved.read_bytes():
        return
    now, then = (load_tokenizer(p).get_vocab_size() for p in (ours, saved))
    raise RunDirError(f"{ours} ({now} tokens) is not the tokenizer {checkpoint.name} was trained "
                      f"with ({then} tokens; its copy is in {saved}); put that one back, or "
                      "start over with --fresh")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [k for key in sorted(keys) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
