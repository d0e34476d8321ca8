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


def reference_artifact(manifest: dict[str, Any]) -> str:
    """The trained model itself as an artifact name: ``torch-fp32`` or ``keras-fp32``."""
    return f"{manifest.get('framework', 'torch')}-fp32"


def list_artifacts(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Artifact names usable from ``folder``: the trained model and every exported artifact."""
    return [reference_artifact(manifest), *manifest.get("artifacts", {})]


def load_predictor(
    path: str | os.PathLike[str], artifact: str | None = None, *, threads: int | None = None,
    allow_failed: bool = False, spin_wait: bool = True,
) -> Predictor:
    """A Predictor over ``artifact``; by default the one `kiln bench` measured fastest, else the
    export's recommended one, else the trained model (torch-fp32 or keras-fp32).

    Raises:
        RunDirError: unknown artifact, a file that fails its checksum, or an artifact that failed
            parity (unless ``allow_failed``).
    """
    folder = artifact_folder(path)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    name = (artifact or _benchmarked_choice(folder, manifest)
            or manifest.get("export", {}).get("recommended") or reference_artifact(manifest))
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
    return choice if choice == reference_artifact(manifest) or (entry and entry.get("passed")) else None


def make_backend(folder: Path, manifest: dict[str, Any], name: str, *, threads: int | None = None,
                 allow_failed: bool = False, spin_wait: bool = True) -> Backend:
    """The backend that runs artifact ``name`` of ``folder``.

    Raises:
        RunDirError: unknown or failed artifact, or one whose runtime is not installed.
    """
    reference = reference_artifact(manifest)
    # the trained model itself: always there, never parity-checked
    entry: dict[str, Any] | None = (
        {"passed": True} if name == reference else manifest.get("artifacts", {}).get(name))
    if entry is None:
        raise RunDirError(f"no artifact '{name}' in {folder}; available: "
                          f"{list_artifacts(folder, manifest)}")
    if not entry.get("passed", True) and not allow_failed:
        raise RunDirError(f"artifact '{name}' in {folder} failed its parity check; see parity.json")
    if name.startswith("torch"):
        model = load_model_dir(folder).model
        return TorchBackend(model, int8=name == "torch-int8", threads=threads,
                            fp32_layers=entry.get("fp32_layers", ()))
    if name == "keras-fp32" or entry.get("backend") == "tensorflow":
        return _tensorflow_backend(folder, manifest, name, entry, threads)
    if entry.get("backend") == "tensorrt":
        return TensorRtBackend(folder / entry["file"])
    if entry.get("backend") == "openvino":
        return OpenVinoBackend(folder / entry["file"], threads=threads)
    return OrtBackend(folder / entry["file"], threads=threads, spin_wait=spin_wait)


def backend_available(name: str, manifest: dict[str, Any]) -> bool:
    """Whether this installation can run artifact ``name`` (TensorFlow ones need kiln[keras])."""
    entry = manifest.get("artifacts", {}).get(name, {})
    if name == "keras-fp32" or entry.get("backend") == "tensorflow":
        from kiln.keras import keras_available

        return keras_available()
    if entry.get("backend") == "openvino":
        from kiln.export.openvino_export import openvino_available

        return openvino_available()
    if entry.get("backend") == "tensorrt":
        from kiln.export.tensorrt_export import tensorrt_available

        return tensorrt_available()
    return True


def _tensorflow_backend(folder: Path, manifest: dict[str, Any], name: str, entry: dict[str, Any],
                        threads: int | None) -> Backend:
    if not backend_available(name, manifest):
        from kiln.keras import INSTALL_HINT

        raise RunDirError(f"artifact '{name}' runs on TensorFlow, which is not installed: "
                          f"{INSTALL_HINT}; the ONNX artifacts need only onnxruntime")
    from kiln.keras.backends import KerasBackend, SavedModelBackend

    if name == "keras-fp32":
        return KerasBackend.from_file(folder / manifest["weights"], threads=threads)
    return SavedModelBackend(folder / entry["file"], threads=threads)
