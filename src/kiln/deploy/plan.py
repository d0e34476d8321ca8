"""What a deployment of a run is: the model served, where its files are, the exact packages and
base images, and the settings every generated file shares (`DeployPlan`)."""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from kiln.errors import RunDirError
from kiln.models import MANIFEST, read_manifest
from kiln.runtime import KIND, ArtifactChoice, choose_artifact, reference_artifact

# NGC's Triton release for the GPU image: 24.12 is the last on Ubuntu 22.04 (Python 3.10, whose
# pip installs into the system Python without PEP 668's refusal); its Python backend stub is
# built against numpy 1, so the ensemble's Python steps get numpy 1 (see README, Triton).
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.12-py3"
TRITON_NUMPY = "numpy==1.26.4"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# kiln serve's SIGTERM drain: uvicorn's timeout_graceful_shutdown (serve/server.py UVICORN)
DRAIN_S = 30


@dataclass(frozen=True)
class DeploySettings:
    """Choices for the generated files; every default is what `kiln deploy` writes.

    ``workers`` is the kiln serve processes per replica (and the CPU cores it requests);
    ``max_queue_size`` must match the server's `--max-queue-size` (per worker), as the queue
    alert compares the replica's queue depth with ``workers * max_queue_size``."""

    image: str = ""  # the CPU image's name:tag; "" = kiln-<model>:<kiln version>
    workers: int = 2
    memory: str = "2Gi"  # per replica: request and limit
    replicas: int = 2  # the HPA's minimum
    max_replicas: int = 10
    cpu_target_percent: int = 70  # the HPA's target CPU utilisation
    max_queue_size: int = 512
    max_batch_size: int = 32
    api_key_secret: str = "kiln-api-key"  # a Secret with key `api-key`
    pre_stop_s: int = 5  # time for the endpoint's removal to reach every proxy before SIGTERM
    error_ratio: float = 0.01  # server failures / requests over 5 minutes
    rejected_ratio: float = 0.01  # 503 for a full queue / requests over 5 minutes
    p99_latency_s: float = 0.5
    queue_fill: float = 0.8  # share of the replica's queue capacity, for 5 minutes
    drift_psi: float = 0.2  # a PSI above 0.2 is the usual "significant shift"
    drift_for: str = "15m"


@dataclass(frozen=True)
class DeployPlan:
    """One run's deployment, resolved and checked before anything is written."""

    run: Path
    name: str  # the served model's name (the run folder's)
    artifact: str  # what kiln serve serves
    why: str  # why that artifact (the bench's pick, or named)
    backend: str  # its runtime: onnxruntime, openvino, torch, ...
    export: Path  # the folder with the artifact and its manifest (copied into the image)
    triton: Path | None  # RUN/triton/, when `kiln triton` was run
    triton_model_backend: str  # "onnxruntime" or "python": what the GPU image's steps need
    settings: DeploySettings
    requirements: list[str] = field(default_factory=list)  # name==version, the CPU image's
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    kiln_version: str = ""

    @property
    def image(self) -> str:
        return self.settings.image or f"kiln-{self.name}:{self.kiln_version}"

    @property
    def gpu_image(self) -> str:
        name, _, tag = self.image.rpartition(":")
        return f"{name}-triton-gpu:{tag}"

    @property
    def base_image(self) -> str:
        """The CPU image's base: the Python that ran the parity check, by exact version."""
        return f"python:{self.python}-slim-bookworm"

    @property
    def wheel(self) -> str:
        return f"kiln-{self.kiln_version}-py3-none-any.whl"


def plan_deploy(run_dir: str | Path, artifact: str | None = None,
                settings: DeploySettings | None = None) -> DeployPlan:
    """Resolve the deployment of ``run_dir``: its export and the artifact to serve.

    Raises:
        RunDirError: no export, an unknown artifact or one that failed its parity check.
    """
    run = Path(run_dir)
    export = run / "export"
    if not (export / MANIFEST).exists():
        raise RunDirError(f"{run} has no export/{MANIFEST}; run `kiln export {run}` first (and "
                          f"`kiln bench {run}` to serve the fastest artifact)")
    manifest = read_manifest(export)
    choice = (ArtifactChoice(artifact, "named with --artifact", measured=False)
              if artifact else choose_artifact(export, manifest))
    name = choice.name
    entry = manifest.get("artifacts", {}).get(name)
    if name != reference_artifact(manifest):
        if entry is None:
            raise RunDirError(f"no artifact '{name}' in {export}; available: "
                              f"{[reference_artifact(manifest), *manifest.get('artifacts', {})]}")
        if not entry.get("passed"):
            raise RunDirError(f"artifact '{name}' failed its parity check; see "
                              f"{export}/parity.json")
    kind = KIND.get(name)
    backend = kind.backend if kind is not None else (entry or {}).get("backend", "torch")
    triton = run / "triton" if (run / "triton").is_dir() else None
    extras = {"openvino"} if backend == "openvino" else set()
    return DeployPlan(
        run=run, name=run.resolve().name, artifact=name, why=choice.reason, backend=backend,
        export=export,
        triton=triton, triton_model_backend=_triton_model_backend(triton),
        settings=settings or DeploySettings(), requirements=pinned_requirements("kiln", extras),
        kiln_version=md.version("kiln"))


def _triton_model_backend(triton: Path | None) -> str:
    """Where the Triton repository's model step runs, from its ensemble's manifest."""
    for manifest in sorted(triton.glob(f"*/{MANIFEST}")) if triton else []:
        found: dict[str, Any] = read_manifest(manifest.parent).get("triton", {})
        if "model_backend" in found:
            return str(found["model_backend"])
    return "onnxruntime"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(root: str, extras: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``name==version`` of every package ``root`` needs, transitively, as installed here (the
    environment whose artifacts passed parity), sorted; ``root`` itself is left out.

    Raises:
        RunDirError: a needed package is not installed (a broken environment).
    """
    pins: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        dist, wanted = todo.pop()
        if (_normal(dist), wanted) in seen:
            continue
        seen.add((_normal(dist), wanted))
        try:
            found = md.distribution(dist)
        except md.PackageNotFoundError:
            raise RunDirError(f"{dist} is needed by {root} but not installed here; reinstall "
                              f"{root} to make a deployment from this environment") from None
        if _normal(dist) != _normal(root):
            pins[_normal(found.metadata["Name"])] = found.version
        for line in found.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in {"", *wanted}):
                todo.append((req.name, frozenset(req.extras)))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]
