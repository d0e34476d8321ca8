"""OpenVINO bf16 and int8+bf16 against ONNX Runtime's options for x86 CPUs, in one run.

Reference model (embed 512, 8 heads, 6 layers, vocabulary 10000; random weights: speed does not
depend on training), exported as `kiln export` does. Every variant is measured in interleaved
rounds (each variant once per round, so a slow minute of a shared machine hits them all alike) on:
batch 32 at length 32 and 128, batch 32 of real SST-2 dev texts (a WordPiece tokenizer trained on
SST-2 train; batches drawn afresh each round, so unbucketed OpenVINO meets new shapes as real
traffic brings them), and batch-1 p50 over real SST-2 texts. Medians over rounds; ratios against
ONNX Runtime dynamic int8 (kiln's onnx-int8-dynamic). Without /work/shared/data/sst2 the real-text
rows use random lengths 8-64.

Variants: eager torch fp32; ORT fp32 (onnx-opt), dynamic int8 (QOperator u8s8, per channel) with
and without spinning threads and with GELU approximation, static int8 QDQ u8s8 (onnx-int8-static),
QDQ s8s8, QOperator u8s8, 8-bit MatMulNBits with int8 compute (accuracy_level 4); OpenVINO fp32,
bf16, int8 (NNCF, SmoothQuant off), int8+bf16, and bf16 without shape buckets. ORT's
`mlas.enable_gemm_fastmath_arm64_bfloat16` is ARM-only and ORT has no bf16 GEMM on x86.

    python benchmarks/openvino_bf16.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kiln.bench.contention import watched
from kiln.bench.peaks import measure_peaks
from kiln.config import load_config
from kiln.data.tokenizer import encode_texts, train_tokenizer
from kiln.export.fusable import fusable_copy
from kiln.export.onnx_export import export_onnx, export_onnx_torchscript
from kiln.export.onnx_optimize import optimize_for_ort, quantize_dynamic_int8, quantize_static_int8
from kiln.export.openvino_export import (
    convert_openvino,
    quantize_openvino_int8,
    with_inference_precision,
)
from kiln.models import TransformerClassifier, ort_optimizer_options
from kiln.runtime import OpenVinoBackend, OrtBackend, TorchBackend
from kiln.runtime.artifacts import native_bf16
from kiln.runtime.predictor import Backend, pad_batch

D, HEADS, LAYERS, FF, VOCAB, MAX_LENGTH = 512, 8, 6, 2048, 10000, 128
SST2 = Path("/work/shared/data/sst2")
REFERENCE = "ORT int8 dynamic"
Inputs = tuple[np.ndarray, np.ndarray]


class OrtSession:
    """An ONNX Runtime CPU session with arbitrary session config entries (the options kiln's
    OrtBackend does not expose)."""

    def __init__(self, path: Path, threads: int, entries: dict[str, str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run(None, {"input_ids": input_ids,
                                            "attention_mask": attention_mask})
        return np.asarray(logits, dtype=np.float32)


def sst2_sequences(calibration: int) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    """Token ids of the SST-2 dev texts, and calibration batches of SST-2 train texts (random
    lengths and tokens when the data set is not there)."""
    rng = np.random.default_rng(0)
    if (SST2 / "dev.tsv").exists():
        def sentences(name: str) -> list[str]:
            lines = (SST2 / name).read_text(encoding="utf-8").splitlines()[1:]
            return [line.rsplit("\t", 1)[0] for line in lines if line.strip()]

        train = sentences("train.tsv")
        tokenizer = train_tokenizer(train, load_config().data.tokenizer, VOCAB, MAX_LENGTH)
        dev = encode_texts(tokenizer, sentences("dev.tsv"))
        chosen = rng.choice(len(train), calibration, replace=False)
        calib = encode_texts(tokenizer, [train[i] for i in chosen])
    else:
        dev = [rng.integers(5, VOCAB, int(n)) for n in rng.integers(8, 65, 872)]
        calib = [rng.integers(5, VOCAB, int(n)) for n in rng.integers(8, 65, calibration)]
    batches = [pad_batch([s.tolist() for s in calib[i:i + 16]], 0)
               for i in range(0, len(calib), 16)]
    return dev, [{"input_ids": ids, "attention_mask": mask} for ids, mask in batches]


def build_variants(tmp: Path, threads: int, calibration: list[dict[str, np.ndarray]],
                   ) -> tuple[dict[str, Callable[[], Backend]], dict[str, str]]:
    """Every variant as a factory, and the ones that could not be built, with why."""
    torch.manual_seed(0)
    model = TransformerClassifier(VOCAB, 4, MAX_LENGTH, D, HEADS, LAYERS, FF, 0.1).eval()
    onnx_fp32 = export_onnx(model, tmp / "model.onnx", MAX_LENGTH)
    twin = fusable_copy(model)
    assert twin is not None
    fusable = export_onnx_torchscript(twin, tmp / "model.fusable.onnx", MAX_LENGTH)
    kwargs = {"num_heads": HEADS, "embed_dim": D}
    optimize_for_ort(fusable, tmp / "model.opt.onnx", **ort_optimizer_options("transformer", kwargs))
    quantize_dynamic_int8(tmp / "model.opt.onnx", tmp / "model.int8.onnx")
    quantize_static_int8(onnx_fp32, tmp / "model.int8-static.onnx", calibration)
    xml = convert_openvino(onnx_fp32, tmp / "model.ov.xml")
    quantize_openvino_int8(xml, tmp / "model.ov-int8.xml", calibration)
    with_inference_precision(xml, tmp / "model.ov-bf16.xml", "bf16")
    with_inference_precision(tmp / "model.ov-int8.xml", tmp / "model.ov-int8-bf16.xml", "bf16")

    def ort(name: str, **entries: str) -> Callable[[], Backend]:
        return lambda: OrtSession(tmp / name, threads, entries)

    def ov(name: str, buckets: bool = True) -> Callable[[], Backend]:
        return lambda: OpenVinoBackend(tmp / name, threads=threads,
                                       max_length=MAX_LENGTH if buckets else None)

    variants: dict[str, Callable[[], Backend]] = {
        "eager torch fp32": lambda: TorchBackend(model),
        "ORT fp32 (onnx-opt)": lambda: OrtBackend(tmp / "model.opt.onnx", threads=threads),
        REFERENCE: lambda: OrtBackend(tmp / "model.int8.onnx", threads=threads),
        "ORT int8 dynamic, no spinning": ort("model.int8.onnx",
                                             **{"session.intra_op.allow_spinning": "0"}),
        "ORT int8 dynamic, gelu approx": ort("model.int8.onnx", **{
            "optimization.enable_gelu_approximation": "1"}),
        "ORT int8 static QDQ u8s8": lambda: OrtBackend(tmp / "model.int8-static.onnx",
                                                       threads=threads),
        "OV fp32": ov("model.ov.xml"),
        "OV bf16": ov("model.ov-bf16.xml"),
        "OV int8": ov("model.ov-int8.xml"),
        "OV int8+bf16": ov("model.ov-int8-bf16.xml"),
        "OV bf16, no shape buckets": ov("model.ov-bf16.xml", buckets=False),
    }
    failed: dict[str, str] = {}
    for name, build in (("ORT int8 static QDQ s8s8", lambda: _static(onnx_fp32, tmp, calibration,
                                                                     "qdq", signed=True)),
                        ("ORT int8 static QOperator u8s8", lambda: _static(
                            onnx_fp32, tmp, calibration, "qoperator", signed=False)),
                        ("ORT MatMulNBits 8-bit, int8 compute", lambda: _nbits(tmp))):
        try:
            variants[name] = ort(build().name)
        except Exception as exc:  # a variant ORT cannot make of this graph: said, not fatal
            failed[name] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return variants, failed


def _static(onnx_fp32: Path, tmp: Path, calibration: list[dict[str, np.ndarray]], fmt: str,
            signed: bool) -> Path:
    """Static int8 in another format or activation type than kiln's onnx-int8-static."""
    out = tmp / f"model.static-{fmt}-{'s8s8' if signed else 'u8s8'}.onnx"
    quantize_static_int8(onnx_fp32, out, calibration, operator_format=fmt != "qdq",
                         signed_activations=signed)
    return out


