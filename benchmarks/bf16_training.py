"""bf16 autocast against fp32 training on this CPU: speed and final accuracy, same steps.

Trains two copies of one model (the reference preset by default: embed 512, 8 heads, 6 layers)
from the same initial weights on the same batches, with the same dropout masks, in lockstep:
each step runs on one copy, then on the other (which one goes first alternates), so that a
machine whose speed drifts slows both alike. Each copy is stepped as kiln's loop steps it
(autocast, summed loss / batch, clipping, AdamW - fused in bf16 on CPU, as kiln does - and the
warmup + decay schedule). Both are then evaluated on the dev set in fp32, as kiln's loop
evaluates on CPU and as the exported model runs (and under each copy's own autocast, for
reference). Prints the CPU's bf16 flags, what ``train.precision=auto`` chooses here and why,
median samples/s of each, their ratio, and the accuracy of each and their difference.

    python benchmarks/bf16_training.py --data ../shared/data/sst2        # train.tsv, dev.tsv
    python benchmarks/bf16_training.py --data DIR --steps 200 --threads 2
    python benchmarks/bf16_training.py --train a.csv --eval b.csv --text-column text

Without ``--data``/``--train`` it uses kiln's built-in dataset (not SST-2).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from kiln.config import Config, load_config
from kiln.data import (
    Batch,
    EpochBatchSampler,
    SortedBatchSampler,
    make_loader,
    pad_id,
    prepare_data,
)
from kiln.models import build_model, model_kwargs
from kiln.train.evaluate import evaluate
from kiln.train.optim import make_optimizer, make_scheduler
from kiln.train.precision import (
    autocast_dtype,
    native_bf16_units,
    resolve_precision,
    use_fused_adamw,
)
from kiln.train.rng import seed_everything

CPU = torch.device("cpu")


@dataclass
class Trainee:
    """One copy of the model and what steps it: optimizer, schedule, its own RNG stream."""

    precision: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: torch.Tensor
    seconds: list[float] = field(default_factory=list)


def make_trainee(precision: str, cfg: Config, vocab_size: int, num_labels: int, pad: int,
                 steps: int) -> Trainee:
    seed_everything(cfg.seed)  # the same initial weights and dropout stream for both copies
    model = build_model(cfg.model.name, model_kwargs(
        cfg.model, vocab_size=vocab_size, num_labels=num_labels, max_length=cfg.data.max_length,
        pad_id=pad)).train()
    optimizer = make_optimizer(model, cfg.train, fused=use_fused_adamw(precision, CPU))
    return Trainee(precision, model, optimizer, make_scheduler(optimizer, cfg.train, steps),
                   torch.get_rng_state())


def train_step(t: Trainee, batch: Batch, max_grad_norm: float) -> None:
    """One optimizer step as kiln's loop takes it (one micro-batch), timed."""
    torch.set_rng_state(t.rng)  # each copy draws its own dropout masks, as if trained alone
    dtype = autocast_dtype(t.precision)
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = t.model(batch["input_ids"], batch["attention_mask"])
    loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum") / len(batch["labels"])
    loss.backward()
    nn.utils.clip_grad_norm_(t.model.parameters(), max_grad_norm or math.inf)
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.seconds.append(time.perf_counter() - start)
    t.rng = torch.get_rng_state()


def epochs(sampler: EpochBatchSampler, loader: Iterable[Batch]) -> Iterator[Batch]:
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from loader


