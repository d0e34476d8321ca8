"""kiln predict on Ray against the single-machine path, on the same file in one run.

One input file (the texts of --data repeated to --rows rows) is scored three ways, in --rounds
interleaved rounds (this machine is shared and one measurement can move 20-35%; medians are
compared):

- local: `predict_file`, this process, all cores as model threads;
- ray: `predict_file_on_ray` with --workers actors of --ray-threads threads (2 x 1 by default);
- ray-1: one actor with all cores as threads, the compute of local, so that what it costs beyond
  local is Ray's own overhead and not a difference in parallelism.

Ray's cost is split in two: a fixed cost per job (the actors start and load the model; measured
on a one-chunk job against local on the same) and the rest, per row (the reader task parsing the
file a second time, texts and probabilities through the object store, the driver waiting on
actors). Ray starts once, here, outside the times. Every Ray output is checked to be byte for
byte the single-machine one.

    kiln run                                           # makes runs/default, if you have none
    python benchmarks/predict_ray.py                   # runs/default, its eval texts, 100k rows
    python benchmarks/predict_ray.py --data ../shared/data/sst2/train.tsv --rows 200000
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kiln.predict import PredictOptions, predict_file
from kiln.predict.ray_engine import RayOptions, import_ray, predict_file_on_ray
from kiln.runtime import artifact_folder


def read_texts(path: Path, column: str | None) -> list[str]:
    """The texts of a CSV/TSV file: ``column``, else 'text' or 'sentence', else the first."""
    with open(path, newline="", encoding="utf-8") as f:
        tsv = path.suffix.lower() == ".tsv"
        rows = list(csv.DictReader(f, delimiter="\t" if tsv else ",",
                                   quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL))
    names = list(rows[0]) if rows else []
    name = column or next((n for n in ("text", "sentence") if n in names), names[0])
    return [r[name] for r in rows if r[name].strip()]


def write_input(path: Path, texts: list[str], rows: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "text"])
        writer.writerows([i, texts[i % len(texts)]] for i in range(rows))
    return path


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), "unknown CPU")


@dataclass(frozen=True)
class Engine:
    """One way to run the job: its name, its shape (processes x threads) and the call."""

    name: str
    shape: str
    score: Callable[[Path, Path], object]  # (input, output)


def engines(run: Path, args: argparse.Namespace) -> list[Engine]:
    def options(threads: int) -> PredictOptions:
        return PredictOptions(chunk_rows=args.chunk_rows, batch_size=args.batch_size,
                              threads=threads, progress=False, fresh=True)

    def on_ray(workers: int, threads: int) -> Callable[[Path, Path], object]:
        return lambda data, out: predict_file_on_ray(run, data, out, options(threads),
                                                     RayOptions(num_workers=workers))

    cores = os.cpu_count() or 2
    return [Engine("local", f"1 x {cores}",
                   lambda data, out: predict_file(run, data, out, options(cores))),
            Engine("ray", f"{args.workers} x {args.ray_threads}",
                   on_ray(args.workers, args.ray_threads)),
            # the same compute as local, so the difference is Ray's own cost, not parallelism
            Engine("ray-1", f"1 x {cores}", on_ray(1, cores))]


def timed(engine: Engine, data: Path) -> float:
    start = time.perf_counter()
    engine.score(data, data.with_name(f"{engine.name}-{data.name}"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/default", help="trained and exported run "
                        "(default runs/default, which `kiln run` makes)")
    parser.add_argument("--data", help="CSV/TSV whose texts are repeated (default: the run's "
                        "data/eval.csv)")
    parser.add_argument("--text-column", help="column of --data (default: text, sentence or the "
                        "first)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (default 2)")
    parser.add_argument("--ray-threads", type=int, default=1, help="threads per actor")
    parser.add_argument("--chunk-rows", type=int, default=5_000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    run = Path(args.run)
    if not (run / "export").is_dir() and not (run / "kiln.json").is_file():
        sys.exit(f"{run}: no exported run; make one with `kiln run` (writes runs/default), "
                 "or pass --run")
    data = Path(args.data) if args.data else run / "data" / "eval.csv"
    texts = read_texts(data, args.text_column)
    ray = import_ray()
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    jobs = engines(run, args)
    with tempfile.TemporaryDirectory() as tmp:
        big = write_input(Path(tmp) / "in.csv", texts, args.rows)
        small = write_input(Path(tmp) / "small.csv", texts, min(args.chunk_rows, 1_000))
        for engine in jobs:  # warm-up: imports, file caches, Ray's task workers
            timed(engine, small)
        # what a job costs whatever its size: actors start and load the model (local: ~0)
        fixed = {e.name: statistics.median(timed(e, small) for _ in range(2)) for e in jobs}
        seconds: dict[str, list[float]] = {e.name: [] for e in jobs}
        for i in range(args.rounds):
            for engine in jobs:
                seconds[engine.name].append(timed(engine, big))
            same = all(big.with_name(f"{e.name}-in.csv").read_bytes()
                       == big.with_name("local-in.csv").read_bytes() for e in jobs)
            print(f"round {i + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items())
                  + f"; every output the same bytes: {same}", flush=True)
            if not same:
                sys.exit("a Ray output differs from the single-machine one")
    ray.shutdown()
    print(f"\n{args.rows:,} rows ({len(texts):,} distinct texts of {data}), model "
          f"{artifact_folder(run)}, chunks of {args.chunk_rows:,}, batches of {args.batch_size}, "
          f"{args.rounds} rounds; fixed cost measured on a {min(args.chunk_rows, 1_000):,}-row job")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"Ray {ray.__version__}; Ray start (once, not in the times): {ray_start:.1f} s")
    report(jobs, seconds, fixed, args.rows)


def report(jobs: list[Engine], seconds: dict[str, list[float]], fixed: dict[str, float],
           rows: int) -> None:
    """The table: each engine's median time and rows/s, against local; for Ray, its fixed cost
    per job and its cost per row beyond local's (negative: faster per row than local)."""
    local = statistics.median(seconds["local"])
    print("\n| engine | processes x threads | median s | rows/s | vs local | fixed s/job "
          "| overhead us/row (all) | us/row beyond fixed |")
    print("|---|---|---|---|---|---|---|---|")
    for e in jobs:
        t = statistics.median(seconds[e.name])
        extra = fixed[e.name] - fixed["local"]
        print(f"| {e.name} | {e.shape} | {t:.2f} | {rows / t:,.0f} | {local / t:.2f}x | "
              f"{extra:.2f} | {1e6 * (t - local) / rows:.1f} | "
              f"{1e6 * (t - local - extra) / rows:.1f} |")


if __name__ == "__main__":
    main()
