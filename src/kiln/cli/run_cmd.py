"""`kiln run`: the main job. Train and evaluate; later stages (export, bench, triton) join here."""

from __future__ import annotations

import argparse
from typing import Any

from kiln.cli.common import add_config_arguments, config_help, resolve_config
from kiln.train import format_confusion, train

HELP = "the whole path on one config: train, evaluate, and report where the model is"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "run", help=HELP, description=HELP + ". With no config, runs on the built-in dataset.",
        epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.settings, args.fresh)
    result = train(cfg, fresh=args.fresh)
    ev = result.eval
    print()
    print(f"kiln run finished: {result.run_dir}")
    print(f"  model      {result.model_dir}  (step {result.step})")
    if ev:
        print(f"  eval       accuracy {ev['accuracy']:.4f}  macro_f1 {ev['macro_f1']:.4f}  "
              f"loss {ev['loss']:.4f}  on {ev['num_examples']} examples")
        print(format_confusion(ev["confusion"], result.label_names))
    print(f"  next       kiln eval {result.run_dir} --data FILE")
    return 0
