"""Writing outputs so that a reader (or a crash) never sees half of them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the fully written folder ``tmp`` to ``target``, replacing an older ``target``.

    Each step is a rename; the old folder is only deleted once the new one is in place.
    """
    if target.exists():
        old = target.with_name(f".tmp-old-{target.name}-{os.getpid()}")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old)
    else:
        os.rename(tmp, target)


@contextlib.contextmanager
def replacing_dir(target: Path) -> Iterator[Path]:
    """A new temporary folder beside ``target`` for the with-block to fill: when the block ends
    normally it replaces ``target`` (see replace_dir); when it raises, it is removed and
    ``target`` stays as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(target.parent, f".tmp-{target.name}-")
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_dir(parent: Path, prefix: str) -> Path:
    """A new temporary folder in ``parent`` with the permissions of an ordinary folder.

    tempfile.mkdtemp makes folders private (0700); renamed into place they would stay unreadable
    to the other users of a model (a server running as another user, say).
    """
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    path.chmod(0o777 & ~_umask())
    return path


def temp_file(parent: Path, prefix: str) -> tuple[int, Path]:
    """Like tempfile.mkstemp, with the permissions of an ordinary file instead of 0600."""
    fd, name = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=".tmp")
    os.chmod(name, 0o666 & ~_umask())
    return fd, Path(name)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, rename it over ``path``:
    a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """``write_atomic`` for UTF-8 text."""
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def file_digest(path: Path) -> dict[str, Any]:
    """sha256 and size of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}
