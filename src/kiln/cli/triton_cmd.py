"""`kiln triton`: write a Triton model repository that takes text, from a run's exported ONNX
artifact."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "package a run's verified ONNX artifact as a Triton model repository in RUN/triton/"
DESCRIPTION = (
    HELP + ": an ensemble NAME that takes text, as `kiln serve` does (steps NAME_tokenizer, "
    "NAME_model, NAME_postprocess). Every config is built through Triton's own protobuf schema.")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("triton", help=HELP, description=DESCRIPTION)
    parser.add_argument("run", metavar="RUN", help="a run directory that has been exported")
    parser.add_argument("--name", help="model name (default: the run folder's name)")
    parser.add_argument("--artifact", help="ONNX artifact (default: the one `kiln bench` measured "
                        "fastest among the ONNX ones; printed with the reason)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000,
                        help="dynamic batching: longest wait to fill a batch (default 2000)")
    parser.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    parser.add_argument("--gpu", action="store_true", help="KIND_GPU instances (default KIND_CPU)")
    parser.add_argument("--tensorrt", action="store_true",
                        help="with --gpu: TensorRT execution accelerator, FP16")
    parser.add_argument("--model-backend", choices=["onnxruntime", "python"], default="onnxruntime",
                        help="where NAME_model runs: Triton's ONNX Runtime backend (default), or "
                        "its Python backend running the same ONNX file through onnxruntime, for "
                        "Triton builds with only the Python backend (nvidia-pytriton's)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from kiln.export import triton_run

    folder = triton_run(
        args.run, name=args.name, artifact=args.artifact, max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
        kind="gpu" if args.gpu else "cpu", tensorrt=args.tensorrt, model_backend=args.model_backend,
    )
    print(f"Triton model repository: {folder.parent}  (model '{folder.name}' takes text; "
          f"steps {folder.name}_tokenizer, {folder.name}_model on {args.model_backend}, "
          f"{folder.name}_postprocess)")
    chosen = json.loads((folder / "kiln.json").read_text(encoding="utf-8"))["triton"]
    print(f"artifact: {chosen['artifact']} ({chosen['why']})")
    return 0
