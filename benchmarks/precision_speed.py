"""Training-step speed of fp32 against bf16 and fp16 autocast, measured in one run on one device.

Uses kiln's model and optimizer on random tokens (the reference preset by default: embed 512,
8 heads, 6 layers, vocabulary 10000) so that only precision changes between the rows. Prints
median step time, samples/s and the speed-up over fp32.

    python benchmarks/precision_speed.py                     # CUDA if present, else CPU
    python benchmarks/precision_speed.py --batch 64 --length 128 --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from kiln.config import load_config
from kiln.models import build_model, model_kwargs
from kiln.train.optim import make_optimizer
from kiln.train.precision import autocast_dtype


def step_times(precision: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    cfg = load_config(overrides=[f"model.preset={args.preset}", "model.dropout=0.1"])
    torch.manual_seed(0)
    model = build_model("transformer", model_kwargs(
        cfg.model, vocab_size=cfg.model.vocab_size, num_labels=4, max_length=args.length,
        pad_id=0)).to(device).train()
    optimizer = make_optimizer(model, cfg.train)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    dtype = autocast_dtype(precision)
    ids = torch.randint(5, cfg.model.vocab_size, (args.batch, args.length), device=device)
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 4, (args.batch,), device=device)
    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(ids, mask)
        scaler.scale(F.cross_entropy(logits.float(), labels)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()  # the step is only done when the GPU is
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="reference")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    # On CUDA, "fp32" is strict fp32 and "tf32" lets fp32 matmuls use TF32 tensor cores.
    precisions = ["fp32", "tf32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    print(f"{name}, torch {torch.__version__}, preset {args.preset}, batch {args.batch}, "
          f"length {args.length}, {args.steps} timed steps")
    baseline = None
    for precision in precisions:
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        median = statistics.median(step_times("fp32" if precision == "tf32" else precision,
                                              args, device))
        baseline = baseline or median
        print(f"{precision:5s} {1e3 * median:8.2f} ms/step  {args.batch / median:9.1f} samples/s  "
              f"speed-up over fp32 {baseline / median:5.2f}x")


if __name__ == "__main__":
    main()
