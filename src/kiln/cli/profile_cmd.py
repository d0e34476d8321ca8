"""`kiln profile`: a short training run under torch.profiler, for seeing where step time goes."""

from __future__ import annotations

import argparse
from typing import Any

from kiln.cli.common import config_help, resolve_config

HELP = "profile a few training steps: top operators, data-wait share, a TensorBoard trace"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "profile", help=HELP,
        description=HELP + ". Trains profiler.wait + profiler.warmup + profiler.active steps of "
        "the given config from scratch into run_dir (default runs/profile) with profile=true; "
        "open the trace with `tensorboard --logdir RUN/tensorboard` (PyTorch Profiler tab) or "
        "load the .pt.trace.json file in https://ui.perfetto.dev.",
        epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "settings", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
        help="the config to profile, as for kiln train",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.train import train

    settings = list(args.settings)
    given = {s.split("=", 1)[0] for s in settings if "=" in s}
    if "run_dir" not in given:
        settings.append("run_dir=runs/profile")
    cfg = resolve_config(settings + ["profile=true"], fresh=True)
    if "train.max_steps" not in given:
        cfg = resolve_config(settings + ["profile=true",
                                         f"train.max_steps={cfg.profiler.steps}"], fresh=True)
    train(cfg, fresh=True)
    print(f"profile trace: {cfg.run_dir}/tensorboard/profile")
    return 0
