"""The archive `kiln torchserve` writes, served by a real TorchServe (its Java frontend and Python
worker), answering the evaluation texts as `kiln eval` labels them.

TorchServe's frontend needs Java 17 or newer. Without it the test is skipped, saying so, except
in CI (CI=true), where a missing Java fails it: CI must run it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.cli import main
from kiln.runtime import load_predictor
from kiln.torchserve import TorchServeArchive, TorchServeSettings, torchserve_run
from tests.conftest import free_ports

JAVA_MAJOR = 17


def missing() -> str | None:
    """Why this machine cannot run TorchServe, or None."""
    import importlib.util

    if importlib.util.find_spec("ts") is None or importlib.util.find_spec("model_archiver") is None:
        return "kiln[torchserve] is not installed (pip install 'kiln[torchserve]')"
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin")) if (
        os.environ.get("JAVA_HOME")) else shutil.which("java")
    if java is None:
        return f"TorchServe's frontend needs Java {JAVA_MAJOR}+: no java on PATH or in JAVA_HOME"
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    found = re.search(r'version "(\d+)', version)
    if found is None or int(found.group(1)) < JAVA_MAJOR:
        return f"TorchServe's frontend needs Java {JAVA_MAJOR}+; {java} is: {version[:80]!r}"
    return None


MISSING = missing()
IN_CI = os.environ.get("CI", "").lower() == "true"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MISSING is not None and not IN_CI, reason=str(MISSING))]


def request(url: str, body: bytes | None = None, content_type: str = "text/plain",
            timeout: float = 30) -> tuple[int, Any]:
    """(status, JSON answer) of a GET, or of a POST of ``body``."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def start_torchserve(archive: TorchServeArchive, settings: TorchServeSettings,
                     tmp_path: Path) -> subprocess.Popen[bytes]:
    """`torchserve --start --foreground` on the archive, in a session of its own (the launcher,
    Java and the Python worker) and a private temporary folder (TorchServe keeps its pid file,
    sockets and unpacked models there); returned once the model's worker is ready."""
    private = tmp_path / "ts-tmp"
    private.mkdir()
    env = {**os.environ, "TMPDIR": str(private), "TEMP": str(private), "OMP_NUM_THREADS": "1",
           "LOG_LOCATION": str(tmp_path / "logs"), "METRICS_LOCATION": str(tmp_path / "logs")}
    with open(tmp_path / "torchserve.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
             "--model-store", str(archive.folder), "--ts-config", str(archive.config)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    models = f"http://127.0.0.1:{settings.management_port}/models/{archive.name}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status, described = request(models, timeout=2)
            if status == 200 and described[0]["workers"][0]["status"] == "READY":
                return proc
        except (OSError, ValueError, LookupError):
            pass
        time.sleep(0.5)
    stop(proc)
    pytest.fail(f"TorchServe did not get the model ready; its log ends:\n{logs(tmp_path)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the launcher, Java and the worker: every process of the session it was started in."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + wait_s  # the launcher is gone; Java and its worker follow
        while time.monotonic() < deadline and _group_alive(proc.pid):
            time.sleep(0.1)
        if not _group_alive(proc.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def logs(tmp_path: Path) -> str:
    parts = [tmp_path / "torchserve.out", tmp_path / "logs" / "model_log.log"]
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in parts if p.exists())


def evaluation_rows(eval_csv: Path) -> list[dict[str, str]]:
    with open(eval_csv, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_torchserve_answers_the_evaluation_texts_as_kiln_eval_labels_them(
    exported_run: Path, small_dataset: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if MISSING is not None:  # only in CI: it must run there
        pytest.fail(f"CI=true and this machine cannot run TorchServe: {MISSING}")
    ports = free_ports(5)
    settings = TorchServeSettings(inference_port=ports[0], management_port=ports[1],
                                  metrics_port=ports[2], grpc_inference_port=ports[3],
                                  grpc_management_port=ports[4])
    archive = torchserve_run(exported_run, out=tmp_path / "store", name="clf", settings=settings)
    rows = evaluation_rows(small_dataset[1])
    texts = [row["text"] for row in rows]
    url = f"http://127.0.0.1:{settings.inference_port}/predictions/clf"
    proc = start_torchserve(archive, settings, tmp_path)
    try:
        worker = request(f"http://127.0.0.1:{settings.management_port}/models/clf")[1][0][
            "workers"][0]["pid"]
        # every text its own request, many in flight, so that TorchServe batches them; a
        # malformed body among them
        bodies = [(t.encode(), "text/plain") if i % 2 else
                  (json.dumps({"text": t}).encode(), "application/json")
                  for i, t in enumerate(texts)]
        bodies.insert(17, (b'{"text": "unfinished', "application/json"))
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda b: request(url, *b), bodies))
        bad_status, bad = replies.pop(17)
        listed = request(url, json.dumps(texts[:3]).encode(), "application/json")
        after = request(url, texts[0].encode())  # the model keeps serving
        same_worker = request(f"http://127.0.0.1:{settings.management_port}/models/clf")[1][0][
            "workers"][0]["pid"] == worker
    finally:
        stop(proc)
    assert [status for status, _ in replies] == [200] * len(texts), logs(tmp_path)
    assert bad_status == 400 and "not valid JSON" in bad["message"]
    assert listed[0] == 200 and [a["label"] for a in listed[1]] == [
        a["label"] for _, a in replies[:3]]
    assert after[0] == 200 and after[1]["label"] == replies[0][1]["label"]
    assert same_worker
    # TorchServe's frontend logs each call of the worker (a batch) and each request
    calls = (tmp_path / "logs" / "ts_log.log").read_text().count("Backend response time")
    posts = (tmp_path / "logs" / "access_log.log").read_text().count("POST /predictions/clf")
    assert 0 < calls < posts == len(bodies) + 2, "TorchServe formed no batch of two or more"
    served = [answer["label"] for _, answer in replies]

    # what `kiln serve` answers with the same artifact, text by text
    expected = load_predictor(exported_run, archive.artifact).predict(texts)
    assert served == expected.labels
    probabilities = [list(answer["probabilities"].values()) for _, answer in replies]
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-4)
    # and what `kiln eval` counts: the same confusion matrix over the evaluation set
    assert main(["eval", str(exported_run), "--data", str(small_dataset[1]), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    names = evaluated["labels"]
    confusion = np.zeros((len(names), len(names)), dtype=int)
    for row, label in zip(rows, served):
        confusion[names.index(row["label"]), names.index(label)] += 1
    assert confusion.tolist() == evaluated["confusion"]