def settings(args: argparse.Namespace, run_dir: Path) -> list[str]:
    train_file, eval_file = args.train, args.eval
    if args.data:
        train_file, eval_file = Path(args.data) / "train.tsv", Path(args.data) / "dev.tsv"
    files = [f"data.train={train_file}", f"data.eval={eval_file}"] if train_file else []
    return [f"run_dir={run_dir}", f"model.preset={args.preset}", f"data.max_length={args.length}",
            f"train.batch_size={args.batch}", f"train.max_steps={args.steps}",
            f"data.text_column={args.text_column}", f"data.label_column={args.label_column}",
            *files, *args.overrides]


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split())
    except (OSError, IndexError):
        return "(no /proc/cpuinfo)"
    wanted = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")
    return " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder with train.tsv and dev.tsv (SST-2 layout)")
    parser.add_argument("--train", help="training file (instead of --data)")
    parser.add_argument("--eval", help="evaluation file (with --train)")
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--preset", default="reference")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="data.max_length")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the speed")
    parser.add_argument("--contender", default="bf16", choices=["bf16", "auto"],
                        help="what runs against fp32 (auto: whatever auto chooses here)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("overrides", nargs="*", help="extra kiln key=value settings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (args.data or args.train):
        args.text_column = "text"  # the built-in dataset's column
    auto = resolve_precision("auto", CPU)
    contender = auto.name if args.contender == "auto" else "bf16"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU flags: {cpu_flags()}; "
          f"bf16 units: {', '.join(native_bf16_units()) or 'none'}")
    print(f"train.precision=auto chooses {auto.name} ({auto.reason})")
    if contender == "fp32":
        print("train.precision=auto chooses fp32 here: nothing to compare (use --contender bf16)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(load_config(overrides=settings(args, Path(tmp) / "run")), args, contender)


def run(cfg: Config, args: argparse.Namespace, contender: str) -> None:
    data = prepare_data(cfg, Path(cfg.run_dir))
    pad, steps = pad_id(data.tokenizer), cfg.train.max_steps
    trainees = [make_trainee(p, cfg, data.tokenizer.get_vocab_size(), len(data.label_names),
                             pad, steps) for p in ("fp32", contender)]
    sampler = EpochBatchSampler(data.train.lengths, cfg.train.batch_size, cfg.seed,
                                cfg.data.bucket_by_length)
    loader = make_loader(data.train, sampler, cfg.data, pad, cfg.seed)
    print(f"{cfg.model.preset} model ({cfg.model.embed_dim}d x {cfg.model.num_layers} layers), "
          f"batch {cfg.train.batch_size}, max length {cfg.data.max_length}, {steps} steps on "
          f"{len(data.train)} training texts; fp32 against {contender}")
    for step, batch in enumerate(itertools.islice(epochs(sampler, loader), steps)):
        for t in trainees[:: 1 if step % 2 else -1]:  # who goes first alternates
            train_step(t, batch, cfg.train.max_grad_norm)
        if (step + 1) % 10 == 0:
            print(f"  step {step + 1}: " + ", ".join(
                f"{t.precision} {1e3 * t.seconds[-1]:.0f} ms" for t in trainees), flush=True)
    eval_loader = make_loader(data.eval, SortedBatchSampler(data.eval.lengths, 64), cfg.data,
                              pad, cfg.seed)
    report(trainees, eval_loader, len(data.label_names), cfg.train.batch_size, args.warmup)


def report(trainees: list[Trainee], eval_loader: Iterable[Batch], num_labels: int, batch: int,
           warmup: int) -> None:
    speed: dict[str, float] = {}
    accuracy: dict[str, float] = {}
    for t in trainees:
        speed[t.precision] = batch / statistics.median(t.seconds[warmup:])
        # in fp32, as kiln's loop evaluates on CPU and as the exported model runs
        shipped = evaluate(t.model, eval_loader, num_labels, CPU)
        autocast = evaluate(t.model, eval_loader, num_labels, CPU, autocast_dtype(t.precision))
        accuracy[t.precision] = shipped.accuracy
        print(f"{t.precision:5s} {speed[t.precision]:7.1f} samples/s (median step "
              f"{1e3 * statistics.median(t.seconds[warmup:]):.0f} ms), dev accuracy "
              f"{100 * shipped.accuracy:.2f}% (under its own autocast: "
              f"{100 * autocast.accuracy:.2f}%)")
    base, other = (t.precision for t in trainees)
    print(f"{other} / {base} samples/s: {speed[other] / speed[base]:.2f}x; dev accuracy "
          f"{other} - {base}: {100 * (accuracy[other] - accuracy[base]):+.2f} points")


if __name__ == "__main__":
    main()
