"""`kiln torchserve`: a TorchServe model archive (.mar) of a run's verified artifact, with kiln's
handler and a config.properties."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "package a run's verified artifact as a TorchServe model archive (.mar) in RUN/torchserve/"
DESCRIPTION = (
    HELP + ", with kiln's handler (text in; label and probabilities out as JSON; any artifact "
    "kiln's runtime runs, checksums verified at load) and a config.properties with kiln serve's "
    "batching. Needs torch-model-archiver: pip install 'kiln[torchserve]'.")


def add_parser(sub: Any) -> None:
    from kiln.torchserve import TorchServeSettings

    d = TorchServeSettings()
    parser = sub.add_parser("torchserve", help=HELP, description=DESCRIPTION)
    parser.add_argument("run", metavar="RUN", help="a run directory (or an export/model folder)")
    parser.add_argument("--artifact", help="artifact to package (default: the one `kiln serve` "
                        "would serve)")
    parser.add_argument("--out", metavar="DIR", help="folder to write, TorchServe's "
                        "--model-store; replaced if it exists (default: RUN/torchserve)")
    parser.add_argument("--name", help="model name, /predictions/NAME (default: the run "
                        "folder's name)")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                        help=f"TorchServe's batchSize (default {d.max_batch_size}, as kiln serve)")
    parser.add_argument("--max-batch-delay-ms", type=int, default=d.max_batch_delay_ms,
                        help="TorchServe's maxBatchDelay: longest wait to fill a batch "
                        f"(default {d.max_batch_delay_ms}, as kiln serve)")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help=f"worker processes, each with a model copy (default {d.workers})")
    parser.add_argument("--host", default=d.host, help=f"bind address (default {d.host})")
    parser.add_argument("--port", type=int, default=d.inference_port,
                        help=f"inference port (default {d.inference_port}); management, metrics "
                        "and the two gRPC ports keep TorchServe's defaults")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.torchserve import TorchServeSettings, torchserve_run

    settings = TorchServeSettings(
        max_batch_size=args.max_batch_size, max_batch_delay_ms=args.max_batch_delay_ms,
        workers=args.workers, host=args.host, inference_port=args.port)
    archive = torchserve_run(args.run, artifact=args.artifact, out=args.out, name=args.name,
                             settings=settings)
    print(f"TorchServe model archive: {archive.mar}  (artifact {archive.artifact}; "
          f"config {archive.config})")
    print(f"serve it with:  {archive.command()}")
    token = " -H 'Authorization: Bearer KEY'" if settings.token_auth else ""
    print(f"then:  curl{token} -H 'Content-Type: text/plain' --data-binary 'some text' "
          f"http://{args.host}:{args.port}/predictions/{archive.name}")
    if token:
        print(f"{args.host} is beyond this machine, so TorchServe's token authorization stays "
              "on: KEY is the inference key in the key_file.json it writes at start")
    return 0
