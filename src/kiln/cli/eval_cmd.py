"""`kiln eval`: evaluate a trained run (or model folder) on a labeled file."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "evaluate a run's model on a labeled CSV/TSV/JSONL file"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("eval", help=HELP, description=HELP + ": accuracy, macro-F1 and a "
                            "confusion matrix.")
    parser.add_argument("run", metavar="RUN", help="run directory (or its model/ folder)")
    parser.add_argument("--data", required=True, metavar="FILE", help="labeled file to evaluate on")
    parser.add_argument("--text-column", help="text column (default: the one used in training)")
    parser.add_argument("--label-column", help="label column (default: the one used in training)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per batch (default 64)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.evaluate import evaluate_file
    from kiln.metrics import format_confusion

    result, names = evaluate_file(args.run, args.data, args.text_column, args.label_column,
                                  args.batch_size)
    if args.json:
        print(json.dumps({**result.scalars(), "num_examples": result.num_examples,
                          "labels": names, "confusion": result.confusion}))
        return 0
    print(f"{args.data}: {result.num_examples} examples")
    print(f"accuracy {result.accuracy:.4f}  macro_f1 {result.macro_f1:.4f}  loss {result.loss:.4f}")
    print(format_confusion(result.confusion, names))
    return 0
