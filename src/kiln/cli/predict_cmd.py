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
                        help="start over, ignoring parts an interrupted run left (either engine "
                        "resumes the other's parts: their output is the same)")
    parser.add_argument("--threads", type=int, help="CPU threads for the model (with --engine "
                        "ray: per actor, default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    group = parser.add_argument_group(
        "Ray", "score the chunks on a Ray cluster (pip install 'kiln[ray]'); every node must "
        "read the run folder and the input at the same paths; the output is written here")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: this process (default); ray: Ray actors score the chunks, "
                       "the same output (an actor scores a whole chunk: make the input many more "
                       "chunks than actors)")
    group.add_argument("--address", metavar="ADDR", help="Ray cluster to join: 'auto' (the one "
                       "started on this node with `ray start`) or ray://HOST:10001 (default: "
                       "start a local Ray)")
    group.add_argument("--num-workers", type=int, metavar="N", help="scoring actors, each "
                       "loading the model once (default: the cluster's CPUs / --threads)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.errors import ConfigError
    from kiln.predict import PredictOptions, predict_file

    if args.artifact is None:  # say what runs and why before the (possibly long) job starts
        from kiln.models import read_manifest
        from kiln.runtime import artifact_folder, choose_artifact

        folder = artifact_folder(args.run)
        choice = choose_artifact(folder, read_manifest(folder))
        print(f"kiln predict: artifact {choice.name} ({choice.reason})", flush=True)
    options = PredictOptions(
        text_column=args.text_column, artifact=args.artifact, batch_size=args.batch_size,
        chunk_rows=args.chunk_rows, probabilities=args.probabilities, on_error=args.on_error,
        prefix=args.prefix, fresh=args.fresh, threads=args.threads,
        progress=False if args.no_progress else None)
    if args.engine == "ray":
        from kiln.predict.ray_engine import RayOptions, predict_file_on_ray

        where = RayOptions(address=args.address, num_workers=args.num_workers)
        s = predict_file_on_ray(args.run, args.data, args.out, options, where)
    elif args.address is not None or args.num_workers is not None:
        raise ConfigError("--address and --num-workers are for --engine ray; add --engine ray")
    else:
        s = predict_file(args.run, args.data, args.out, options)
    resumed = f", {s.resumed_parts} part(s) from an earlier run" if s.resumed_parts else ""
    print(f"{s.output}: {s.rows:,} rows in {s.seconds:.1f} s ({s.rows_per_s:,.0f} rows/s) with "
          f"{s.artifact}{resumed}")
    print("labels: " + ", ".join(f"{k} {v:,}" for k, v in s.label_counts.items()))
    if s.errors_file is not None:
        print(f"skipped {s.skipped:,} bad row(s), listed in {s.errors_file}")
    return 0
