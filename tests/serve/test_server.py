"""`kiln serve` as a client sees it: the Triton client, bad requests, overload, metrics."""

import concurrent.futures
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

TEXTS = ["my parcel has not arrived yet", "i need to change my password"]
ADDRESS = re.compile(r"kiln serve: http://(\S+)")  # printed once the port is bound


def free_port() -> int:
    """A port free a moment ago, for services that cannot take port 0 (TensorFlow's TF_CONFIG in
    tests/keras). kiln serve itself is started with --port 0 and says which port it bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(run: Path, env: dict[str, str], *args: str,
                 name: str | None = "clf") -> tuple[subprocess.Popen[bytes], str]:
    """`kiln serve run --port 0 ...`, once ready: (the process, its host:port). gRPC is off
    unless ``args`` name a --grpc-port: servers started at once would collide on its default."""
    if "--grpc-port" not in args:
        args = (*args, "--grpc-port", "0")
    fd, log_name = tempfile.mkstemp(prefix="serve-", suffix=".log", dir=run.parent)
    log = Path(log_name)
    with open(fd, "wb") as out:  # the child keeps its own handle
        proc = subprocess.Popen([sys.executable, "-m", "kiln", "serve", str(run), "--port", "0",
                                 *(["--name", name] if name else []), *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        url = wait_for_address(proc, log, deadline)
        wait_until_ready(proc, url, log, deadline)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def wait_for_address(proc: subprocess.Popen[bytes], log: Path, deadline: float) -> str:
    while time.monotonic() < deadline and proc.poll() is None:
        found = ADDRESS.search(log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"server did not bind a port: {log.read_text()}")


def wait_until_ready(proc: subprocess.Popen[bytes], url: str, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:  # still loading the models: not listening yet
            time.sleep(0.1)
    raise AssertionError(f"server did not become ready: {log.read_text()}")


def scrape(url: str) -> dict[str, Metric]:
    with urllib.request.urlopen(f"http://{url}/metrics") as r:
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


def sample(url: str, family: str, sample_name: str, **labels: str) -> float:
    """The sum of the samples of ``family`` named ``sample_name`` with ``labels``."""
    return sum(s.value for s in scrape(url)[family].samples
               if s.name == sample_name and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def server(exported_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, url = start_server(exported_run, env, "--threads", "1")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{url}{path}", data=body, method="POST",
                                 headers=headers or {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_triton_client_works_unchanged(server: str) -> None:
    client = httpclient.InferenceServerClient(url=server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("clf")
    meta = client.get_model_metadata("clf")
    assert {i["name"] for i in meta["inputs"]} >= {"text", "input_ids", "attention_mask"}
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))  # binary
    outputs = [httpclient.InferRequestedOutput("label"),
               httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer("clf", [text], outputs=outputs)
    labels = [x.decode() for x in result.as_numpy("label")]
    assert labels[0] in {"account", "billing", "shipping", "technical"} and len(labels) == 2
    probs = result.as_numpy("probabilities")
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # token tensors work too, and give the same answer as text
    ids = httpclient.InferInput("input_ids", [1, 4], "INT64")
    ids.set_data_from_numpy(np.array([[2, 10, 11, 3]], dtype=np.int64))
    mask = httpclient.InferInput("attention_mask", [1, 4], "INT64")
    mask.set_data_from_numpy(np.ones((1, 4), dtype=np.int64))
    assert client.infer("clf", [ids, mask]).as_numpy("logits").shape == (1, 4)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"inputs": []}', 400, "non-empty 'inputs'"),
        (b'{"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}', 400,
         "unknown input(s) ['txt']"),
        (b'{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x"]}]}', 400,
         "shape [2] needs 2 values, got 1"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}', 400,
         "must have datatype BYTES"),
        (b'{"inputs": [{"name": "input_ids", "shape": [1, 500], "datatype": "INT64", "data": '
         + json.dumps([1] * 500).encode() + b'}, {"name": "attention_mask", "shape": [1, 500], '
         b'"datatype": "INT64", "data": ' + json.dumps([1] * 500).encode() + b"}]}", 400,
         "at most 48"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}], '
         b'"outputs": [{"name": "scores"}]}', 400, "unknown output 'scores'"),
    ],
)
def test_bad_requests_get_4xx_naming_the_problem(server: str, body: bytes, status: int,
                                                 message: str) -> None:
    code, answer = post(server, "/v2/models/clf/infer", body)
    assert code == status and message in answer["error"]


def test_unknown_model_is_404_and_server_stays_healthy(server: str) -> None:
    code, answer = post(server, "/v2/models/nope/infer", b"{}")
    assert code == 404 and "unknown model 'nope'" in answer["error"]
    with urllib.request.urlopen(f"http://{server}/v2/health/ready") as r:
        assert r.status == 200


def test_metrics_parse_and_count_the_requests(server: str) -> None:
    def count(outcome: str) -> float:
        return sample(server, "kiln_requests", "kiln_requests_total", outcome=outcome)

    ok, bad = count("success"), count("bad_request")
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "data": ["where is my parcel"]}]}).encode()
    for _ in range(3):
        assert post(server, "/v2/models/clf/infer", body)[0] == 200
    assert post(server, "/v2/models/clf/infer", b"{")[0] == 400
    assert count("success") == ok + 3 and count("bad_request") == bad + 1


@pytest.mark.slow
def test_overload_gets_fast_503s_and_every_request_an_answer(exported_run: Path) -> None:
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, url = start_server(exported_run, env, "--max-queue-size", "2", "--max-batch-size", "1",
                             "--max-queue-delay-ms", "0", "--threads", "1")
    try:
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                       "data": ["where is my parcel " * 8]}]}).encode()

        def one(_: int) -> tuple[int, float]:
            start = time.monotonic()
            code, _answer = post(url, "/v2/models/clf/infer", body)
            return code, time.monotonic() - start

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(200)))
        codes = [c for c, _ in results]
        assert set(codes) <= {200, 503} and len(codes) == 200
        assert codes.count(503) > 0 and codes.count(200) > 0
        assert max(t for c, t in results if c == 503) < 5.0  # refused at once, not hung
        with urllib.request.urlopen(f"http://{url}/v2/health/ready") as r:
            assert r.status == 200
        assert post(url, "/v2/models/clf/infer", body)[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("rate", [None, 50.0])
def test_load_generator_reports_throughput_and_latency(server: str, rate: float | None) -> None:
    from kiln.bench.load import LoadSettings, run_load

    report = run_load(server, TEXTS, LoadSettings(model="clf", concurrency=4, rate=rate,
                                                  duration_s=1.0))
    assert report["ok"] > 0 and report["errors"] == {}
    assert report["requests_per_s"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_api_key_is_required_when_set_and_for_non_local_binds(exported_run: Path) -> None:
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    refused = subprocess.run([sys.executable, "-m", "kiln", "serve", str(exported_run), "--host",
                              "0.0.0.0"], env={k: v for k, v in env.items() if k != "KILN_API_KEY"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--api-key" in refused.stderr
    proc, url = start_server(exported_run, env, "--api-key", "s3cret", "--threads", "1")
    try:
        body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                       "data": ["hello"]}]}).encode()
        code, answer = post(url, "/v2/models/clf/infer", body)
        assert code == 401 and "API key" in answer["error"]
        code, _ = post(url, "/v2/models/clf/infer", body,
                       {"content-type": "application/json", "authorization": "Bearer s3cret"})
        assert code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sigterm_drains_in_flight_requests_then_exits(exported_run: Path) -> None:
    import os
    import signal

    env = dict(os.environ, OMP_NUM_THREADS="1")
    # a long batching delay keeps the request in flight when SIGTERM arrives
    proc, url = start_server(exported_run, env, "--max-queue-delay-ms", "1500",
                             "--max-batch-size", "64", "--threads", "1")
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "data": ["where is my parcel"]}]}).encode()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, url, "/v2/models/clf/infer", body)
        deadline = time.monotonic() + 30
        while sample(url, "kiln_inflight_requests", "kiln_inflight_requests", model="clf") < 1:
            assert time.monotonic() < deadline and not pending.done(), "request never in flight"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        code, answer = pending.result(timeout=30)
    assert code == 200 and answer["outputs"]  # answered, not dropped
    # uvicorn re-raises SIGTERM after its graceful shutdown, so "killed by SIGTERM" is a clean exit
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def test_a_repository_serves_several_models_and_versions(exported_run: Path, tmp_path: Path) -> None:
    import os

    repo = tmp_path / "repo"
    (repo / "b").mkdir(parents=True)
    (repo / "a").symlink_to(exported_run)
    (repo / "b" / "1").symlink_to(exported_run / "export")
    (repo / "b" / "2").symlink_to(exported_run / "export")
    (repo / "notes").mkdir()  # not a model: ignored
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, url = start_server(repo, env, "--threads", "1", name=None)
    try:
        client = httpclient.InferenceServerClient(url=url)
        assert client.is_model_ready("a") and client.is_model_ready("b", "1")
        assert client.get_model_metadata("b")["versions"] == ["1", "2"]
        text = httpclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"where is my parcel"], dtype=object))
        result = client.infer("b", [text], model_version="1")
        assert result.get_response()["model_version"] == "1"
        assert client.infer("b", [text]).get_response()["model_version"] == "2"  # latest
        code, answer = post(url, "/v2/models/b/versions/7/infer", b"{}")
        assert code == 404 and "no version '7'" in answer["error"]
        assert post(url, "/v2/models/notes/infer", b"{}")[0] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_worker_processes_share_the_port_and_their_metrics_add_up(exported_run: Path) -> None:
    import os
    import signal

    from kiln.bench.load import LoadSettings, run_load

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, url = start_server(exported_run, env, "--workers", "2", "--threads", "1")
    try:
        children = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "spawn_main"],
                                  capture_output=True, text=True).stdout.split()
        assert len(children) == 2, children
        report = run_load(url, TEXTS, LoadSettings(model="clf", concurrency=8, duration_s=1.0))
        assert report["ok"] > 0 and report["errors"] == {}
        served = sample(url, "kiln_requests", "kiln_requests_total", outcome="success")
        assert served == report["ok"]  # both workers' counts, summed
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


def test_a_worker_that_cannot_load_its_model_stops_the_server_with_the_reason(
        exported_run: Path) -> None:
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "kiln", "serve", str(exported_run), "--port", "0",
                           "--workers", "2", "--artifact", "nope"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "no artifact 'nope'" in done.stderr and "exited with code 3" in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_refused_before_loading_anything(exported_run: Path, workers: str) -> None:
    import os

    with socket.socket() as taken:  # held, listening, for the whole test: no race
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run([sys.executable, "-m", "kiln", "serve", str(exported_run), "--port",
                               port, "--workers", workers], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
