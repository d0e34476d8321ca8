"""Build a Predictor from a run, an export folder or a model folder, by artifact name."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from kiln.errors import RunDirError
from kiln.models import MANIFEST, load_model_dir, read_manifest, verify_files
from kiln.runtime.backends import OpenVinoBackend, OrtBackend, TensorRtBackend, TorchBackend
from kiln.runtime.predictor import Backend, Predictor


def artifact_folder(path: str | os.PathLike[str]) -> Path:
    """The folder holding artifacts: a run's export/ (else its model/), or ``path`` itself.

    Raises:
        RunDirError: no manifest found.
    """
    p = Path(path)
    for candidate in (p / "export", p / "model", p):
        if (candidate / MANIFEST).exists():
            return candidate
    raise RunDirError(f"{p} holds no kiln model: no {MANIFEST} in it, its export/ or its model/")


def list_artifacts(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Artifact names usable from ``folder``: the trained model and every exported artifact."""
    return ["torch-fp32", *manifest.get("artifacts", {})]


def load_predictor(
    path: str | os.PathLike[str], artifact: str | None = None, *, threads: int | None = None,
    allow_failed: bool = False, spin_wait: bool = True,
) -> Predictor:
    """A Predictor over ``artifact``; by default the one `kiln bench` measured fastest, else the
    export's recommended one, else torch-fp32.

    Raises:
        RunDirError: unknown artifact, a file that fails its checksum, or an artifact that failed
            parity (unless ``allow_failed``).
    """
    folder = artifact_folder(path)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    name = (artifact or _benchmarked_choice(folder, manifest)
            or manifest.get("export", {}).get("recommended") or "torch-fp32")
    tokenizer = Tokenizer.from_file(str(folder / manifest["tokenizer"]))
    backend = make_backend(folder, manifest, name, threads=threads, allow_failed=allow_failed,
                           spin_wait=spin_wait)
    return Predictor(backend=backend, tokenizer=tokenizer, label_names=list(manifest["labels"]),
                     max_length=int(manifest["max_length"]),
                     pad_id=int(manifest["model"]["kwargs"].get("pad_id", 0)))


def _benchmarked_choice(folder: Path, manifest: dict[str, Any]) -> str | None:
    """The artifact `kiln bench` measured fastest for this export, if it was benchmarked."""
    report = folder.parent / "bench" / "report.json"
    if folder.name != "export" or not report.exists():
        return None
    try:
        choice = json.loads(report.read_text(encoding="utf-8")).get("recommended")
    except (OSError, json.JSONDecodeError):
        return None
    entry = manifest.get("artifacts", {}).get(choice)
    return choice if choice == "torch-fp32" or (entry and entry.get("passed")) else None


def make_backend(folder: Path, manifest: dict[str, Any], name: str, *, threads: int | None = None,
                 allow_failed: bool = False, spin_wait: bool = True) -> Backend:
    # torch-fp32 is the trained model itself: always there, never parity-checked
    entry: dict[str, Any] | None = (
        {"passed": True} if name == "torch-fp32" else manifest.get("artifacts", {}).get(name))
    if entry is None:
        raise RunDirError(f"no artifact '{name}' in {folder}; available: "
                          f"{list_artifacts(folder, manifest)}")
    if not entry.get("passed", True) and not allow_failed:
        raise RunDirError(f"artifact '{name}' in {folder} failed its parity check; see parity.json")
    if name.startswith("torch"):
        model = load_model_dir(folder).model
        return TorchBackend(model, int8=name == "torch-int8", threads=threads)
    if entry.get("backend") == "tensorrt":
        return TensorRtBackend(folder / entry["file"])
    if entry.get("backend") == "openvino":
        return OpenVinoBackend(folder / entry["file"], threads=threads)
    return OrtBackend(folder / entry["file"], threads=threads, spin_wait=spin_wait)
