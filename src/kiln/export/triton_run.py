"""`kiln triton RUN`: package a run's verified ONNX artifact as a Triton model repository that
takes text (an ensemble: tokenizer, model, postprocess; see triton_ensemble.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from kiln.errors import RunDirError
from kiln.export.triton import ModelBackend
from kiln.export.triton_ensemble import write_text_ensemble
from kiln.models import MANIFEST, read_manifest
from kiln.runtime.load import UNMEASURED, ArtifactChoice, bench_pick


def triton_run(
    run_dir: str | os.PathLike[str], *, name: str | None = None, artifact: str | None = None,
    max_batch_size: int = 64, max_queue_delay_us: int = 2000, instances: int = 1,
    kind: Literal["cpu", "gpu"] = "cpu", tensorrt: bool = False,
    model_backend: ModelBackend = "onnxruntime",
) -> Path:
    """Write the Triton repository ``run_dir/triton/``: the ensemble ``<name>`` that takes text and
    its steps ``<name>_tokenizer``, ``<name>_model`` (the export's ONNX ``artifact``, on Triton's
    ONNX Runtime backend or, ``model_backend="python"``, its Python backend) and
    ``<name>_postprocess``.

    The default artifact is `triton_artifact`'s: the bench's pick when it is an ONNX file.

    Returns:
        The ensemble's folder ``run_dir/triton/<name>`` (its parent is the repository).

    Raises:
        RunDirError: no export yet, an unknown or failed artifact, or one that is not ONNX.
        TritonExportError: settings out of range, or a model the ensemble cannot wrap.
    """
    run = Path(run_dir)
    export = run / "export"
    if not (export / MANIFEST).exists():
        raise RunDirError(f"{run} has no export/{MANIFEST}; run `kiln export {run}` first")
    manifest = read_manifest(export)
    artifacts = manifest.get("artifacts", {})
    choice = (ArtifactChoice(artifact, "named with --artifact", measured=False)
              if artifact is not None else triton_artifact(export, manifest, kind))
    artifact = choice.name
    entry = artifacts.get(artifact)
    if entry is None or entry["backend"] != "onnxruntime":
        onnx_names = [a for a, e in artifacts.items() if e["backend"] == "onnxruntime"]
        raise RunDirError(f"'{artifact}' is not an ONNX artifact of {export}; choose from {onnx_names}")
    if not entry["passed"]:
        raise RunDirError(f"artifact '{artifact}' failed its parity check; see {export}/parity.json")
    model_manifest = {**manifest, "triton": {"artifact": artifact, "why": choice.reason,
                                             "model_backend": model_backend}}
    return write_text_ensemble(
        export / entry["file"], model_manifest, run / "triton", name or run.resolve().name,
        tokenizer_file=export / str(manifest.get("tokenizer", "tokenizer.json")),
        model_backend=model_backend, max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind, tensorrt=tensorrt,
    )


def triton_artifact(export: Path, manifest: dict[str, Any], kind: str = "cpu") -> ArtifactChoice:
    """The ONNX artifact a Triton repository holds by default: the one `kiln bench` recommends
    when it is ONNX, else the fastest ONNX artifact the bench measured; before a bench (or for
    ``kind="gpu"``, which the CPU bench says nothing about) the first that passed parity of
    fp16 (GPU only), onnx-opt, onnx-fp32.

    Raises:
        RunDirError: no ONNX artifact passed parity.
    """
    artifacts = manifest.get("artifacts", {})

    def usable(name: str) -> bool:
        entry = artifacts.get(name) or {}
        return bool(entry.get("passed")) and entry.get("backend") == "onnxruntime"

    measured = bench_pick(export, manifest, among=usable) if kind == "cpu" else None
    if measured is not None:
        return measured
    wanted = ["onnx-fp16", "onnx-opt", "onnx-fp32"] if kind == "gpu" else ["onnx-opt", "onnx-fp32"]
    found = next((a for a in wanted if usable(a)), None)
    if found is None:
        raise RunDirError(f"{export} holds no ONNX artifact that passed parity")
    why = ("for GPU: fp16 when it passed parity, else fp32 (the CPU bench does not apply)"
           if kind == "gpu" else f"{UNMEASURED}: the optimised fp32 ONNX, else the plain one")
    return ArtifactChoice(found, why, measured=False)
