"""The container images: `Dockerfile` (kiln serve, CPU) and `Dockerfile.gpu` (Triton serving
`kiln triton`'s ensemble), with their pinned requirements and `.dockerignore`."""

from __future__ import annotations

import json

from kiln.deploy.plan import DRAIN_S, TORCH_CPU_INDEX, TRITON_IMAGE, TRITON_NUMPY, DeployPlan

UID = 10001  # the images' non-root user; the Kubernetes manifests run as it too
MODEL_DIR = "/models"

# the ready probe, in Python: the slim base image has no curl or wget
READY_PROBE = ("import sys, urllib.request; sys.exit(0 if urllib.request.urlopen("
               "'http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)")


def requirements_txt(plan: DeployPlan) -> str:
    """The CPU image's packages: every package kiln needs, at the version installed in the
    environment whose artifacts passed parity."""
    head = [f"# kiln {plan.kiln_version} serving '{plan.artifact}' ({plan.backend}); written by "
            "`kiln deploy` from the environment that ran the parity check"]
    if any("+cpu" in pin for pin in plan.requirements):
        head.append(f"--extra-index-url {TORCH_CPU_INDEX}")
    return "\n".join([*head, *plan.requirements]) + "\n"


def gpu_requirements_txt(plan: DeployPlan) -> str:
    """What the ensemble's Python steps import in Triton's Python backend."""
    wanted = ["tokenizers"] + (["onnxruntime"] if plan.triton_model_backend == "python" else [])
    pins = [p for p in plan.requirements if p.split("==")[0] in wanted]
    return ("# the Python steps of kiln's Triton ensemble (tokenizer, postprocess"
            + (", model" if "onnxruntime" in wanted else "") + "); numpy 1 for Triton's "
            "Python backend stub\n" + "\n".join([TRITON_NUMPY, *pins]) + "\n")


def serve_command(plan: DeployPlan) -> str:
    """The container's command: one worker per core unless KILN_WORKERS says otherwise; the API
    key comes from KILN_API_KEY (kiln serve refuses 0.0.0.0 without one)."""
    return (f"exec kiln serve {MODEL_DIR}/{plan.name} --name {plan.name} "
            f"--artifact {plan.artifact} --host 0.0.0.0 --port 8000 --grpc-port 8001 "
            f"--max-queue-size {plan.settings.max_queue_size} "
            f"--max-batch-size {plan.settings.max_batch_size} "
            '--workers "${KILN_WORKERS:-$(nproc)}"')


def dockerfile(plan: DeployPlan) -> str:
    """kiln serve on CPU. Build context: the deploy folder, with the kiln wheel in wheels/."""
    return f"""\
# kiln serve: model '{plan.name}', artifact '{plan.artifact}' ({plan.backend}), CPU.
# Written by `kiln deploy`. Build context: this folder. First put kiln's wheel in wheels/:
#   pip wheel /path/to/kiln --no-deps -w wheels/      # -> wheels/{plan.wheel}
#   docker build -t {plan.image} .
#   docker run -p 8000:8000 -p 8001:8001 -e KILN_API_KEY=... {plan.image}
# The base is the Python that ran the parity check, by exact version.
FROM {plan.base_image}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 OMP_NUM_THREADS=1
RUN groupadd --system --gid {UID} kiln \\
    && useradd --system --uid {UID} --gid kiln --no-create-home --shell /usr/sbin/nologin kiln
WORKDIR /opt/kiln

# the exact versions that passed parity (requirements.txt), then kiln itself without resolving
COPY requirements.txt /opt/kiln/requirements.txt
RUN pip install --no-cache-dir --requirement /opt/kiln/requirements.txt
COPY wheels/{plan.wheel} /opt/kiln/wheels/
RUN pip install --no-cache-dir --no-deps /opt/kiln/wheels/{plan.wheel} \\
    && rm -rf /opt/kiln/wheels

# the run's export (artifacts, tokenizer, manifest with checksums), read-only for the server
COPY model/ {MODEL_DIR}/{plan.name}/

USER {UID}:{UID}
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \\
    CMD {json.dumps(["python", "-c", READY_PROBE])}
# SIGTERM: kiln serve answers not-ready, drains in-flight requests (up to {DRAIN_S} s) and exits 0
STOPSIGNAL SIGTERM
CMD {json.dumps(["/bin/sh", "-c", serve_command(plan)])}
"""


def gpu_dockerfile(plan: DeployPlan) -> str:
    """Triton on NVIDIA GPUs serving `kiln triton`'s ensemble (model, tokenizer, postprocess)."""
    return f"""\
# Triton Inference Server: `kiln triton`'s ensemble '{plan.name}' (takes text, as kiln serve).
# Written by `kiln deploy`. Build context: this folder (triton/ is a copy of RUN/triton/;
# run `kiln triton RUN --gpu` before `kiln deploy` for GPU instances of the model step).
#   docker build -f Dockerfile.gpu -t {plan.gpu_image} .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 {plan.gpu_image}
FROM {TRITON_IMAGE}

# tokenizers (and numpy 1) for the ensemble's Python steps
COPY requirements-gpu.txt /opt/kiln/requirements-gpu.txt
RUN pip install --no-cache-dir --requirement /opt/kiln/requirements-gpu.txt
COPY triton/ {MODEL_DIR}/

# a non-root user of our own, by number (the NGC image's users vary by release)
RUN groupadd --system --gid {UID} kiln \\
    && useradd --system --uid {UID} --gid kiln --no-create-home --shell /usr/sbin/nologin kiln
USER {UID}:{UID}
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \\
    CMD {json.dumps(["python3", "-c", READY_PROBE])}
CMD ["tritonserver", "--model-repository={MODEL_DIR}", "--strict-readiness=true", \\
     "--exit-timeout-secs={DRAIN_S}"]
"""


DOCKERIGNORE = """\
# the build context is the deploy folder: send only what the Dockerfiles copy
*
!requirements.txt
!requirements-gpu.txt
!wheels/*.whl
!model/
!triton/
"""
