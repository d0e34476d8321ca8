"""`kiln export`: ONNX, ORT-optimised, int8 and fp16 artifacts, each verified against the model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kiln.runtime.artifacts import ARTIFACTS

HELP = "export a trained run to verified inference artifacts in RUN/export/"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("export", help=HELP, description=HELP + ". Every artifact is compared "
                            "with the trained model on the run's evaluation set (parity.json); one "
                            "outside tolerance fails the command unless --keep-failed.")
    parser.add_argument("run", metavar="RUN", help="a trained run directory")
    parser.add_argument("--artifacts", nargs="+", choices=ARTIFACTS, metavar="NAME",
                        help=f"what to build, from {', '.join(ARTIFACTS)} (default: all; the "
                        "openvino ones need the kiln[openvino] extra)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.5, metavar="POINTS",
                        help="fail an artifact whose accuracy is lower by more (default 0.5)")
    parser.add_argument("--min-agreement", type=float, default=0.99, metavar="FRACTION",
                        help="fail an artifact whose argmax agrees less often (default 0.99)")
    parser.add_argument("--calibration-samples", type=int, default=256,
                        help="training texts for static int8 calibration (default 256)")
    parser.add_argument("--max-fp32-fraction", type=float, default=0.25, metavar="FRACTION",
                        help="an int8 artifact that fails parity is rebuilt with its most harmful "
                        "layers in fp32, at most this share of them (default 0.25; 0: never)")
    parser.add_argument("--keep-failed", action="store_true",
                        help="exit 0 even if an artifact fails parity (it stays marked failed)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.export import Tolerance, export_run, format_parity_table

    if args.artifacts is None:
        _say_what_is_not_built_here(args.run)
    report = export_run(
        args.run, artifacts=args.artifacts, calibration_samples=args.calibration_samples,
        tolerance=Tolerance(args.max_accuracy_drop, args.min_agreement),
        max_fp32_fraction=args.max_fp32_fraction,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(format_parity_table(report.parity, report.reference_accuracy))
    print(f"\nartifacts and parity.json in {report.export_dir}")
    if report.preferred:
        print(f"no recommendation yet: `kiln bench {args.run}` measures the artifacts and picks "
              f"one; until then kiln serves {report.preferred} (the first that passed parity in "
              "a fixed order, unmeasured)")
    if report.failed and not args.keep_failed:
        for p in report.failed:
            print(f"kiln export: artifact {p.artifact} ({p.file}) failed parity: "
                  f"{'; '.join(p.failures)}", file=sys.stderr)
        return 1
    return 0


def _say_what_is_not_built_here(run: str) -> None:
    """One line per artifact kind this machine cannot build for the run, and why (a missing
    extra, no GPU, no native bf16)."""
    from pathlib import Path

    from kiln.models import MANIFEST, read_manifest
    from kiln.runtime.artifacts import not_built_here

    model = Path(run) / "model"
    if not (model / MANIFEST).exists():
        return  # export_run says what is wrong with the run
    framework = str(read_manifest(model).get("framework", "torch"))
    for name, why in not_built_here(framework).items():
        print(f"kiln export: not built on this machine: {name}: {why}", file=sys.stderr)