def _nbits(tmp: Path) -> Path:
    """8-bit block-quantised weights (MatMulNBits), int8 activations (accuracy_level 4)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(tmp / "model.opt.onnx")), bits=8,
                                     block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    out = tmp / "model.nbits8.onnx"
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out


def workloads(dev: list[np.ndarray], round_index: int, batch: int, sst2_batches: int,
              b1_texts: int) -> dict[str, list[Inputs]]:
    """This round's inputs: fixed-length batches, real-text batches drawn afresh, single texts."""
    rng = np.random.default_rng(round_index)
    order = rng.permutation(len(dev))
    fixed = {}
    for length in (32, 128):
        ids = rng.integers(5, VOCAB, (batch, length), dtype=np.int64)
        fixed[f"b{batch} len{length}"] = [(ids, np.ones_like(ids))]
    real = [pad_batch([dev[i].tolist() for i in order[k * batch:(k + 1) * batch]], 0)
            for k in range(sst2_batches)]
    singles = [pad_batch([dev[i].tolist()], 0) for i in order[-b1_texts:]]
    return {**fixed, f"b{batch} real": real, "b1 real": singles}


def measure(backend: Backend, work: dict[str, list[Inputs]], min_seconds: float,
            ) -> dict[str, float]:
    """samples/s of each batch workload (at least ``min_seconds`` and one pass) and the batch-1
    p50 in ms."""
    out = {}
    for key, inputs in work.items():
        if key == "b1 real":
            times = []
            for ids, mask in inputs:
                start = time.perf_counter()
                backend.run(ids, mask)
                times.append(time.perf_counter() - start)
            out[key] = 1e3 * statistics.median(times)
            continue
        samples, calls, start = 0, 0, time.perf_counter()
        while calls < len(inputs) or time.perf_counter() - start < min_seconds:
            ids, mask = inputs[calls % len(inputs)]
            backend.run(ids, mask)
            samples, calls = samples + len(ids), calls + 1
        out[key] = samples / (time.perf_counter() - start)
    return out


