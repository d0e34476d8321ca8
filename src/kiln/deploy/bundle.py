"""`kiln deploy RUN`: write a run's deployment folder (images, compose, Kubernetes, KServe,
Prometheus, Grafana) at once, so a reader never sees half of one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from kiln.deploy import images, kubernetes, monitoring
from kiln.deploy.plan import DeployPlan, DeploySettings, plan_deploy
from kiln.files import replacing_dir

KSERVE_HEADER = """\
# KServe InferenceServices for kiln model '{name}' (written by `kiln deploy`).
# 1. kiln's own image (Dockerfile) as a custom predictor: serverless, scales on concurrency.
# 2. KServe's Triton runtime on a GPU with Dockerfile.gpu's image, serving `kiln triton`'s
#    ensemble repository from storageUri: s3://CHANGE-ME/... is a placeholder; upload
#    RUN/triton/ (or this folder's triton/) to your bucket and put its URI there.
# The first reads the API key from the Secret {secret} (key api-key); Triton takes none.
"""


def _yaml(*documents: Any, header: str = "") -> str:
    return header + "---\n".join(yaml.safe_dump(d, sort_keys=False, width=100) for d in documents)


def deployment_files(plan: DeployPlan) -> dict[str, str]:
    """Relative path -> text of every generated file (the model and Triton copies aside)."""
    files = {
        "Dockerfile": images.dockerfile(plan),
        "Dockerfile.gpu": images.gpu_dockerfile(plan),
        ".dockerignore": images.DOCKERIGNORE,
        "requirements.txt": images.requirements_txt(plan),
        "requirements-gpu.txt": images.gpu_requirements_txt(plan),
        "wheels/README.txt": f"Put kiln's wheel here: pip wheel /path/to/kiln --no-deps -w "
                             f"wheels/  (-> {plan.wheel})\n",
        "compose.yaml": _yaml(monitoring.compose(plan)),
        "prometheus/prometheus.yml": _yaml(monitoring.prometheus_config()),
        "prometheus/alerts.yml": _yaml(monitoring.alert_rules(plan)),
        "grafana/provisioning/datasources/prometheus.yml": _yaml(monitoring.grafana_datasource()),
        "grafana/provisioning/dashboards/kiln.yml": _yaml(monitoring.grafana_dashboards()),
        "grafana/dashboards/kiln.json": json.dumps(monitoring.dashboard(plan), indent=2) + "\n",
        "kserve/inferenceservice.yaml": _yaml(
            kubernetes.kserve_kiln(plan), kubernetes.kserve_triton(plan),
            header=KSERVE_HEADER.format(name=plan.name, secret=plan.settings.api_key_secret)),
    }
    for name, obj in kubernetes.kubernetes_objects(plan).items():
        files[f"k8s/{name}"] = _yaml(obj)
    return files


def deploy_run(run_dir: str | Path, out: str | Path | None = None, *, artifact: str | None = None,
               settings: DeploySettings | None = None) -> tuple[Path, DeployPlan]:
    """Write the deployment folder of ``run_dir`` (default ``RUN/deploy/``), replacing an older
    one atomically: the generated files, the run's export in ``model/`` and, when `kiln triton`
    was run, its repository in ``triton/``.

    Returns:
        The folder and the plan it was written from.

    Raises:
        RunDirError: as `plan_deploy`.
    """
    plan = plan_deploy(run_dir, artifact, settings)
    target = Path(out) if out is not None else plan.run / "deploy"
    with replacing_dir(target) as tmp:
        for rel, text in deployment_files(plan).items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        shutil.copytree(plan.export, tmp / "model")
        if plan.triton is not None:
            shutil.copytree(plan.triton, tmp / "triton")
    return target, plan
