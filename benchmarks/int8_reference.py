"""int8 throughput on the reference configuration against eager fp32, in one run.

Reference model: embed 512, 8 heads, 6 layers, vocabulary 10000 (random weights: speed does not
depend on training), batch 32, length 128, CPU threads as given. Measures eager fp32 (the
baseline), ONNX Runtime fp32 / optimised, ONNX Runtime dynamic and static int8, torch dynamic int8, OpenVINO fp32/int8 (with kiln[openvino]), and the
machine's int8 matrix-multiply peak (ONNX Runtime MatMulInteger, 2048^3), then prints samples/s, the ratio to
eager fp32 (target: int8 >= 2x) and the share of the int8 peak reached.

    python benchmarks/int8_reference.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kiln.bench.peaks import ort_int8_peak
from kiln.export.fusable import fusable_copy
from kiln.export.onnx_export import export_onnx, export_onnx_torchscript
from kiln.export.onnx_optimize import (
    optimize_for_ort,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from kiln.export.openvino_export import convert_openvino, quantize_openvino_int8
from kiln.extras import installed
from kiln.models import TransformerClassifier
from kiln.runtime import OpenVinoBackend, OrtBackend, TorchBackend

D, HEADS, LAYERS, FF, VOCAB = 512, 8, 6, 2048, 10000


def matmul_gops_per_sample(length: int) -> float:
    """Multiply-accumulates x2 of one sample's forward pass (projections, FFN, attention)."""
    per_layer = 2 * length * (4 * D * D + 2 * D * FF) + 2 * 2 * length * length * D
    return LAYERS * per_layer / 1e9


def int8_peak_gops(threads: int, n: int = 2048) -> float:
    """The int8 matrix-multiply rate ONNX Runtime reaches here (MatMulInteger u8 x s8, n^3), as
    `kiln bench` measures it (torch._int_mm has no fast CPU path in this torch build)."""
    return ort_int8_peak(threads, n, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    parser.add_argument("--batches", type=int, default=3, help="batches timed per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TransformerClassifier(VOCAB, 4, 128, D, HEADS, LAYERS, FF, 0.1).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, size=(args.batch, args.length), dtype=np.int64)
    mask = np.ones_like(ids)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_fp32 = export_onnx(model, Path(tmp) / "model.onnx", 128)
        # As kiln export does: the fusable twin (attention fused by ORT) feeds the optimised and
        # dynamic int8 graphs; the unfused optimisation is measured too, for comparison.
        twin = fusable_copy(model)
        assert twin is not None
        fusable = export_onnx_torchscript(twin, Path(tmp) / "model.fusable.onnx", 128)
        print("fused:", optimize_for_ort(fusable, Path(tmp) / "model.opt.onnx", HEADS, D))
        optimize_for_ort(onnx_fp32, Path(tmp) / "model.unfused-opt.onnx", HEADS, D)
        quantize_dynamic_int8(Path(tmp) / "model.opt.onnx", Path(tmp) / "model.int8.onnx")
        quantize_dynamic_int8(Path(tmp) / "model.unfused-opt.onnx",
                              Path(tmp) / "model.unfused-int8.onnx")
        calibration = [{"input_ids": rng.integers(5, VOCAB, size=(8, args.length), dtype=np.int64),
                        "attention_mask": np.ones((8, args.length), dtype=np.int64)}
                       for _ in range(8)]
        quantize_static_int8(onnx_fp32, Path(tmp) / "model.int8-static.onnx", calibration)
        extra = {"onnxruntime static int8": OrtBackend(Path(tmp) / "model.int8-static.onnx",
                                                       threads=args.threads)}
        if installed("openvino"):
            xml = convert_openvino(onnx_fp32, Path(tmp) / "model.ov.xml")
            quantize_openvino_int8(xml, Path(tmp) / "model.ov-int8.xml", calibration)
            extra |= {"openvino fp32": OpenVinoBackend(xml, threads=args.threads),
                     "openvino int8 (NNCF)": OpenVinoBackend(Path(tmp) / "model.ov-int8.xml",
                                                             threads=args.threads)}
        backends = {
            "eager fp32 (baseline)": TorchBackend(model),
            "torch dynamic int8": TorchBackend(copy.deepcopy(model), int8=True),
            "onnxruntime fp32": OrtBackend(onnx_fp32, threads=args.threads),
            "onnxruntime optimised fp32": OrtBackend(Path(tmp) / "model.opt.onnx", threads=args.threads),
            "onnxruntime dynamic int8": OrtBackend(Path(tmp) / "model.int8.onnx", threads=args.threads),
            "ort unfused opt fp32": OrtBackend(Path(tmp) / "model.unfused-opt.onnx",
                                               threads=args.threads),
            "ort unfused dynamic int8": OrtBackend(Path(tmp) / "model.unfused-int8.onnx",
                                                   threads=args.threads),
            **extra,
        }
        for backend in backends.values():
            backend.run(ids, mask)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(args.rounds):  # interleaved so drift hits every backend alike
            for name, backend in backends.items():
                start = time.perf_counter()
                for _ in range(args.batches):
                    backend.run(ids, mask)
                rates[name].append(args.batches * args.batch / (time.perf_counter() - start))

    peak = int8_peak_gops(args.threads)
    work = matmul_gops_per_sample(args.length)
    base = statistics.median(rates["eager fp32 (baseline)"])
    print(f"reference model, batch {args.batch}, length {args.length}, {args.threads} threads, "
          f"{work:.2f} GOP of matrix products per sample; int8 matmul peak {peak:.0f} GOP/s")
    for name, values in rates.items():
        rate = statistics.median(values)
        share = f"  {100 * rate * work / peak:5.1f}% of int8 peak" if "int8" in name else ""
        print(f"{name:28s} {rate:7.1f} samples/s  {rate / base:5.2f}x eager fp32{share}")


if __name__ == "__main__":
    main()
