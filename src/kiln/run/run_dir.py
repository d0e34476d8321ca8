"""Starting, resuming and checking a run directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kiln.config import Config, dump_config, read_yaml
from kiln.errors import RunDirError
from kiln.models import versions
from kiln.run.checkpoints import latest_checkpoint, remove_stale_temporaries

CONFIG_FILE = "config.yaml"

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

# What `--fresh` removes: everything a training run writes.
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

    Raises:
        RunDirError: the run has checkpoints but ``cfg`` changes keys that a resume cannot change.
    """
    if fresh:
        for name in RUN_OUTPUTS:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    resume_from = latest_checkpoint(run_dir)
    saved = saved_config(run_dir)
    if resume_from is not None and saved is not None:
        changed = sorted(k for k in _diff(saved, cfg.model_dump(mode="json"))
                         if k not in RESUMABLE_CHANGES)
        if changed:
            raise RunDirError(
                f"{run_dir} holds a run with a different config ({', '.join(changed)} changed); "
                "resume it with the same config, or pass --fresh to start over, or choose "
                "another run_dir"
            )
    dump_config(cfg, run_dir / CONFIG_FILE, versions())
    return resume_from


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [k for key in sorted(keys) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]
