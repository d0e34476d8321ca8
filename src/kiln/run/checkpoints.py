"""Atomic checkpoints: written into a temporary folder, fsynced, then renamed into place.

A crash at any moment leaves either the previous checkpoints or the new one, never a half-written
folder that resume would pick up: resume only looks at ``step-*`` folders, and a folder only gets
that name by an atomic rename once every file in it is on disk. The protocol is the same for every
framework; what goes inside a checkpoint is the trainer's (``kiln.train.checkpoint`` for torch,
``kiln.keras.checkpoint`` for Keras).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from kiln.errors import RunDirError
from kiln.files import file_digest, fsync_file, replacing_dir, temp_dir, write_text_atomic

CHECKPOINTS = "checkpoints"
LATEST = "latest"
CHECKSUMS = "checksums.json"  # sha256 and size of every other file of a checkpoint, written last
STARTING = ".starting"  # in a run folder that kiln made, until its first checkpoint is written
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
        write_checksums(tmp)
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
    _settle(run_dir)
    return final


def replaced_dir(run_dir: Path) -> Path:
    """Where a ``--fresh`` start keeps the run it replaces until its own first checkpoint."""
    return run_dir.parent / f".{run_dir.name}.replaced"


def _settle(run_dir: Path) -> None:
    """After a new run's first checkpoint it no longer needs a way back."""
    if (run_dir / STARTING).exists():
        shutil.rmtree(replaced_dir(run_dir), ignore_errors=True)
        (run_dir / STARTING).unlink()


def abandon_start(run_dir: Path) -> None:
    """Undo a start that failed before its first checkpoint: the folder kiln made for it goes,
    and the run a ``--fresh`` start replaced comes back as it was. Anything else is kept."""
    if not (run_dir / STARTING).exists() or list_checkpoints(run_dir):
        return
    shutil.rmtree(run_dir)
    if replaced_dir(run_dir).exists():
        os.rename(replaced_dir(run_dir), run_dir)


def write_checksums(folder: Path) -> None:
    """Record the sha256 and size of every file in ``folder`` (the last file written to it)."""
    sums = {p.relative_to(folder).as_posix(): file_digest(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n", encoding="utf-8")


def damage(folder: Path) -> str | None:
    """What is wrong with ``folder`` against the checksums written with it, or None if intact."""
    try:
        sums = json.loads((folder / CHECKSUMS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{CHECKSUMS} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{CHECKSUMS} is unreadable ({exc})"
    if not isinstance(sums, dict) or not all(
            isinstance(v, dict) and {"sha256", "bytes"} <= set(v) for v in sums.values()):
        return f"{CHECKSUMS} is not a checksum list"
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes where {expected['bytes']} were written"
        if file_digest(path)["sha256"] != expected["sha256"]:
            return f"{name} does not match the sha256 recorded when it was written"
    return None


def write_verified_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Write ``target`` through ``write(tmp)`` with the checksums of its files, atomically
    replacing an older one (for folders that are read back, such as best/)."""
    with replacing_dir(target) as tmp:
        write(tmp)
        write_checksums(tmp)
    return target


def resume_point(run_dir: Path, report: Callable[[str], None] = lambda message: None,
                 ) -> Path | None:
    """The newest intact checkpoint of ``run_dir`` (None: it has none yet). Damaged ones are
    skipped, each reported through ``report`` with the file and what is wrong with it.

    Raises:
        RunDirError: checkpoints exist but none of them is intact.
    """
    candidates = list(reversed(list_checkpoints(run_dir)))
    for checkpoint in candidates:
        problem = damage(checkpoint)
        if problem is None:
            return checkpoint
        report(f"checkpoint {checkpoint} is damaged ({problem}); skipped for an older one")
    if candidates:
        raise RunDirError(f"{run_dir} has {len(candidates)} checkpoints and none is intact (see "
                          "above); start over with --fresh, or choose another run_dir")
    return None


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
