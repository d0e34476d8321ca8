"""`kiln run`: the main job. Train, evaluate, export with parity checks, package for Triton,
benchmark, and name the artifact to serve."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from kiln.cli.common import add_config_arguments, config_help, resolve_config
from kiln.cli.launch import add_launch_arguments, launch_training, wants_launch

HELP = "the whole path on one config: train, evaluate, export, verify, package, benchmark"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "run", help=HELP, description=HELP + ". With no config, runs on the built-in dataset.",
        epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmark stage")
    add_launch_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.bench import BenchSettings, bench_run
    from kiln.export import export_run, format_parity_table, triton_run
    from kiln.metrics import format_confusion
    from kiln.run import finished_result
    from kiln.train import train

    cfg = resolve_config(args.settings, args.fresh)
    if wants_launch(args):  # training under torchrun, the stages after it here
        code = launch_training(args, cfg.framework)
        if code:
            return code
        result = finished_result(Path(cfg.run_dir))
    else:
        result = train(cfg, fresh=args.fresh)
    ev = result.eval
    print(f"\n[1/4] trained: {result.model_dir} (step {result.step})")
    if ev:
        print(f"      eval accuracy {ev['accuracy']:.4f}  macro_f1 {ev['macro_f1']:.4f}  "
              f"loss {ev['loss']:.4f}  on {ev['num_examples']} examples")
        print(format_confusion(ev["confusion"], result.label_names))

    exported = export_run(result.run_dir, progress=lambda message: print(message, flush=True))
    print(f"\n[2/4] exported and verified: {exported.export_dir}")
    print(format_parity_table(exported.parity, exported.reference_accuracy))

    triton_dir = triton_run(result.run_dir)
    print(f"\n[3/4] Triton model repository: {triton_dir.parent} (model '{triton_dir.name}')")

    recommended = exported.recommended
    report: dict[str, Any] | None = None
    if not args.no_bench:
        report = bench_run(result.run_dir, BenchSettings())
        recommended = report["recommended"]
        r = report["results"][recommended]
        q = report["ratios"][recommended]
        print(f"\n[4/4] benchmark: {result.run_dir / 'bench' / 'report.md'}")
        print(f"      {recommended}: p50 {r['latency_b1_real']['p50_ms']:.2f} ms at batch 1 "
              f"({q['p50_real_vs_eager_fixed']:.2f} x eager fp32 padded to max length, "
              f"{q['p50_real_vs_eager_real']:.2f} x eager fp32 on the same texts), "
              f"{r['throughput_real']['samples_per_s']:.0f} samples/s at batch 32")
    failed = [p.artifact for p in exported.failed]
    print(f"\nkiln run finished: {result.run_dir}")
    print(f"  accuracy     {ev.get('accuracy', float('nan')):.4f} (trained model, eval set)")
    print(f"  serve        kiln serve {result.run_dir}   ({recommended}; or Triton: {triton_dir.parent})")
    if report is not None:  # one process per core; the artifact that batches fastest
        best = report.get("highest_throughput", recommended)
        choice = f" --artifact {best}" if best != recommended else ""
        print(f"  under load   kiln serve {result.run_dir}{choice} --workers {os.cpu_count() or 1}")
    if failed:
        print(f"  not shipped  {', '.join(failed)} (failed parity; see export/parity.json)")
    return 0
