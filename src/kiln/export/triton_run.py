"""`kiln triton RUN`: package a run's verified ONNX artifact as a Triton model repository."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from kiln.errors import RunDirError
from kiln.export.triton import write_triton_repository
from kiln.models import MANIFEST, read_manifest


def triton_run(
    run_dir: str | os.PathLike[str], *, name: str | None = None, artifact: str | None = None,
    max_batch_size: int = 64, max_queue_delay_us: int = 2000, instances: int = 1,
    kind: Literal["cpu", "gpu"] = "cpu", tensorrt: bool = False,
) -> Path:
    """Write ``run_dir/triton/<name>/`` from the export's ONNX ``artifact``.

    The default artifact is the export's recommended one when it is an ONNX file that passed
    parity (for ``kind="gpu"``: fp16, else fp32), otherwise the plain fp32 ONNX.

    Raises:
        RunDirError: no export yet, an unknown or failed artifact, or one that is not ONNX.
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
    model_manifest = {**manifest, "triton": {"artifact": artifact}}
    return write_triton_repository(
        export / entry["file"], model_manifest, run / "triton", name or run.resolve().name,
        max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
        instances=instances, kind=kind, tensorrt=tensorrt, tokenizer_file=export / "tokenizer.json",
    )
