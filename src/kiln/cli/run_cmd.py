"""`kiln run`: the main job. Train, evaluate, export with parity checks, benchmark, package for
Triton, write the report, and name the artifact to serve.

Idempotent: on a finished run, a stage whose inputs are unchanged is not redone (see
kiln.run.stages); `kiln run` then only reports the run. ``--redo STAGE`` or ``--fresh`` redo.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.cli.common import add_config_arguments, config_help, resolve_config
from kiln.cli.launch import add_launch_arguments, launch_training, wants_launch
from kiln.config import Config
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.bench import BenchSettings

HELP = "the whole path on one config: train, evaluate, export, verify, benchmark, package, report"
STAGES = ("export", "bench", "triton", "report")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "run", help=HELP, description=HELP + ". With no config, runs on the built-in dataset. "
        "On a finished run it redoes only the stages whose inputs changed (the trained model, the "
        "export, ...), and otherwise reports the run.",
        epilog=config_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmark stage")
    parser.add_argument("--bench-seconds", type=float, default=2.0, metavar="S",
                        help="the benchmark's throughput measurement per artifact and scenario, "
                        "split over its rounds (default 2; less is quicker and noisier)")
    parser.add_argument("--redo", action="append", choices=STAGES, default=[], metavar="STAGE",
                        help=f"redo this stage (and those after it that read it) even if it is up "
                        f"to date; one of {', '.join(STAGES)}; repeatable (--fresh retrains and "
                        "redoes everything)")
    add_launch_arguments(parser)
    parser.set_defaults(handler=run)


@dataclass
class Stage:
    """One stage after training: what it reads, what it writes, and how to run it."""

    name: str
    title: str
    inputs: list[Path]
    outputs: list[Path]
    do: Callable[[], None]
    settings: dict[str, Any] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    from kiln.run.stages import inputs_digest, record_stage, stage_is_current

    cfg = resolve_config(args.settings, args.fresh)
    run_dir = Path(cfg.run_dir)
    if not args.bench_seconds > 0:
        raise KilnError(f"--bench-seconds must be above 0, got {args.bench_seconds}")
    stages = _stages(run_dir, args.no_bench, args.bench_seconds)
    trained, code = _train_stage(args, cfg, f"[1/{len(stages) + 1}]")
    if code:
        return code
    redo = set(STAGES) if args.fresh or trained else set(args.redo)
    ran = 0
    for number, stage in enumerate(stages, start=2):
        digest = inputs_digest(stage.inputs, stage.settings)
        if stage.name not in redo and stage_is_current(run_dir, stage.name, digest, stage.outputs):
            print(f"\n[{number}/{len(stages) + 1}] {stage.title}: up to date, not redone "
                  f"({stage.outputs[0]})")
            continue
        print(f"\n[{number}/{len(stages) + 1}] {stage.title}", flush=True)
        stage.do()
        record_stage(run_dir, stage.name, digest)
        ran += 1
        redo.update(STAGES[STAGES.index(stage.name) + 1:])  # the later stages read what it wrote
    if not trained and not ran:
        print(f"\nkiln run: {run_dir} is finished and up to date: nothing was redone (--redo "
              "STAGE or --fresh to redo)")
    _summary(run_dir)
    return 0


def _train_stage(args: argparse.Namespace, cfg: Config, number: str) -> tuple[bool, int]:
    """Train unless the run already holds the model this config trains: (whether it trained,
    the exit code of a failed launch under torchrun or 0)."""
    from kiln.metrics import format_confusion
    from kiln.run import finished_result
    from kiln.run.stages import training_done
    from kiln.train import train

    run_dir = Path(cfg.run_dir)
    if not args.fresh and training_done(run_dir, cfg) is None:
        print(f"{number} train: up to date, not retrained ({run_dir / 'model'})")
        return False, 0
    if wants_launch(args):  # training under torchrun, the stages after it here
        code = launch_training(args, cfg.framework)
        if code:
            return True, code
        result = finished_result(run_dir)
    else:
        result = train(cfg, fresh=args.fresh)
    print(f"\n{number} trained: {result.model_dir} (step {result.step})")
    ev = result.eval
    if ev:
        print(f"      eval accuracy {ev['accuracy']:.4f}  macro_f1 {ev['macro_f1']:.4f}  "
              f"loss {ev['loss']:.4f}  on {ev['num_examples']} examples")
        print(format_confusion(ev["confusion"], result.label_names))
    return True, 0


def _stages(run_dir: Path, no_bench: bool, bench_seconds: float) -> list[Stage]:
    from kiln.bench import BenchSettings

    bench_settings = BenchSettings(min_seconds=bench_seconds)
    model, export = run_dir / "model" / "kiln.json", run_dir / "export" / "kiln.json"
    bench = run_dir / "bench" / "report.json"
    triton = run_dir / "triton" / run_dir.resolve().name / "kiln.json"
    stages = [Stage("export", "export and verify", [model, run_dir / "config.yaml"],
                    [export, run_dir / "export" / "parity.json"], lambda: _export(run_dir))]
    if not no_bench:
        stages.append(Stage("bench", "benchmark", [export], [bench],
                            lambda: _bench(run_dir, bench_settings),
                            settings=dict(bench_settings.__dict__)))
    stages += [
        Stage("triton", "Triton model repository", [export, bench], [triton],
              lambda: _triton(run_dir)),
        Stage("report", "report", [model, run_dir / "metrics.jsonl", export,
                                   run_dir / "export" / "parity.json", bench, triton],
              [run_dir / "report.html"], lambda: _report(run_dir)),
    ]
    return stages


def _export(run_dir: Path) -> None:
    from kiln.export import export_run, format_parity_table

    exported = export_run(run_dir, progress=lambda message: print(message, flush=True))
    print(f"exported and verified: {exported.export_dir}")
    print(format_parity_table(exported.parity, exported.reference_accuracy))


def _bench(run_dir: Path, settings: BenchSettings) -> None:
    from kiln.bench import bench_run

    report = bench_run(run_dir, settings)
    best = report["recommended"]
    r, q = report["results"][best], report["ratios"][best]
    print(f"benchmark: {run_dir / 'bench' / 'report.md'}")
    print(f"      {best}: p50 {r['latency_b1_real']['p50_ms']:.2f} ms at batch 1 "
          f"({q['p50_real_vs_eager_fixed']:.2f} x eager fp32 padded to max length, "
          f"{q['p50_real_vs_eager_real']:.2f} x eager fp32 on the same texts), "
          f"{r['throughput_real']['samples_per_s']:.0f} samples/s at batch 32")


def _triton(run_dir: Path) -> None:
    from kiln.export import triton_run

    folder = triton_run(run_dir)
    print(f"Triton model repository: {folder.parent} (model '{folder.name}')")


def _report(run_dir: Path) -> None:
    from kiln.report import write_report

    print(f"report: {write_report(run_dir)}")


def _summary(run_dir: Path) -> None:
    """What the run holds, read from its files: the same whether or not anything was redone."""
    from kiln.models import read_manifest
    from kiln.run import describe_kept
    from kiln.runtime import choose_artifact

    training = read_manifest(run_dir / "model")["training"]
    exported = read_manifest(run_dir / "export")
    artifacts = exported.get("artifacts", {})
    passed = [name for name, entry in artifacts.items() if entry.get("passed")]
    failed = [name for name in artifacts if name not in passed]
    choice = choose_artifact(run_dir / "export", exported)
    accuracy = training.get("eval", {}).get("accuracy", float("nan"))
    print(f"\nkiln run finished: {run_dir}")
    print(f"  accuracy     {accuracy:.4f} on the eval set; {describe_kept(training)}")
    print(f"  verified     {', '.join(passed) or 'none'} (export/parity.json)")
    if failed:
        print(f"  not shipped  {', '.join(failed)} (failed parity; see export/parity.json)")
    print(f"  recommended  {choice.name}: {choice.reason}")
    print(f"  report       {run_dir / 'report.html'}")
    print(f"  serve        kiln serve {run_dir}")
    _under_load(run_dir, choice.name)
    triton = run_dir / "triton" / run_dir.resolve().name / "kiln.json"
    if triton.exists():
        held = json.loads(triton.read_text(encoding="utf-8")).get("triton", {}).get("artifact")
        print(f"  Triton       {triton.parent.parent} ({held})")
    print(f"  deploy       kiln deploy {run_dir}   (Docker, Compose, Kubernetes, KServe)")
    print(f"  score files  kiln predict {run_dir} --data FILE")


def _under_load(run_dir: Path, recommended: str) -> None:
    """One process per core, and the artifact that batches fastest, if the bench says another."""
    report_file = run_dir / "bench" / "report.json"
    if not report_file.exists():
        return
    report = json.loads(report_file.read_text(encoding="utf-8"))
    best = report.get("highest_throughput", recommended)
    choice = f" --artifact {best}" if best != recommended else ""
    print(f"  under load   kiln serve {run_dir}{choice} --workers {os.cpu_count() or 1}")
