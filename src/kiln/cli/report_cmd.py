"""`kiln report`: one self-contained HTML page of a run, to read in any browser offline."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "write RUN/report.html: one self-contained page of how a run went"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "report", help=HELP, description=HELP + ": config, data summary, training and eval "
        "curves, confusion matrix and per-class metrics, the parity table, latency and "
        "throughput per artifact, the recommended artifact and the commands to serve and deploy "
        "it. Images are embedded; viewing it needs no network. Stages not run yet say so.")
    parser.add_argument("run", metavar="RUN", help="a run directory (trained, or further along)")
    parser.add_argument("--out", metavar="FILE", help="where to write (default RUN/report.html)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.errors import KilnError
    from kiln.report import write_report

    try:
        path = write_report(args.run, args.out)
    except OSError as exc:  # an --out folder that cannot be written, say
        raise KilnError(f"cannot write the report: {exc}") from None
    print(f"report: {path}")
    print(f"  open {path.resolve().as_uri()}")
    return 0