def fidelity(backends: dict[str, Backend], work: dict[str, list[Inputs]]) -> dict[str, str]:
    """Max |logit difference| from eager fp32 and argmax agreement, on the real-text batches."""
    batches = work[next(k for k in work if k.endswith("real") and not k.startswith("b1"))]
    reference = np.concatenate([backends["eager torch fp32"].run(*b) for b in batches])
    notes = {}
    for name, backend in backends.items():
        logits = np.concatenate([backend.run(*b) for b in batches])
        agree = float((logits.argmax(-1) == reference.argmax(-1)).mean())
        notes[name] = f"{np.abs(logits - reference).max():.1e} {agree:6.1%}"
    return notes


def report(rates: dict[str, list[dict[str, float]]], notes: dict[str, str]) -> list[str]:
    keys = list(next(iter(rates.values()))[0])
    med = {name: {k: statistics.median(r[k] for r in rounds) for k in keys}
           for name, rounds in rates.items()}
    ref = med[REFERENCE]
    head = f"{'variant':38s}" + "".join(f"{k + (' p50 ms' if k.startswith('b1') else ' /s'):>17s}"
                                         for k in keys) + "  max|diff|  agree"
    lines = [head, "-" * len(head)]
    for name, m in med.items():
        cells = []
        for k in keys:  # ratio: speed against ORT int8 dynamic (>1: faster)
            ratio = ref[k] / m[k] if k.startswith("b1") else m[k] / ref[k]
            cells.append(f"{m[k]:9.1f} {ratio:5.2f}x")
        lines.append(f"{name:38s}" + "".join(f"{c:>17s}" for c in cells) + f"  {notes[name]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    parser.add_argument("--seconds", type=float, default=0.8, help="least time per batch figure")
    parser.add_argument("--sst2-batches", type=int, default=6, help="real-text batches per round")
    parser.add_argument("--b1-texts", type=int, default=40, help="single texts per round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dev, calibration = sst2_sequences(64)
    with tempfile.TemporaryDirectory() as tmp:
        factories, failed = build_variants(Path(tmp), args.threads, calibration)
        backends = {name: make() for name, make in factories.items()}
        built = time.perf_counter() - started
        first = workloads(dev, 0, args.batch, args.sst2_batches, args.b1_texts)
        notes = fidelity(backends, first)
        rates: dict[str, list[dict[str, float]]] = {name: [] for name in backends}
        busy = []
        for r in range(args.rounds):
            work = workloads(dev, r + 1, args.batch, args.sst2_batches, args.b1_texts)
            for name, backend in backends.items():
                measured, seen = watched(lambda b=backend, w=work: measure(b, w, args.seconds))
                rates[name].append(measured)
                busy.append(seen.others)
    peaks = measure_peaks(args.threads)
    print(f"{args.threads} threads; native bf16: {native_bf16()}; torch {torch.__version__}; "
          f"data: {'SST-2 dev' if (SST2 / 'dev.tsv').exists() else 'random lengths'}; build "
          f"{built:.0f} s, total {time.perf_counter() - started:.0f} s; other processes took "
          f"{statistics.median(busy):.0%} of the CPUs (median of measurements; max "
          f"{max(busy):.0%})")
    print(f"matmul peaks, GFLOP/s: fp32 {peaks.fp32:.0f}, bf16 {peaks.bf16:.0f}, "
          f"int8 (ORT MatMulInteger) {peaks.int8:.0f}")
    print("\n".join(report(rates, notes)))
    for name, why in failed.items():
        print(f"{name}: not built: {why}")


if __name__ == "__main__":
    main()
