"""`kiln bench`: latency and throughput of a run's artifacts against the eager fp32 model."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kiln.bench import BenchSettings, bench_run, format_report

HELP = "benchmark every verified artifact of an exported run against eager fp32"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("bench", help=HELP, description=HELP + ": p50/p95/p99 latency at "
                            "batch 1 and throughput at --batch-size, on texts padded to the max "
                            "length and on the same texts at their real lengths. Writes "
                            "RUN/bench/report.json, report.md, latency.png, throughput.png.")
    parser.add_argument("run", metavar="RUN", help="an exported run directory")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per backend (default 2)")
    parser.add_argument("--texts", type=int, default=100, help="texts timed at batch 1 (default 100)")
    parser.add_argument("--batch-size", type=int, default=32, help="throughput batch (default 32)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="minimum seconds per throughput measurement (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the texts (default 1)")
    parser.add_argument("--artifacts", nargs="+", metavar="NAME",
                        help="artifacts to measure (default: every one that passed parity)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    report = bench_run(args.run, BenchSettings(
        threads=args.threads, texts=args.texts, batch_size=args.batch_size,
        min_seconds=args.seconds, repeats=args.repeats, artifacts=args.artifacts))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
