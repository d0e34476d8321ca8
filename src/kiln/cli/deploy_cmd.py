"""`kiln deploy`: write a run's deployment folder (Dockerfiles, compose, Kubernetes and KServe
manifests, Prometheus rules, a Grafana dashboard)."""

from __future__ import annotations

import argparse
from typing import Any

HELP = "write deployment files for a verified run in RUN/deploy/"
DESCRIPTION = (
    HELP + ": Dockerfile (kiln serve, CPU, dependencies pinned to this environment), "
    "Dockerfile.gpu (Triton with `kiln triton`'s ensemble), compose.yaml with Prometheus and "
    "Grafana, k8s/ (Deployment, Service, HPA, PodDisruptionBudget), kserve/ (InferenceService), "
    "prometheus/alerts.yml and grafana/dashboards/kiln.json. Nothing is built or pushed.")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("deploy", help=HELP, description=DESCRIPTION)
    parser.add_argument("run", metavar="RUN", help="a run directory that has been exported")
    parser.add_argument("--out", metavar="DIR", help="where to write (default RUN/deploy/; "
                        "replaced as a whole)")
    parser.add_argument("--artifact", help="artifact to serve (default: as kiln serve picks: "
                        "the one `kiln bench` measured fastest, else the recommended one)")
    parser.add_argument("--image", default="", help="the CPU image's name:tag (default "
                        "kiln-<model>:<kiln version>)")
    parser.add_argument("--workers", type=int, default=2,
                        help="kiln serve workers (and CPU cores) per replica (default 2)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from kiln.deploy import DeploySettings, deploy_run
    from kiln.errors import KilnError

    if args.workers < 1:
        raise KilnError("--workers must be at least 1")
    folder, plan = deploy_run(args.run, args.out, artifact=args.artifact,
                              settings=DeploySettings(image=args.image, workers=args.workers))
    print(f"deployment of '{plan.name}' (artifact {plan.artifact}, {plan.backend}): {folder}")
    print(f"artifact: {plan.artifact} ({plan.why})")
    print(f"  image {plan.image}: put kiln's wheel in {folder}/wheels/ (pip wheel . --no-deps "
          f"-w {folder}/wheels), then docker build -t {plan.image} {folder}")
    if plan.triton is None:
        print(f"  no {plan.run}/triton/: Dockerfile.gpu needs it; run `kiln triton {plan.run} "
              "--gpu` and deploy again")
    return 0
