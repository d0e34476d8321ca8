"""The repository `kiln triton --model-backend python` writes, served by a real tritonserver.

The server is the one in the ``nvidia-pytriton`` wheel (Triton 2.51, CPU, Python backend only).
Its Python backend runs each model in a stub process that embeds this Python and finds its
packages through the ``python3`` first on PATH (a virtualenv's, with its pyvenv.cfg). The stub is
built against numpy 1's C layout: under numpy 2 it hands the models garbage tensors. So the stub
gets a virtualenv of its own that puts numpy < 2 before this environment's packages (tokenizers,
onnxruntime). numpy 1 comes from ``KILN_TRITON_STUB_NUMPY`` (default: ``<this venv>/
triton-stub-numpy``), a folder made by ``pip install --target DIR 'numpy>=1.24,<2'``. Where this
environment already has numpy < 2 it is used as it is.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.cli import main
from kiln.runtime import load_predictor
from tests.conftest import free_ports

STUB_NUMPY = "KILN_TRITON_STUB_NUMPY"  # a folder holding numpy < 2 for the backend stub
INSTALL = "pip install --no-deps 'nvidia-pytriton>=0.7,<0.8'"
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def tritonserver_dist() -> Path | None:
    """pytriton's tritonserver folder (bin/, backends/, python_backend_stubs/), if installed."""
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "tritonserver"


def missing() -> str | None:
    """Why this machine cannot run the test, or None."""
    dist = tritonserver_dist()
    if dist is None:
        return f"nvidia-pytriton is not installed ({INSTALL}); it ships the tritonserver to run"
    if not (dist / "bin" / "tritonserver").is_file():
        return f"{dist}/bin/tritonserver is missing: nvidia-pytriton without its server"
    if not (dist / "python_backend_stubs" / VERSION / "triton_python_backend_stub").is_file():
        return f"nvidia-pytriton has no Python backend stub for Python {VERSION}"
    if int(np.__version__.split(".")[0]) >= 2 and not (numpy1_folder() / "numpy").is_dir():
        return (f"Triton 2.51's Python backend stub needs numpy < 2 and this environment has "
                f"numpy {np.__version__}: run `pip install --target {numpy1_folder()} "
                f"'numpy>=1.24,<2'` (or set {STUB_NUMPY} to such a folder)")
    return None


def numpy1_folder() -> Path:
    return Path(os.environ.get(STUB_NUMPY) or Path(sys.prefix) / "triton-stub-numpy").resolve()


MISSING = missing()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]


def stub_python(tmp_path: Path) -> Path:
    """A bin/ folder whose ``python3`` gives the backend stub numpy < 2 and this environment's
    packages: this environment's own where its numpy is older than 2, else a new virtualenv."""
    if int(np.__version__.split(".")[0]) < 2:
        return Path(sys.executable).parent
    env = tmp_path / "stub-env"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}))
    # a .pth file's folders follow the venv's own site-packages, in order: numpy 1 comes first
    (site / "kiln-stub.pth").write_text(f"{numpy1_folder()}\n{sysconfig.get_path('purelib')}\n")
    return env / "bin"


def server_environment(dist: Path, python_bin: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{python_bin}:{os.environ['PATH']}")
    libs = [str(dist.parent.parent / "nvidia_pytriton.libs")]  # the stub's own libraries
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):  # the libpython this Python runs on
        libs.insert(0, str(sysconfig.get_config_var("LIBDIR")))
    env["LD_LIBRARY_PATH"] = ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def start_tritonserver(repo: Path, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """tritonserver on ``repo``, once every model is ready: (the process, host:port, its log)."""
    dist = tritonserver_dist()
    assert dist is not None
    python_bin = stub_python(tmp_path)
    backends = tmp_path / "backends"  # pytriton's layout: the stub sits in backends/python/
    shutil.copytree(dist / "backends", backends)
    shutil.copy2(dist / "python_backend_stubs" / VERSION / "triton_python_backend_stub",
                 backends / "python")
    http, grpc, metrics = free_ports(3)
    log = tmp_path / "tritonserver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(dist / "bin" / "tritonserver"), "--model-repository", str(repo),
             "--backend-directory", str(backends), "--http-port", str(http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--exit-timeout-secs", "5"],
            env=server_environment(dist, python_bin), stdout=out, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{http}"
    client = httpclient.InferenceServerClient(url=url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if client.is_server_ready():
                return proc, url, log
        except (ConnectionError, OSError, InferenceServerException):
            pass
        time.sleep(0.25)
    proc.kill()
    proc.wait()
    pytest.fail(f"tritonserver did not become ready; its log ends:\n{log.read_text()[-4000:]}")


def evaluation_texts(eval_csv: Path) -> list[str]:
    with open(eval_csv, newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f)]


def infer(client: httpclient.InferenceServerClient, texts: list[str], batch: int) -> dict[str, Any]:
    """Every text, sent as requests of ``batch`` rows all in flight at once (so Triton's dynamic
    batcher joins some); the outputs in the order of ``texts``."""
    pending = []
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        text = httpclient.InferInput("text", [len(chunk), 1], "BYTES")
        text.set_data_from_numpy(np.array([[t.encode()] for t in chunk], dtype=np.object_))
        outputs = [httpclient.InferRequestedOutput(name)
                   for name in ("label", "probabilities", "logits")]
        pending.append(client.async_infer("clf", [text], outputs=outputs))
    results = [p.get_result() for p in pending]
    return {"label": [x.decode() for r in results for x in r.as_numpy("label").reshape(-1)],
            **{name: np.concatenate([r.as_numpy(name) for r in results])
               for name in ("probabilities", "logits")}}


def test_tritonserver_answers_text_as_the_predictor_does(
    exported_run: Path, small_dataset: tuple[Path, Path], tmp_path: Path,
) -> None:
    run = tmp_path / "run"  # a copy: the shared run's triton/ is other tests' to write
    shutil.copytree(exported_run / "export", run / "export")
    assert main(["triton", str(run), "--name", "clf", "--model-backend", "python",
                 "--max-queue-delay-us", "5000"]) == 0
    proc, url, log = start_tritonserver(run / "triton", tmp_path)
    try:
        client = httpclient.InferenceServerClient(url=url, concurrency=4)
        metadata = client.get_model_metadata("clf")
        assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("text", "BYTES")]
        texts = evaluation_texts(small_dataset[1])
        served = infer(client, texts, batch=8)

        with pytest.raises(InferenceServerException, match="blank"):
            infer(client, ["   "], batch=1)  # fails alone: the server answers the next request
        assert infer(client, texts[:2], batch=2)["label"] == served["label"][:2]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the predictor over the artifact the model step runs, as `kiln serve --artifact` would
    chosen = json.loads((run / "triton" / "clf_model" / "kiln.json").read_text())["triton"]
    expected = load_predictor(exported_run, chosen["artifact"]).predict(texts)
    assert len(served["label"]) == len(texts) == 80
    assert served["label"] == expected.labels
    np.testing.assert_allclose(served["probabilities"], expected.probabilities, atol=1e-4)
    np.testing.assert_allclose(served["logits"], expected.logits, atol=1e-4)
    assert "Traceback" not in log.read_text()
