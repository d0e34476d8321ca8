"""The artifact table: what each kind of inference artifact is, declared once.

Export builds and verifies artifacts from it, the runtime opens them with it, bench measures the
ones it can run here, Triton packaging picks the ONNX ones, and serve loads whichever was chosen.
Adding a kind of artifact is one entry here plus its builder in ``kiln.export.builders``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import extras

# /proc/cpuinfo flags of x86 CPUs that compute in bf16 natively (Cooper Lake and later Xeons,
# AMD Zen 4); elsewhere bf16 is emulated and slower than fp32 (../shared/FINDINGS.md)
# /proc/cpuinfo flags of bf16 matrix instructions, by the names people know them by. x86 lists
# them on its "flags" line, Arm on its "Features" line.
X86_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
ARM_BF16_FLAGS = {"bf16": "Arm BF16"}
BF16_FLAGS = frozenset(X86_BF16_FLAGS)  # what OpenVINO's CPU plugin computes bf16 with


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact."""

    name: str  # e.g. onnx-int8-dynamic: what users pass to --artifact
    file: str  # its file (or folder) in export/
    backend: str  # the runtime that runs it: torch, tensorflow, onnxruntime, openvino, tensorrt
    precision: str  # fp32, bf16, fp16 or int8: what its matrix multiplies compute in
    # the function of kiln.export.builders that builds it; None: the trained model itself
    builder: str | None = None
    source: str | None = None  # the artifact it is built from (None: the trained model)
    framework: str | None = None  # built from (or being) a model of this framework only
    extra: str | None = None  # the optional extra (kiln.extras) needed to build and run it
    # the function of kiln.export.builders that rebuilds it with some layers in fp32 when it
    # fails parity (int8 kinds; see kiln.export.fallback); None: it never falls back
    fallback: str | None = None
    # OpenVINO's INFERENCE_PRECISION_HINT for the operations that are not int8, recorded in the
    # IR at export (None: f32). "bf16" kinds are built only on CPUs with native bf16, where their
    # parity is measured in bf16; elsewhere OpenVINO would quietly compute them in f32.
    inference_precision: str | None = None

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    def installed(self) -> bool:
        """Whether this machine can run it (its extra is installed)."""
        return self.extra is None or extras.installed(self.extra)

    def not_built_here(self) -> str | None:
        """Why `kiln export` cannot build it on this machine, or None when it can."""
        if not self.installed():
            assert self.extra is not None
            return f"needs the optional extra '{self.extra}': {extras.install_hint(self.extra)}"
        if self.inference_precision == "bf16" and not native_bf16():
            return ("computes in bf16, which this CPU does not do natively (no "
                    f"{' or '.join(sorted(BF16_FLAGS))} in /proc/cpuinfo): export it on the kind "
                    "of machine that will serve it")
        return None


KINDS: tuple[ArtifactKind, ...] = (
    # the trained models themselves: the parity reference and the benchmark baseline
    ArtifactKind("torch-fp32", "model.safetensors", "torch", "fp32", framework="torch"),
    ArtifactKind("keras-fp32", "model.keras", "tensorflow", "fp32", framework="keras",
                 extra="keras"),
    # built in this order; each after its source
    ArtifactKind("torch-int8", "model.safetensors", "torch", "int8", "build_torch_int8",
                 framework="torch", fallback="mixed_torch_int8"),
    ArtifactKind("tf-savedmodel", "saved_model", "tensorflow", "fp32", "build_tf_savedmodel",
                 framework="keras", extra="keras"),
    ArtifactKind("onnx-fp32", "model.onnx", "onnxruntime", "fp32", "build_onnx_fp32"),
    ArtifactKind("onnx-opt", "model.opt.onnx", "onnxruntime", "fp32", "build_onnx_opt",
                 source="onnx-fp32"),
    ArtifactKind("onnx-int8-dynamic", "model.int8.onnx", "onnxruntime", "int8",
                 "build_onnx_int8_dynamic", source="onnx-opt",
                 fallback="mixed_onnx_int8_dynamic"),
    ArtifactKind("onnx-int8-static", "model.int8-static.onnx", "onnxruntime", "int8",
                 "build_onnx_int8_static", source="onnx-fp32", fallback="mixed_onnx_int8_static"),
    ArtifactKind("onnx-fp16", "model.fp16.onnx", "onnxruntime", "fp16", "build_onnx_fp16",
                 source="onnx-fp32"),
    ArtifactKind("openvino-fp32", "model.ov.xml", "openvino", "fp32", "build_openvino_fp32",
                 source="onnx-fp32", extra="openvino"),
    ArtifactKind("openvino-int8", "model.ov-int8.xml", "openvino", "int8", "build_openvino_int8",
                 source="openvino-fp32", extra="openvino", fallback="mixed_openvino_int8"),
    # the IRs above compiled with bf16 for every operation that is not int8; each is an IR file
    # of its own that records the precision, and shares its source's weights (a hard link)
    ArtifactKind("openvino-bf16", "model.ov-bf16.xml", "openvino", "bf16", "build_openvino_bf16",
                 source="openvino-fp32", extra="openvino", inference_precision="bf16"),
    ArtifactKind("openvino-int8-bf16", "model.ov-int8-bf16.xml", "openvino", "int8",
                 "build_openvino_int8_bf16", source="openvino-int8", extra="openvino",
                 fallback="mixed_openvino_int8_bf16", inference_precision="bf16"),
    ArtifactKind("tensorrt-fp16", "model.trt.plan", "tensorrt", "fp16", "build_tensorrt_fp16",
                 source="onnx-fp32", extra="tensorrt"),
)
KIND = {kind.name: kind for kind in KINDS}
ARTIFACTS = tuple(kind.name for kind in KINDS if kind.builder)  # what `kiln export` can build
# Without benchmark numbers, the artifact expected to be fastest on a CPU comes first. Each bf16
# twin comes right after the IR it is made from, so it never wins a tie against it: the original
# is closer to the trained model, and at batch 1 (what the recommendation measures) it was faster
# on an AVX512-BF16 CPU without AMX (benchmarks/openvino_bf16.py). CPUs without native bf16 have
# no bf16 twins, so their order is unchanged.
PREFERENCE = ("openvino-int8", "openvino-int8-bf16", "onnx-int8-dynamic", "onnx-int8-static",
              "onnx-opt", "onnx-fp32", "openvino-fp32", "openvino-bf16", "torch-int8")


