"""`kiln triton RUN`: package a run's verified ONNX artifact as a Triton model repository that
takes text (an ensemble: tokenizer, model, postprocess; see triton_ensemble.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from kiln.errors import RunDirError
from kiln.export.triton import ModelBackend
from kiln.export.triton_ensemble import write_text_ensemble
from kiln.models import MANIFEST, read_manifest


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

    The default artifact is the export's recommended one when it is an ONNX file that passed
    parity (for ``kind="gpu"``: fp16, else fp32), otherwise the plain fp32 ONNX.

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
    if artifact is None:
        wanted = ["onnx-fp16", "onnx-opt", "onnx-fp32"] if kind == "gpu" else [
            manifest.get("export", {}).get("recommended"), "onnx-opt", "onnx-fp32"]
        artifact = next((a for a in wanted if a in artifacts and artifacts[a]["passed"]
                         and artifacts[a]["backend"] == "onnxruntime"), None)
        if artifact is None:
            raise RunDirError(f"{export} holds no ONNX artifact that passed parity")
    entry = artifacts.get(artifact)
    if entry is None or entry["backend"] != "onnxruntime":
        onnx_names = [a for a, e in artifacts.items() if e["backend"] == "onnxruntime"]
        raise RunDirError(f"'{artifact}' is not an ONNX artifact of {export}; choose from {onnx_names}")
    if not entry["passed"]:
        raise RunDirError(f"artifact '{artifact}' failed its parity check; see {export}/parity.json")
    model_manifest = {**manifest, "triton": {"artifact": artifact, "model_backend": model_backend}}
    return write_text_ensemble(
        export / entry["file"], model_manifest, run / "triton", name or run.resolve().name,
        tokenizer_file=export / str(manifest.get("tokenizer", "tokenizer.json")),
        model_backend=model_backend, max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind, tensorrt=tensorrt,
    )
