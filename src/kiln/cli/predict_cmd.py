"""`kiln predict`: label every row of a CSV/TSV/JSONL/Parquet file with a run's artifact."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "label every row of a CSV, TSV, JSONL or Parquet file with a run's verified artifact"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("predict", help=HELP, description=HELP + ", streamed in chunks "
                            "(flat memory), restartable after a kill (rerun the same command).")
    parser.add_argument("run", metavar="RUN", help="run directory (or its export/ or model/)")
    parser.add_argument("--data", required=True, metavar="IN",
                        help="input file: .csv, .tsv, .jsonl or .parquet")
    parser.add_argument("--out", metavar="OUT", help="output file; its extension picks the "
                        "format: .parquet, .csv, .tsv or .jsonl (default: <stem>.predictions.<ext> "
                        "beside the input)")
    parser.add_argument("--text-column", help="text column (default: the one used in training)")
    parser.add_argument("--artifact", help="artifact to run (default: the verified one `kiln "
                        "bench` measured fastest, as `kiln serve` picks)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="texts per model call, grouped by length (default 64)")
    parser.add_argument("--chunk-rows", type=int, default=10_000,
                        help="rows read, scored and written as one part (default 10000)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write one prob_<label> column per class")
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="an empty or non-text cell: stop with exit 2 (default), or skip the "
                        "row and list it in <OUT>.errors.jsonl")
    parser.add_argument("--prefix", default="", help="put before the added columns' names "
                        "(for an input that already has a 'label' column)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over, ignoring parts an interrupted run left")
    parser.add_argument("--threads", type=int, help="CPU threads for the model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.predict import PredictOptions, predict_file

    options = PredictOptions(
        text_column=args.text_column, artifact=args.artifact, batch_size=args.batch_size,
        chunk_rows=args.chunk_rows, probabilities=args.probabilities, on_error=args.on_error,
        prefix=args.prefix, fresh=args.fresh, threads=args.threads,
        progress=False if args.no_progress else None)
    s = predict_file(args.run, args.data, args.out, options)
    resumed = f", {s.resumed_parts} part(s) from an earlier run" if s.resumed_parts else ""
    print(f"{s.output}: {s.rows:,} rows in {s.seconds:.1f} s ({s.rows_per_s:,.0f} rows/s) with "
          f"{s.artifact}{resumed}")
    print("labels: " + ", ".join(f"{k} {v:,}" for k, v in s.label_counts.items()))
    if s.errors_file is not None:
        print(f"skipped {s.skipped:,} bad row(s), listed in {s.errors_file}")
    return 0
