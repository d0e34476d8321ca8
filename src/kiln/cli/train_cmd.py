"""`kiln train`: train (or resume) a model into a run directory."""

from __future__ import annotations

import argparse
from typing import Any

from kiln.cli.common import add_config_arguments, config_help, resolve_config
from kiln.cli.launch import add_launch_arguments, is_rank_zero, launch_training, wants_launch

HELP = "train a model into run_dir, resuming from its latest checkpoint"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "train", help=HELP, description=HELP + ". With no data.train, trains on the built-in "
        "dataset.", epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    add_launch_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.train import train

    cfg = resolve_config(args.settings, args.fresh)  # bad config: exit 2 before any process starts
    if wants_launch(args):
        return launch_training(args, cfg.framework)
    result = train(cfg, fresh=args.fresh)
    acc = result.eval.get("accuracy")
    if is_rank_zero():
        print(f"trained model: {result.model_dir}"
              + (f"  eval accuracy {acc:.4f}" if acc is not None else ""))
    return 0
