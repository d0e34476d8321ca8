"""`kiln predict` against the same artifact's in-process batch throughput, as `kiln bench`
measures it, on the same real texts, in one run with interleaved rounds.

- bench: the artifact's backend called on batches of --batch-size consecutive texts (padded to
  the longest of each batch), the texts already tokenised: `kiln bench`'s "samples/s real";
- predict: `kiln predict` on a file of the same texts, end to end: reading the file in chunks,
  tokenising, grouping by length, scoring, writing the parts and joining them.

Target (issue 18): predict >= 90% of bench. Printed: each round, the medians, and the ratio;
and predict against the model alone on predict's own length-grouped batches (predict's
overhead: reading, tokenising, writing).

    python benchmarks/predict_throughput.py [RUN] [--data FILE] [--rows 50000] [--rounds 3]

RUN defaults to runs/default (`kiln run` makes it); --data to SST-2's training sentences in the
project's shared data folder when present (any CSV/TSV/JSONL/Parquet with --text-column works).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import tempfile
from pathlib import Path

from kiln.bench.harness import measure_throughput
from kiln.models import read_manifest
from kiln.predict import PredictOptions, predict_file
from kiln.predict.formats import open_input, read_chunks
from kiln.runtime import artifact_folder, choose_artifact, load_predictor, pad_batch

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"


def read_texts(path: Path, column: str, rows: int) -> list[str]:
    """``rows`` texts of ``path`` (repeated when it has fewer)."""
    texts: list[str] = []
    for chunk in read_chunks(open_input(path), 10_000):
        texts += [t for t in chunk.texts(column) if isinstance(t, str) and t.strip()]
        if len(texts) >= rows:
            break
    if not texts:
        raise SystemExit(f"no texts in column {column!r} of {path}")
    return (texts * (rows // len(texts) + 1))[:rows]


def bench_round(run: Path, artifact: str, texts: list[str], batch_size: int, threads: int,
                seconds: float) -> tuple[float, float]:
    """Samples/s of the artifact on batches of consecutive texts, tokenised beforehand, as
    `kiln bench` times them; and on the same texts grouped by length as `kiln predict` groups
    them (the model's own speed, with predict's padding: what predict adds is the rest)."""
    predictor = load_predictor(run, artifact, threads=threads)
    ids = [e.ids[:predictor.max_length]
           for e in predictor.tokenizer.encode_batch(texts[:batch_size * 200])]
    as_bench = [pad_batch(ids[i:i + batch_size], predictor.pad_id)
                for i in range(0, len(ids), batch_size)]
    grouped = sorted(ids, key=len)
    as_predict = [pad_batch(grouped[i:i + batch_size], predictor.pad_id)
                  for i in range(0, len(grouped), batch_size)]
    return (measure_throughput(predictor.backend, as_bench, 2, seconds).samples_per_s,
            measure_throughput(predictor.backend, as_predict, 2, seconds).samples_per_s)


def predict_round(run: Path, artifact: str, data: Path, out: Path, batch_size: int,
                  threads: int) -> float:
    options = PredictOptions(artifact=artifact, batch_size=batch_size, threads=threads,
                             fresh=True, progress=False)
    return predict_file(run, data, out, options).rows_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default="runs/default")
    parser.add_argument("--data", type=Path, default=SST2 if SST2.exists() else None)
    parser.add_argument("--text-column", default="sentence")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--artifact", help="default: the run's recommended one")
    parser.add_argument("--seconds", type=float, default=5.0, help="per bench round")
    args = parser.parse_args()
    run = Path(args.run)
    folder = artifact_folder(run)
    artifact = args.artifact or choose_artifact(folder, read_manifest(folder)).name
    if args.data is None:
        raise SystemExit("give --data FILE (SST-2 is not in this checkout)")
    texts = read_texts(args.data, args.text_column, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "texts.csv"
        with open(data, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text"])
            writer.writerows(enumerate(texts))
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {artifact}, "
              f"{len(texts):,} texts of {args.data.name}, batch {args.batch_size}, "
              f"{args.threads} threads")
        bench, grouped, predict = [], [], []
        for r in range(args.rounds):  # interleaved: a slow minute hits both
            b, g = bench_round(run, artifact, texts, args.batch_size, args.threads, args.seconds)
            bench.append(b)
            grouped.append(g)
            predict.append(predict_round(run, artifact, data, Path(tmp) / "out.csv",
                                         args.batch_size, args.threads))
            print(f"round {r + 1}: bench {b:,.0f} samples/s (length-grouped {g:,.0f}), predict "
                  f"{predict[-1]:,.0f} rows/s")
    b, g, p = (statistics.median(x) for x in (bench, grouped, predict))
    print(f"median: bench {b:,.0f} samples/s, predict {p:,.0f} rows/s: predict / bench "
          f"{p / b:.2f} (target >= 0.90)")
    print(f"the model alone on predict's length-grouped batches: {g:,.0f} samples/s; predict / "
          f"that {p / g:.2f} (what reading, tokenising and writing cost)")


if __name__ == "__main__":
    main()
