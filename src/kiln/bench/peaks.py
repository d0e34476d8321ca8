"""The machine's matrix-multiply peaks, measured when `kiln bench` starts, and each artifact's
share of the peak for its precision.

An artifact's rate means little alone: 40 samples/s is good on two cores and poor on sixteen. So
the bench measures, with its own thread count, how fast this machine multiplies matrices in fp32
and bf16 (torch, i.e. oneDNN) and in int8 (ONNX Runtime's MatMulInteger, u8 x s8: the engine of
kiln's int8 ONNX artifacts; torch._int_mm had no fast CPU path here, about 2 GOP/s), and reports
what share of it each artifact reaches on real texts. bf16 is measured even where the CPU has no
native bf16 (it is emulated there, slower than fp32, which is why no bf16 artifact is built).

Each peak is the best of repeated 1024 x 1024 x 1024 products over a fraction of a second, so the
three take about a second in all; on a shared machine they move by 20-35% between runs
(../shared/FINDINGS.md), and the shares with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from kiln.runtime.artifacts import KIND, native_bf16

SIZE = 1024  # rows = columns = inner dimension of each timed product
SECONDS = 0.25  # per precision, after one warm-up product


@dataclass(frozen=True)
class Peaks:
    """Matrix-multiply rates of this machine, in billions of operations (multiply or add) per
    second, at ``threads`` threads."""

    fp32: float
    bf16: float
    int8: float
    threads: int
    native_bf16: bool  # bf16 computed by the CPU (avx512_bf16 or amx_bf16), not emulated
    size: int = SIZE

    def of(self, precision: str) -> float | None:
        """The peak that an artifact computing in ``precision`` is measured against (None for
        fp16, which CPUs here do not run)."""
        return {"fp32": self.fp32, "bf16": self.bf16, "int8": self.int8}.get(precision)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "unit": "GFLOP/s (int8: GOP/s)",
                "how": f"best of {self.size}^3 products: torch fp32/bf16, ONNX Runtime "
                       "MatMulInteger int8"}


def measure_peaks(threads: int, seconds: float = SECONDS, size: int = SIZE) -> Peaks:
    """The fp32, bf16 and int8 matrix-multiply peaks with ``threads`` threads (torch's thread
    count is put back afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fp32 = _torch_peak(torch.float32, size, seconds)
        bf16 = _torch_peak(torch.bfloat16, size, seconds)
    finally:
        torch.set_num_threads(before)
    return Peaks(fp32=fp32, bf16=bf16, int8=ort_int8_peak(threads, size, seconds),
                 threads=threads, native_bf16=native_bf16(), size=size)


def best_rate(run: Callable[[], object], operations: float, seconds: float) -> float:
    """Billions of ``operations`` per second of the fastest call of ``run`` over ``seconds``
    (after one warm-up call; at least three timed calls)."""
    run()
    best, calls, deadline = 0.0, 0, time.perf_counter() + seconds
    while calls < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        best = max(best, operations / (time.perf_counter() - start))
        calls += 1
    return best / 1e9


def _torch_peak(dtype: torch.dtype, n: int, seconds: float) -> float:
    g = torch.Generator().manual_seed(0)  # leave the global RNG alone
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    with torch.inference_mode():
        return best_rate(lambda: torch.mm(a, b), 2.0 * n**3, seconds)


def ort_int8_peak(threads: int, n: int, seconds: float) -> float:
    """MatMulInteger of a u8 activation and an s8 weight, as ONNX Runtime's dynamic int8
    artifacts multiply (VNNI or AMX where the CPU has them)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 127, (n, n), dtype=np.int8), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "peak",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    return best_rate(lambda: session.run(None, {"A": a}), 2.0 * n**3, seconds)


def matmul_flops(manifest: dict[str, Any], length: int) -> float | None:
    """Matrix-multiply FLOPs of one sample's forward pass at padded ``length`` (projections,
    feed-forward, attention scores and weighting, the head), from the manifest's model kwargs;
    None for a model kiln has no formula for."""
    model = manifest.get("model", {})
    kwargs = model.get("kwargs", {})
    if model.get("name") == "hf_encoder":
        config = kwargs.get("config", {})
        dims = (config.get("hidden_size"), config.get("intermediate_size"),
                config.get("num_hidden_layers"))
    else:  # kiln's transformer, and its Keras twin built from the same kwargs
        dims = (kwargs.get("embed_dim"), kwargs.get("ff_dim"), kwargs.get("num_layers"))
    if any(d is None for d in dims):
        return None
    d, ff, layers = (int(x) for x in dims)
    per_layer = 2 * length * (4 * d * d + 2 * d * ff) + 2 * 2 * length * length * d
    return float(layers * per_layer + 2 * d * int(kwargs.get("num_labels", 2)))


def workload_flops(manifest: dict[str, Any], lengths: Sequence[int]) -> float | None:
    """Mean matrix-multiply FLOPs per sample over batches padded to ``lengths`` (the bench
    cycles through its batches, so each weighs alike); None without a formula."""
    counts = [matmul_flops(manifest, length) for length in lengths]
    if not counts or any(c is None for c in counts):
        return None
    return float(np.mean([c for c in counts if c is not None]))


def peak_share(name: str, samples_per_s: float, flops_per_sample: float | None,
               peaks: Peaks | None) -> dict[str, Any] | None:
    """Artifact ``name``'s achieved rate at ``samples_per_s`` and its share of this machine's
    peak for the precision its matrix multiplies run in (int8 for int8 artifacts, whatever
    precision the rest runs in); None when either is unknown."""
    kind = KIND.get(name)
    peak = peaks.of(kind.precision) if kind is not None and peaks is not None else None
    if kind is None or flops_per_sample is None or not peak:
        return None
    achieved = samples_per_s * flops_per_sample / 1e9
    return {"precision": kind.precision, "achieved_gflops": achieved, "peak_gflops": peak,
            "share": achieved / peak}
