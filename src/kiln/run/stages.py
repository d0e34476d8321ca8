"""Which stages of `kiln run` are up to date, so that running it again on a finished run redoes
nothing.

Each stage after training records, when it finishes, a digest of its inputs (the files it read and
its settings) in ``RUN/stages.json``. A later `kiln run` skips a stage whose outputs exist and
whose inputs hash the same; a stage that reran changes its outputs, so the stages that read them
rerun too. Training is up to date when the run has its model and the config asks for the same
training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln.config import Config
from kiln.files import write_text_atomic
from kiln.run.run_dir import CONFIG_FILE, config_changes

STAGES_FILE = "stages.json"

# Keys that do not change what training produces: a finished run with only these changed is done.
NOT_TRAINING = {"run_dir", "train.num_threads", "train.log_every", "train.data_wait_warning",
                "data.num_workers", "data.pin_memory", "data.prefetch_factor",
                "data.persistent_workers", "profile", "profiler.wait", "profiler.warmup",
                "profiler.active", "profiler.row_limit"}


def training_done(run_dir: Path, cfg: Config) -> list[str] | None:
    """None when ``run_dir`` holds a finished model trained with ``cfg`` (keys that do not change
    training aside); otherwise why training must run: the changed keys, or [] for no model."""
    if not (run_dir / "model" / "kiln.json").exists() or not (run_dir / CONFIG_FILE).exists():
        return []
    changed = [k for k in config_changes(run_dir, cfg) if k not in NOT_TRAINING]
    return changed or None


def inputs_digest(files: Sequence[Path], settings: Mapping[str, Any]) -> str:
    """sha256 over the contents of ``files`` (a missing file counts as such) and ``settings``."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0")
        try:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        except FileNotFoundError:
            h.update(b"missing")
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def stage_is_current(run_dir: Path, stage: str, digest: str, outputs: Sequence[Path]) -> bool:
    """Whether ``stage`` finished with inputs of this ``digest`` and its ``outputs`` still exist."""
    recorded = _read(run_dir).get(stage, {})
    return recorded.get("inputs") == digest and all(p.exists() for p in outputs)


def record_stage(run_dir: Path, stage: str, digest: str) -> None:
    """Note that ``stage`` finished with inputs of ``digest`` (atomically)."""
    stages = _read(run_dir)
    stages[stage] = {"inputs": digest}
    write_text_atomic(run_dir / STAGES_FILE, json.dumps(stages, indent=1, sort_keys=True) + "\n")


def forget_stages(run_dir: Path) -> None:
    """A fresh start: no stage is up to date."""
    (run_dir / STAGES_FILE).unlink(missing_ok=True)


def _read(run_dir: Path) -> dict[str, Any]:
    try:
        loaded = json.loads((run_dir / STAGES_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
