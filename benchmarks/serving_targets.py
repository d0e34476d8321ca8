"""Check the export targets on a run: latency ratios against eager fp32 and shipped accuracy.

Trains (or reuses) a run, exports it, benchmarks it with `kiln bench` (2 threads, baseline in the
same run) and prints, for the best verified artifact:
  - p50 at batch 1 on real evaluation texts / eager fp32 padded to max length   (target <= 0.2)
  - p50 at batch 1 on real evaluation texts / eager fp32 on the same texts      (target <= 0.5)
  - accuracy of every shipped artifact against the trained model               (within 0.5 points)

    python benchmarks/serving_targets.py                        # built-in dataset, runs/targets
    python benchmarks/serving_targets.py --run runs/sst2 -- data.train=train.tsv data.text_column=sentence
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kiln.bench import BenchSettings, bench_run
from kiln.config import load_config
from kiln.export import export_run
from kiln.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/targets", help="run directory (trained if needed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the timed texts")
    parser.add_argument("--reuse-export", action="store_true",
                        help="benchmark the run's existing export instead of exporting again")
    parser.add_argument("overrides", nargs="*", help="kiln key=value settings for training")
    args = parser.parse_args()
    run = Path(args.run)
    if not (run / "model" / "kiln.json").exists():
        train(load_config(overrides=[f"run_dir={run}", *args.overrides]), progress=False)
    parity = (json.loads((run / "export" / "parity.json").read_text())["artifacts"]
              if args.reuse_export and (run / "export" / "parity.json").exists()
              else [p.to_json() for p in export_run(run).parity])
    report = bench_run(run, BenchSettings(threads=args.threads, repeats=args.repeats))
    best = report["recommended"]
    ratios = report["ratios"][best]
    print(json.dumps(report["ratios"], indent=2))
    print(f"\nbest verified artifact: {best} ({args.threads} threads)")
    for key, target in (("p50_real_vs_eager_fixed", 0.2), ("p50_real_vs_eager_real", 0.5)):
        verdict = "met" if ratios[key] <= target else "NOT met"
        print(f"  {key:26s} {ratios[key]:.3f}  (target <= {target}: {verdict})")
    worst = max(parity, key=lambda p: p["accuracy_drop"])
    shipped_ok = all(p["accuracy_drop"] <= 0.5 for p in parity if p["passed"])
    print(f"  largest accuracy drop of an artifact: {worst['artifact']} "
          f"{worst['accuracy_drop']:.2f} points; every shipped artifact within 0.5 points: "
          f"{shipped_ok}")


if __name__ == "__main__":
    main()