def reference_artifact(manifest: dict[str, Any]) -> str:
    """The trained model itself as an artifact name: ``torch-fp32`` or ``keras-fp32``."""
    return f"{manifest.get('framework', 'torch')}-fp32"


def buildable(framework: str) -> tuple[str, ...]:
    """Every artifact that can be built from a ``framework`` model, whatever is installed."""
    return tuple(name for name in ARTIFACTS if KIND[name].framework in (None, framework))


def default_artifacts(framework: str = "torch") -> tuple[str, ...]:
    """Every artifact this machine can build from a ``framework`` run (OpenVINO needs the
    kiln[openvino] extra, TensorRT the `tensorrt` package and a CUDA GPU, the bf16 ones a CPU with
    native bf16); `not_built_here` says why the others are left out."""
    return tuple(name for name in buildable(framework) if KIND[name].not_built_here() is None)


def not_built_here(framework: str = "torch") -> dict[str, str]:
    """The artifacts of a ``framework`` run that this machine cannot build, and why."""
    return {name: why for name in buildable(framework)
            if (why := KIND[name].not_built_here()) is not None}


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (AMX-BF16 or AVX512-BF16), from ``cpuinfo`` (text
    in the format of Linux's /proc/cpuinfo; by default this machine's, and False without one)."""
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    return any(unit in X86_BF16_FLAGS.values() for unit in cpu_bf16_units(text))


def cpu_bf16_units(cpuinfo: str | None = None) -> list[str]:
    """The bf16 matrix instructions that ``cpuinfo`` (the text of /proc/cpuinfo; by default this
    machine's, empty without one) lists for the first processor, by name: e.g.
    ``["AMX-BF16", "AVX512-BF16"]``; empty when there are none."""
    for line in (_proc_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, _, value = line.partition(":")
        known = {"flags": X86_BF16_FLAGS, "Features": ARM_BF16_FLAGS}.get(key.strip())
        if known is not None:
            flags = set(value.split())
            return [name for flag, name in known.items() if flag in flags]
    return []


@functools.cache
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux
        return ""


def with_sources(names: list[str]) -> list[str]:
    """``names`` and every artifact they are built from, in build order."""
    wanted = set(names)
    for name in reversed(ARTIFACTS):  # a source always comes before what is built from it
        source = KIND[name].source
        if name in wanted and source is not None:
            wanted.add(source)
    return [name for name in ARTIFACTS if name in wanted]


def runs_here(name: str, manifest: dict[str, Any]) -> bool:
    """Whether this installation can run artifact ``name`` of ``manifest``'s folder (TensorFlow
    ones need kiln[keras], say)."""
    kind = KIND.get(name)
    if kind is None:  # recorded by a newer kiln: its backend decides
        backend = manifest.get("artifacts", {}).get(name, {}).get("backend")
        kind = next((k for k in KINDS if k.backend == backend), None)
    return kind is not None and kind.installed()
