"""The `kserve` package's own v2 clients, REST and gRPC, against kiln serve: the calls a KServe
user makes (health, model readiness, inference with text) work unchanged.

kserve and tritonclient.grpc define the same protobuf messages (``inference.*``), which protobuf
refuses to load twice in one process; the test process has tritonclient's, so the kserve client
runs in a subprocess of its own and reports what it got as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serve.test_server import TEXTS, start_server

pytestmark = pytest.mark.skipif(importlib.util.find_spec("kserve") is None,
                                reason="needs the kserve client package (in the test extra)")

KSERVE_CONVERSATION = """
import asyncio, json, sys
import numpy as np
import kserve

rest, grpc_address, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])


def request():
    text = kserve.InferInput(name="text", shape=[len(texts)], datatype="BYTES")
    text.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    return kserve.InferRequest(model_name="clf", infer_inputs=[text])


def labels(response):
    [label] = [o for o in response.outputs if o.name == "label"]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in label.as_numpy().tolist()]


async def over_rest():
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0))
    try:
        base = "http://" + rest
        answer = await client.infer(base, request(), model_name="clf")
        return {"live": await client.is_server_live(base), "ready": await client.is_server_ready(base),
                "model_ready": await client.is_model_ready(base, "clf"), "labels": labels(answer)}
    finally:
        await client.close()


async def over_grpc():
    client = kserve.InferenceGRPCClient(grpc_address, retries=0)
    try:
        answer = await client.infer(request())
        return {"live": await client.is_server_live(), "ready": await client.is_server_ready(),
                "model_ready": await client.is_model_ready("clf"), "labels": labels(answer)}
    finally:
        await client.close()


print(json.dumps({"rest": asyncio.run(over_rest()), "grpc": asyncio.run(over_grpc())}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def kserve_answers(exported_run: Path) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """What the kserve clients got over REST and gRPC, and the labels Triton's client got."""
    grpc_port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc, url = start_server(exported_run, env, "--threads", "1", "--grpc-port", str(grpc_port))
    try:
        done = subprocess.run([sys.executable, "-c", KSERVE_CONVERSATION, url,
                               f"127.0.0.1:{grpc_port}", json.dumps(TEXTS)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        yield json.loads(done.stdout.strip().splitlines()[-1]), triton_client_labels(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def triton_client_labels(rest: str) -> list[str]:
    """The labels kiln serve gives the texts through Triton's own HTTP client."""
    import tritonclient.http as http

    client = http.InferenceServerClient(rest)
    text = http.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=False)
    return [v.decode() for v in client.infer("clf", [text]).as_numpy("label").tolist()]


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_kserve_client_health_readiness_and_inference(
        kserve_answers: tuple[dict[str, Any], list[str]], transport: str) -> None:
    answers, expected = kserve_answers
    got = answers[transport]
    assert got["live"] and got["ready"] and got["model_ready"]
    assert got["labels"] == expected
