"""How much does kiln's training loop add to a hand-written PyTorch loop?

Trains the same model on the same batches twice per repeat, interleaved: once with a plain loop
written here (forward, loss, backward, clip, AdamW step, schedule, a loss.item() every log step)
and once with `kiln.train.train` (which also keeps RNG/progress state, writes metrics.jsonl and
TensorBoard, and evaluates and checkpoints at the end, outside the timed steps). Prints the median
step time of each, their ratio (target <= 1.03), and whether the final weights are bit-identical.

    python benchmarks/loop_overhead.py                       # built-in dataset, small preset
    python benchmarks/loop_overhead.py --data ../shared/data/sst2/train.tsv --text-column sentence
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from kiln.config import Config, load_config
from kiln.data import EpochBatchSampler, make_loader, pad_id, prepare_data
from kiln.models import build_model, model_kwargs
from kiln.train import train
from kiln.train.optim import make_optimizer, make_scheduler, plan_steps
from kiln.train.rng import seed_everything


def hand_written_loop(cfg: Config, run_dir: Path) -> tuple[float, int, dict[str, torch.Tensor]]:
    """The loop a user would write by hand, on kiln's data pipeline. Returns (seconds, steps, weights)."""
    tc = cfg.train
    seed_everything(cfg.seed)
    data = prepare_data(cfg, run_dir)  # loads the tokenizer kiln trained: same token ids
    pad = pad_id(data.tokenizer)
    model = build_model(cfg.model.name, model_kwargs(
        cfg.model, vocab_size=data.tokenizer.get_vocab_size(), num_labels=len(data.label_names),
        max_length=cfg.data.max_length, pad_id=pad))
    optimizer = make_optimizer(model, tc)
    sampler = EpochBatchSampler(data.train.lengths, tc.batch_size, cfg.seed)
    loader = make_loader(data.train, sampler, cfg.data, pad, cfg.seed)
    _, total_steps = plan_steps(len(sampler), tc)
    scheduler = make_scheduler(optimizer, tc, total_steps)

    model.train()
    step, seconds = 0, 0.0
    for epoch in range(tc.epochs):
        sampler.set_epoch(epoch)
        batches = iter(loader)
        while step < total_steps:
            start = time.perf_counter()
            group = list(itertools.islice(batches, tc.grad_accum_steps))
            if not group:
                break
            n = sum(len(b["labels"]) for b in group)
            for b in group:
                loss = F.cross_entropy(model(b["input_ids"], b["attention_mask"]), b["labels"],
                                       reduction="sum") / n
                loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm or math.inf)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % tc.log_every == 0:
                loss.item()
            seconds += time.perf_counter() - start
    return seconds, step, {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_kiln(cfg: Config, run_dir: Path) -> tuple[float, dict[str, torch.Tensor]]:
    result = train(cfg, fresh=True, progress=False)
    STEPS["kiln"] = result.step
    return result.loop_seconds / result.step, load_file(str(run_dir / "model" / "model.safetensors"))


def run_hand(cfg: Config, run_dir: Path) -> tuple[float, dict[str, torch.Tensor]]:
    seconds, steps, weights = hand_written_loop(cfg, run_dir)
    STEPS["hand"] = steps
    return seconds / steps, weights


STEPS: dict[str, int] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="training file (default: the built-in dataset)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra kiln key=value settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        settings = [
            f"run_dir={run_dir}", f"train.epochs={args.epochs}", f"train.max_steps={args.max_steps}",
            "train.select=last", "train.eval_every=1000000", "train.checkpoint_every=1000000",
            f"data.text_column={args.text_column}", f"data.label_column={args.label_column}",
            *([f"data.train={args.data}"] if args.data else []), *args.overrides,
        ]
        cfg = load_config(overrides=settings)
        kiln_times, hand_times, identical = [], [], []
        # Repeat 0 warms caches and allocators and is not counted; the order alternates so that
        # neither loop always runs second on a machine whose speed drifts.
        for repeat in range(args.repeats + 1):
            runs = [run_kiln, run_hand] if repeat % 2 else [run_hand, run_kiln]
            outcome = {f.__name__: f(cfg, run_dir) for f in runs}
            (k_time, k_weights), (h_time, h_weights) = outcome["run_kiln"], outcome["run_hand"]
            same = all(torch.equal(h_weights[k], k_weights[k]) for k in h_weights)
            print(f"repeat {repeat}{' (warm-up)' if repeat == 0 else ''}: hand "
                  f"{1e3 * h_time:.2f} ms/step, kiln {1e3 * k_time:.2f} ms/step, "
                  f"weights identical: {same}")
            if repeat:
                kiln_times.append(k_time)
                hand_times.append(h_time)
                identical.append(same)

    hand, kiln_ms = statistics.median(hand_times), statistics.median(kiln_times)
    assert STEPS["kiln"] == STEPS["hand"], STEPS
    print(f"\n{STEPS['kiln']} steps x {args.repeats} repeats, {torch.get_num_threads()} threads, "
          f"model {cfg.model.preset} ({cfg.model.embed_dim}d x {cfg.model.num_layers} layers), "
          f"batch {cfg.train.batch_size}")
    print(f"median step time: hand-written {1e3 * hand:.2f} ms, kiln {1e3 * kiln_ms:.2f} ms")
    print(f"kiln / hand-written step-time ratio: {kiln_ms / hand:.3f} (target <= 1.03)")
    print(f"final weights bit-identical in every repeat: {all(identical)}")


if __name__ == "__main__":
    main()
