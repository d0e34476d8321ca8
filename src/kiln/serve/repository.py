"""What `kiln serve PATH` serves: one run/export/model folder, or a repository of several models,
each optionally with numbered versions (Triton's layout: <repo>/<model>/<version>/)."""

from __future__ import annotations

from pathlib import Path

from kiln.errors import RunDirError
from kiln.models import MANIFEST

Repository = dict[str, dict[str, Path]]  # model name -> version -> folder


def is_model(path: Path) -> bool:
    """A run (with export/ or model/), an export folder or a model folder."""
    return any((p / MANIFEST).exists() for p in (path, path / "export", path / "model"))


def discover_models(path: Path, name: str | None = None) -> Repository:
    """The models under ``path``.

    ``path`` itself a model: served as ``name`` (default: its run folder's name), version 1.
    Otherwise each sub-folder that is a model is one model named after the folder; a sub-folder
    whose numbered sub-folders are models gives one version per number.

    Raises:
        RunDirError: nothing servable under ``path``.
    """
    if not path.is_dir():
        raise RunDirError(f"{path} does not exist or is not a folder")
    if is_model(path):
        resolved = path.resolve()
        default = resolved.parent.name if resolved.name in ("export", "model") else resolved.name
        return {name or default: {"1": path}}
    repo: Repository = {}
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = {v.name: v for v in child.iterdir() if v.name.isdigit() and is_model(v)}
        if versions:
            repo[child.name] = versions
        elif is_model(child):
            repo[child.name] = {"1": child}
    if not repo:
        raise RunDirError(f"{path} holds no kiln model: neither it nor its sub-folders have a "
                          f"{MANIFEST} (in themselves, export/ or model/)")
    return repo


def latest_version(versions: dict[str, Path]) -> str:
    return max(versions, key=int)
