"""Training-step speed of fp32 against bf16 and fp16 autocast, measured in one run on one device,
and where each step's time goes.

Uses kiln's model and optimizer on random tokens (the reference preset by default: embed 512,
8 heads, 6 layers, vocabulary 10000) so that only precision changes between the rows; AdamW is
fused where kiln's loop fuses it (bf16 on CPU). The precisions take turns step by step, so that a
machine whose speed drifts slows all alike. Prints what ``train.precision=auto`` chooses here and
why, then the median step time, samples/s and the speed-up over fp32. ``--breakdown`` profiles a
few more steps of each and splits the step time by phase (forward, backward, clip, optimizer) and
by kind of operator (matmul, dropout RNG, casts and copies, layer norm, ...): on a CPU with AMX,
bf16 shrinks the matmuls and leaves the rest, which then decides the speed-up.

    python benchmarks/precision_speed.py                     # CUDA if present, else CPU
    python benchmarks/precision_speed.py --length 64 --breakdown --threads 1
    python benchmarks/precision_speed.py --batch 64 --length 128 --steps 30
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from kiln.config import load_config
from kiln.models import build_model, model_kwargs
from kiln.train.optim import make_optimizer
from kiln.train.precision import autocast_dtype, resolve_precision, use_fused_adamw

# Operators by kind, for --breakdown (self time; anything else counts as "elementwise, other").
KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
               "aten::_scaled_dot_product_flash_attention_for_cpu",
               "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "dropout RNG": ("aten::bernoulli_", "aten::uniform_", "aten::native_dropout"),
    "casts, copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
    "layer norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "softmax": ("aten::_softmax", "aten::_softmax_backward_data"),
    "gelu": ("aten::gelu", "aten::gelu_backward"),
    "embedding": ("aten::embedding", "aten::embedding_dense_backward", "aten::index_select"),
}
PHASES = ("forward", "backward", "clip", "optimizer")


def make_step(precision: str, args: argparse.Namespace,
              device: torch.device) -> Callable[[], None]:
    """One training step of a fresh model in ``precision`` (tf32: fp32 with TF32 matmuls)."""
    cfg = load_config(overrides=[f"model.preset={args.preset}", "model.dropout=0.1"])
    torch.manual_seed(0)
    model = build_model("transformer", model_kwargs(
        cfg.model, vocab_size=cfg.model.vocab_size, num_labels=4, max_length=args.length,
        pad_id=0)).to(device).train()
    amp = "fp32" if precision == "tf32" else precision
    optimizer = make_optimizer(model, cfg.train, fused=use_fused_adamw(amp, device))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    dtype = autocast_dtype(amp)
    ids = torch.randint(5, cfg.model.vocab_size, (args.batch, args.length), device=device)
    mask = torch.ones_like(ids)
    mask[::2, args.length * 2 // 3:] = 0  # some padding, as real batches have
    labels = torch.randint(0, 4, (args.batch,), device=device)

    def step() -> None:
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        with record_function("phase:forward"), torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(ids, mask)
        with record_function("phase:backward"):
            scaler.scale(F.cross_entropy(logits.float(), labels)).backward()
        with record_function("phase:clip"):
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("phase:optimizer"):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()  # the step is only done when the GPU is

    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def breakdown(step: Callable[[], None], steps: int, device: torch.device) -> dict[str, float]:
    """Milliseconds per step by "phase / kind of operator" (self time of each aten operator)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    table: dict[str, float] = collections.defaultdict(float)
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        phase, parent = "backward", event.cpu_parent  # autograd's own events have no phase
        while parent is not None:
            phase = parent.name[6:] if parent.name.startswith("phase:") else phase
            parent = parent.cpu_parent
        kind = next((k for k, names in KINDS.items() if event.name in names), "elementwise, other")
        seconds = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        table[f"{phase} / {'all' if phase in ('clip', 'optimizer') else kind}"] += seconds / 1e3 / steps
    return table


def print_breakdown(tables: dict[str, dict[str, float]]) -> None:
    rows = sorted(set().union(*tables.values()),
                  key=lambda r: (PHASES.index(r.split(" / ")[0]), -tables["fp32"].get(r, 0.0)))
    print(f"\nms per step (profiled){'':18s}" + "".join(f"{p:>10s}" for p in tables))
    for row in rows:
        print(f"{row:40s}" + "".join(f"{t.get(row, 0.0):10.0f}" for t in tables.values()))
    print(f"{'total':40s}" + "".join(f"{sum(t.values()):10.0f}" for t in tables.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="reference")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    parser.add_argument("--breakdown", type=int, nargs="?", const=3, default=0, metavar="STEPS",
                        help="also profile STEPS steps of each precision (default 3)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    auto = resolve_precision("auto", device)
    # On CUDA, "fp32" is strict fp32 and "tf32" lets fp32 matmuls use TF32 tensor cores.
    precisions = ["fp32", "tf32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    print(f"{name}, torch {torch.__version__}, preset {args.preset}, batch {args.batch}, "
          f"length {args.length}, {args.steps} timed steps per precision, taking turns")
    print(f"train.precision=auto chooses {auto.name} here ({auto.reason})")
    steps = {p: make_step(p, args, device) for p in precisions}
    times: dict[str, list[float]] = {p: [] for p in precisions}
    for i in range(args.warmup + args.steps):
        for p in precisions[:: 1 if i % 2 else -1]:  # who goes first alternates
            seconds = timed(steps[p])
            if i >= args.warmup:
                times[p].append(seconds)
    baseline = statistics.median(times["fp32"])
    for p in precisions:
        median = statistics.median(times[p])
        print(f"{p:5s} {1e3 * median:8.2f} ms/step  {args.batch / median:9.1f} samples/s  "
              f"speed-up over fp32 {baseline / median:5.2f}x")
    if args.breakdown:
        print_breakdown({p: breakdown(steps[p], args.breakdown, device) for p in precisions})


if __name__ == "__main__":
    main()
