"""Build a Predictor from a run, an export folder or a model folder, by artifact name."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import RunDirError
from kiln.extras import EXTRAS, install_hint
from kiln.models import MANIFEST, load_model_dir, read_manifest, verify_files
from kiln.models.package import check_vocabulary
from kiln.runtime.artifacts import KIND, reference_artifact, runs_here
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
    return [reference_artifact(manifest), *manifest.get("artifacts", {})]


def load_predictor(
    path: str | os.PathLike[str], artifact: str | None = None, *, threads: int | None = None,
    allow_failed: bool = False, spin_wait: bool = True, concurrency: int = 1,
) -> Predictor:
    """A Predictor over ``artifact``; by default the one `kiln bench` measured fastest, else the
    export's recommended one, else the trained model (torch-fp32 or keras-fp32). ``concurrency``:
    how many threads will run it at once (each with ``threads`` threads).

    Raises:
        RunDirError: unknown artifact, a file that fails its checksum, or an artifact that failed
            parity (unless ``allow_failed``).
    """
    folder = artifact_folder(path)
    manifest = read_manifest(folder)
    tokenizer = check_vocabulary(folder, manifest)  # before the checksums: it says more
    verify_files(folder, manifest)
    name = artifact or default_artifact(folder, manifest)
    backend = make_backend(folder, manifest, name, threads=threads, allow_failed=allow_failed,
                           spin_wait=spin_wait, concurrency=concurrency)
    kwargs = manifest["model"]["kwargs"]
    return Predictor(backend=backend, tokenizer=tokenizer, label_names=list(manifest["labels"]),
                     max_length=int(manifest["max_length"]), pad_id=int(kwargs.get("pad_id", 0)),
                     vocab_size=int(kwargs["vocab_size"]) if "vocab_size" in kwargs else None)


@dataclass(frozen=True)
class ArtifactChoice:
    """The artifact a command uses when none is named, and why (printed by every command)."""

    name: str
    reason: str
    measured: bool  # picked from `kiln bench`'s measurements, not from a fixed order


UNMEASURED = "not benchmarked yet (`kiln bench RUN` measures and picks)"


def choose_artifact(folder: Path, manifest: dict[str, Any]) -> ArtifactChoice:
    """The one recommendation every command follows: the artifact `kiln bench` measured fastest
    at batch 1 on real texts; before a bench, the first artifact that passed parity in kiln's
    fixed preference order (labelled unmeasured); with no export, the trained model."""
    measured = bench_pick(folder, manifest)
    if measured is not None:
        return measured
    exported = manifest.get("export", {})
    preferred = exported.get("preferred") or exported.get("recommended")  # before kiln 0.13
    if preferred and manifest.get("artifacts", {}).get(preferred, {}).get("passed"):
        return ArtifactChoice(preferred, f"{UNMEASURED}: the first artifact that passed parity "
                              "in kiln's fixed order", measured=False)
    return ArtifactChoice(reference_artifact(manifest), "the trained model itself: the run has no "
                          "export, so nothing is verified (`kiln export RUN`)", measured=False)


def default_artifact(folder: Path, manifest: dict[str, Any]) -> str:
    """The name of `choose_artifact`'s pick (`kiln serve`, `predict` and `deploy` use it)."""
    return choose_artifact(folder, manifest).name


def bench_pick(folder: Path, manifest: dict[str, Any], *,
               among: Callable[[str], bool] | None = None) -> ArtifactChoice | None:
    """The verified artifact `kiln bench` measured fastest at batch 1 on real texts for this
    export (only those for which ``among`` is true), if it was benchmarked."""
    report = _bench_report(folder)
    if report is None:
        return None
    passed = {name for name, e in manifest.get("artifacts", {}).items() if e.get("passed")}
    passed.add(reference_artifact(manifest))
    results = report.get("results", {})
    name = str(report.get("recommended"))
    why = str(report.get("recommended_why", "lowest p50 at batch 1 on real texts"))
    if name not in passed or (among is not None and not among(name)):
        candidates = [n for n in results if n in passed and (among is None or among(n))]
        if not candidates:
            return None
        name = min(candidates, key=lambda n: results[n]["latency_b1_real"]["p50_ms"])
        why = "lowest p50 at batch 1 on real texts among those that fit here"
    p50 = results.get(name, {}).get("latency_b1_real", {}).get("p50_ms")
    return ArtifactChoice(name, f"{why}, measured by kiln bench"
                          + (f": {p50:.2f} ms" if p50 is not None else ""), measured=True)


def _bench_report(folder: Path) -> dict[str, Any] | None:
    """The run's bench/report.json, when ``folder`` is its export and the bench is readable."""
    report = folder.parent / "bench" / "report.json"
    if folder.name != "export" or not report.exists():
        return None
    try:
        loaded = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def make_backend(folder: Path, manifest: dict[str, Any], name: str, *, threads: int | None = None,
                 allow_failed: bool = False, spin_wait: bool = True,
                 concurrency: int = 1) -> Backend:
    """The backend that runs artifact ``name`` of ``folder``.

    Raises:
        RunDirError: unknown or failed artifact, or one whose runtime is not installed.
    """
    # the trained model itself: always there, never parity-checked
    entry: dict[str, Any] | None = ({"passed": True} if name == reference_artifact(manifest)
                                    else manifest.get("artifacts", {}).get(name))
    if entry is None:
        raise RunDirError(f"no artifact '{name}' in {folder}; available: "
                          f"{list_artifacts(folder, manifest)}")
    if not entry.get("passed", True) and not allow_failed:
        raise RunDirError(f"artifact '{name}' in {folder} failed its parity check; see parity.json")
    kind = KIND.get(name)
    backend = kind.backend if kind is not None else entry.get("backend", "onnxruntime")
    if not runs_here(name, manifest):
        extra = kind.extra if kind is not None and kind.extra else backend
        raise RunDirError(f"artifact '{name}' runs on {backend}, which is not installed here: "
                          f"{install_hint(extra) if extra in EXTRAS else extra}; the ONNX "
                          "artifacts need only onnxruntime")
    if backend == "torch":  # the trained weights, as they are or quantised
        return TorchBackend(load_model_dir(folder).model, int8=kind is not None and kind.int8,
                            threads=threads, fp32_layers=entry.get("fp32_layers", ()))
    if name == reference_artifact(manifest):  # the trained Keras model
        from kiln.runtime.tensorflow import KerasBackend

        return KerasBackend.from_file(folder / manifest["weights"], threads=threads)
    return open_file(backend, folder / entry["file"], threads=threads, spin_wait=spin_wait,
                     max_length=int(manifest["max_length"]), concurrency=concurrency)


def open_file(backend: str, path: Path, *, threads: int | None = None, spin_wait: bool = True,
              max_length: int | None = None, concurrency: int = 1) -> Backend:
    """The backend that runs artifact file (or folder) ``path`` on runtime ``backend``
    (``max_length``: the model's, for backends that pad inputs to a few shapes; ``concurrency``:
    threads that will run it at once, for backends that must be told).

    Raises:
        RunDirError: kiln has no such runtime.
    """
    if backend == "onnxruntime":
        return OrtBackend(path, threads=threads, spin_wait=spin_wait)
    if backend == "openvino":
        return OpenVinoBackend(path, threads=threads, max_length=max_length, streams=concurrency)
    if backend == "tensorrt":
        return TensorRtBackend(path)
    if backend == "tensorflow":
        from kiln.runtime.tensorflow import SavedModelBackend

        return SavedModelBackend(path, threads=threads)
    raise RunDirError(f"{path}: no runtime named '{backend}'")
