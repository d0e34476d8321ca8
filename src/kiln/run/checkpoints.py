"""Atomic checkpoints: written into a temporary folder, fsynced, then renamed into place.

A crash at any moment leaves either the previous checkpoints or the new one, never a half-written
folder that resume would pick up: resume only looks at ``step-*`` folders, and a folder only gets
that name by an atomic rename once every file in it is on disk. The protocol is the same for every
framework; what goes inside a checkpoint is the trainer's (``kiln.train.checkpoint`` for torch,
``kiln.keras.checkpoint`` for Keras).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from kiln.files import fsync_file, temp_dir, write_text_atomic

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:06d}"


def checkpoint_step(path: Path) -> int:
    """The step of checkpoint folder ``path`` (``step-000150`` -> 150)."""
    return int(path.name[5:])


def write_checkpoint(
    run_dir: Path, step: int, write: Callable[[Path], None], keep: int,
    extra_files: tuple[Path, ...] = (),
) -> Path:
    """The checkpoint protocol for any framework: ``write(tmp)`` fills a temporary folder, which
    is fsynced and renamed to ``checkpoints/step-NNNNNN``; then ``latest`` points at it and only
    the newest ``keep`` checkpoints are kept.
    """
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(run_dir, step)
    tmp = temp_dir(root, f".tmp-{final.name}-")
    try:
        write(tmp)
        for f in extra_files:
            shutil.copy2(f, tmp / f.name)
        for f in tmp.iterdir():
            fsync_file(f)
        if final.exists():  # the same step written again after a resume: replace it
            _remove_dir(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, final.name + "\n")
    _rotate(root, keep, protect=final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or None."""
    root = run_dir / CHECKPOINTS
    pointer = root / LATEST
    if pointer.exists():
        named = root / pointer.read_text(encoding="utf-8").strip()
        if _STEP_DIR.match(named.name) and named.is_dir():
            return named
    steps = list_checkpoints(run_dir)
    return steps[-1] if steps else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete temporary folders left by a crash during a checkpoint write."""
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            _remove_dir(p) if p.is_dir() else p.unlink(missing_ok=True)


def _rotate(root: Path, keep: int, protect: Path) -> None:
    steps = [p for p in list_checkpoints(root.parent) if p != protect]
    for old in steps[: max(0, len(steps) + 1 - keep)]:
        _remove_dir(old)


def _remove_dir(path: Path) -> None:
    # Rename first so a crash mid-delete never leaves a partial step-* folder behind.
    trash = path.with_name(f".tmp-trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
