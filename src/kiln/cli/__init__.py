"""The `kiln` command: thin subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

import kiln
from kiln.cli import (
    bench_cmd,
    deploy_cmd,
    eval_cmd,
    export_cmd,
    predict_cmd,
    profile_cmd,
    report_cmd,
    run_cmd,
    serve_cmd,
    torchserve_cmd,
    train_cmd,
    triton_cmd,
)
from kiln.errors import KilnError

SUBCOMMANDS = (train_cmd, run_cmd, eval_cmd, predict_cmd, export_cmd, triton_cmd, bench_cmd,
               serve_cmd, deploy_cmd, profile_cmd, report_cmd, torchserve_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln",
        description="Train, evaluate and ship text classifiers. Every stage reads and writes a "
        "run directory (runs/<name>/). Exit codes: 0 success, 2 bad input, 1 anything else.",
    )
    parser.add_argument("--version", action="version", version=f"kiln {kiln.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kiln` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KilnError as exc:  # bad input (2), or a run that failed for a stated reason
        print(f"kiln {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"kiln {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
