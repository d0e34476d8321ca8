"""Deployment files for a verified run: container images, compose, Kubernetes and KServe
manifests, Prometheus rules and a Grafana dashboard (`kiln deploy RUN`)."""

from kiln.deploy.bundle import deploy_run, deployment_files
from kiln.deploy.plan import DeployPlan, DeploySettings, pinned_requirements, plan_deploy

__all__ = ["DeployPlan", "DeploySettings", "deploy_run", "deployment_files", "pinned_requirements",
           "plan_deploy"]
