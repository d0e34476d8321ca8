"""`kiln bench`: latency and throughput of a run's artifacts against the eager fp32 model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kiln.errors import KilnError

HELP = "benchmark every verified artifact of an exported run against eager fp32"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("bench", help=HELP, description=HELP + ": p50/p95/p99 latency at "
                            "batch 1 and throughput at --batch-size, on texts padded to the max "
                            "length and on the same texts at their real lengths. Writes "
                            "RUN/bench/report.json, report.md, latency.png, throughput.png.")
    parser.add_argument("run", metavar="RUN", nargs="?",
                        help="an exported run directory (with --url: its texts and model name)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per backend (default 2)")
    parser.add_argument("--texts", type=int, default=100, help="texts timed at batch 1 (default 100)")
    parser.add_argument("--batch-size", type=int, default=32, help="throughput batch (default 32)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="minimum seconds per throughput measurement (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the texts (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per artifact, interleaved "
                        "with the others; disturbed rounds are redone or left out (default 3)")
    parser.add_argument("--artifacts", nargs="+", metavar="NAME",
                        help="artifacts to measure (default: every one that passed parity)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    load = parser.add_argument_group("load test of a running server (--url)")
    load.add_argument("--url", help="drive a running kiln/Triton/KServe server, e.g. 127.0.0.1:8000")
    load.add_argument("--model", help="model name on the server (default: the run folder's name)")
    load.add_argument("--concurrency", type=int, default=32, help="clients (default 32)")
    load.add_argument("--rate", type=float, help="Poisson arrivals at this many requests/s "
                      "(default: closed loop)")
    load.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    load.add_argument("--texts-file", help="CSV/TSV/JSONL of texts to send (default: the run's "
                      "evaluation texts, else the built-in dataset's)")
    load.add_argument("--text-column", default="text")
    load.add_argument("--texts-per-request", type=int, default=1)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.bench import BenchSettings, bench_run, format_report

    if args.url:
        return run_load_test(args)
    if args.run is None:
        raise KilnError("give RUN (an exported run) or --url URL (a running server)")
    if args.rounds < 1:
        raise KilnError(f"--rounds must be at least 1, got {args.rounds}")
    report = bench_run(args.run, BenchSettings(
        threads=args.threads, texts=args.texts, batch_size=args.batch_size,
        min_seconds=args.seconds, repeats=args.repeats, artifacts=args.artifacts,
        rounds=args.rounds))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    for warning in report.get("warnings", []):
        print(f"kiln bench: warning: {warning}", file=sys.stderr)
    return 0


def run_load_test(args: argparse.Namespace) -> int:
    from kiln.bench.load import LoadSettings, format_load_report, run_load

    texts = load_texts(args)
    name = args.model or (Path(args.run).resolve().name if args.run else None)
    if name is None:
        raise KilnError("--url needs --model NAME (or RUN, whose folder name is the model name)")
    report = run_load(args.url, texts, LoadSettings(
        model=name, concurrency=args.concurrency, rate=args.rate, duration_s=args.duration,
        texts_per_request=args.texts_per_request))
    print(json.dumps(report, indent=2) if args.json else format_load_report(report))
    return 0


def load_texts(args: argparse.Namespace) -> list[str]:
    if args.texts_file:
        rows = read_texts(Path(args.texts_file), args.text_column)
    elif args.run and (Path(args.run) / "config.yaml").exists():
        from kiln.config import load_config
        from kiln.data import prepare_data

        data = prepare_data(load_config(Path(args.run) / "config.yaml"), Path(args.run))
        rows = list(data.eval_texts)
    else:
        from kiln.data import builtin

        rows = [t for t, _ in builtin.generate().eval]
    return rows


def read_texts(path: Path, column: str) -> list[str]:
    """Texts of one column of a CSV/TSV/JSONL file (labels not needed)."""
    from kiln.data.readers import read_examples

    return [e.text for e in read_examples(path, column, column)]
