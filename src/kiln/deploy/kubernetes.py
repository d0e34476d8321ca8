"""Kubernetes objects (Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget) and
KServe InferenceServices, as plain dicts for YAML."""

from __future__ import annotations

from typing import Any

from kiln.deploy.images import UID
from kiln.deploy.plan import DRAIN_S, TRITON_IMAGE, DeployPlan

K8S_VERSION = "1.33.0"  # the API version the manifests are validated against (tests)
Manifest = dict[str, Any]


def _labels(plan: DeployPlan) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kiln", "app.kubernetes.io/instance": plan.name}


def _meta(plan: DeployPlan, **extra: Any) -> dict[str, Any]:
    return {"name": f"kiln-{plan.name}", "labels": _labels(plan), **extra}


def _env(plan: DeployPlan) -> list[dict[str, Any]]:
    return [
        {"name": "KILN_WORKERS", "value": str(plan.settings.workers)},
        {"name": "KILN_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": plan.settings.api_key_secret, "key": "api-key"}}},
    ]


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s,
            "timeoutSeconds": 2, "failureThreshold": failures}


def _container(plan: DeployPlan) -> dict[str, Any]:
    s = plan.settings
    resources = {"cpu": str(s.workers), "memory": s.memory}
    return {
        "name": "kiln", "image": plan.image, "imagePullPolicy": "IfNotPresent", "env": _env(plan),
        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": 8001, "protocol": "TCP"}],
        # generous start: loading and the warm-up batch; then live and ready are cheap
        "startupProbe": _probe("/v2/health/live", 2, 60),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
        "resources": {"requests": resources, "limits": resources},
        # the Service stops sending new connections while this sleeps; SIGTERM then drains
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(s.pre_stop_s)]}}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        # kiln serve's worker metrics go to a temporary folder
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def deployment(plan: DeployPlan) -> Manifest:
    """kiln serve replicas; the HPA owns the replica count once applied."""
    s = plan.settings
    pod_meta = {"labels": _labels(plan), "annotations": {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics"}}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(plan),
        "spec": {
            "replicas": s.replicas, "selector": {"matchLabels": _labels(plan)},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": pod_meta, "spec": {
                # preStop, then kiln's drain of in-flight requests, then a margin
                "terminationGracePeriodSeconds": s.pre_stop_s + DRAIN_S + 5,
                "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [_container(plan)],
                "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory",
                                                         "sizeLimit": "64Mi"}}],
            }},
        },
    }


def service(plan: DeployPlan) -> Manifest:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(plan),
        "spec": {"type": "ClusterIP", "selector": _labels(plan), "ports": [
            {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
            {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP",
             "appProtocol": "kubernetes.io/h2c"}]},
    }


def autoscaler(plan: DeployPlan) -> Manifest:
    s = plan.settings
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(plan),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": f"kiln-{plan.name}"},
            "minReplicas": s.replicas, "maxReplicas": s.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": s.cpu_target_percent}}}],
            # scale down slowly: a replica's start costs a model load and a warm-up batch
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def disruption_budget(plan: DeployPlan) -> Manifest:
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(plan),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": _labels(plan)}},
    }


def kubernetes_objects(plan: DeployPlan) -> dict[str, Manifest]:
    """File name under k8s/ -> object."""
    return {"deployment.yaml": deployment(plan), "service.yaml": service(plan),
            "hpa.yaml": autoscaler(plan), "pdb.yaml": disruption_budget(plan)}


def kserve_kiln(plan: DeployPlan) -> Manifest:
    """KServe, serverless: kiln's image as a custom predictor. It speaks the v2 (Open Inference)
    protocol itself; Knative routes one port, so this exposes HTTP (8000) only."""
    container = _container(plan)
    container.update(name="kserve-container", ports=[
        {"name": "http1", "containerPort": 8000, "protocol": "TCP"}])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        container[probe]["httpGet"]["port"] = 8000
    del container["volumeMounts"], container["securityContext"]["readOnlyRootFilesystem"]
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": f"kiln-{plan.name}", "labels": _labels(plan),
                     "annotations": {"serving.kserve.io/enable-prometheus-scraping": "true"}},
        "spec": {"predictor": {
            "minReplicas": 1, "maxReplicas": plan.settings.max_replicas,
            "scaleMetric": "concurrency", "scaleTarget": 32,
            "containers": [container],
        }},
    }


def kserve_triton(plan: DeployPlan) -> Manifest:
    """KServe's Triton runtime on a GPU, serving the ensemble repository from ``storageUri``
    (a placeholder: upload RUN/triton/ there). The image is this deployment's Dockerfile.gpu,
    which adds the tokenizer's Python packages to NGC's Triton."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": f"kiln-{plan.name}-triton", "labels": _labels(plan),
                     "annotations": {"kiln/base-image": TRITON_IMAGE}},
        "spec": {"predictor": {
            "minReplicas": 1, "maxReplicas": plan.settings.max_replicas,
            "model": {
                "name": "kserve-container", "modelFormat": {"name": "triton"},
                "protocolVersion": "v2",
                "runtime": "kserve-tritonserver",
                "storageUri": f"s3://CHANGE-ME/kiln/{plan.name}/triton",
                "image": plan.gpu_image,
                "args": [f"--exit-timeout-secs={DRAIN_S}", "--strict-readiness=true"],
                "resources": {"requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
                              "limits": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}},
            },
        }},
    }
