"""`kiln serve`'s gRPC endpoint as a client sees it: tritonclient.grpc (sync and asyncio), errors
as gRPC status codes, and one batcher, key and set of metrics shared with REST."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.serve.test_server import TEXTS, free_port, post, sample, start_server

KEY = "s3cret"
AUTH = {"authorization": f"Bearer {KEY}"}
QUEUE_DELAY_MS = 150  # long enough for a REST and a gRPC request sent together to share a batch


@pytest.fixture(scope="module")
def server(exported_run: Path) -> Iterator[tuple[str, str]]:
    """One `kiln serve` for the module: (HTTP host:port, gRPC host:port)."""
    port = free_port()
    proc, url = start_server(exported_run, dict(os.environ, OMP_NUM_THREADS="1"), "--threads",
                             "1", "--api-key", KEY, "--grpc-port", str(port),
                             "--max-queue-delay-ms", str(QUEUE_DELAY_MS))
    yield url, f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server[1]) as c:
        yield c


def texts_input(*texts: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object))
    return tensor


def token_inputs(ids: list[list[int]]) -> list[grpcclient.InferInput]:
    tensors = []
    for name, values in (("input_ids", ids), ("attention_mask", np.ones_like(ids))):
        tensor = grpcclient.InferInput(name, [len(ids), len(ids[0])], "INT64")
        tensor.set_data_from_numpy(np.array(values, dtype=np.int64))
        tensors.append(tensor)
    return tensors


def refusal(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as refused:
        call()
    return refused.value


def rest_labels(url: str, texts: list[str]) -> list[str]:
    body = json.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                                   "data": texts}], "outputs": [{"name": "label"}]}).encode()
    code, answer = post(url, "/v2/models/clf/infer", body,
                        {"content-type": "application/json", **AUTH})
    assert code == 200, answer
    return list(answer["outputs"][0]["data"])


def test_health_metadata_config_and_index(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("clf", headers=AUTH)
    server = client.get_server_metadata()
    assert server.name == "kiln" and "model_configuration" in server.extensions
    meta = client.get_model_metadata("clf", headers=AUTH)
    assert [t.name for t in meta.inputs] == ["text", "input_ids", "attention_mask"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs][0] == (
        "logits", "FP32", [-1, 4])
    config = client.get_model_config("clf", headers=AUTH, as_json=True)["config"]
    assert config["max_batch_size"] == 32 and config["backend"] == "kiln"
    assert [(i["name"], i["data_type"]) for i in config["input"]][0] == ("text", "TYPE_STRING")
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == str(
        QUEUE_DELAY_MS * 1000)
    index = client.get_model_repository_index(headers=AUTH, as_json=True)
    assert index["models"] == [{"name": "clf", "version": "1", "state": "READY"}]


def test_texts_get_the_labels_rest_gives(server: tuple[str, str],
                                         client: grpcclient.InferenceServerClient) -> None:
    result = client.infer("clf", [texts_input(*(t.encode() for t in TEXTS))], headers=AUTH,
                          request_id="r-1")
    labels = [label.decode() for label in result.as_numpy("label")]
    assert labels == rest_labels(server[0], TEXTS)
    assert result.get_response().id == "r-1" and result.get_response().model_version == "1"
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_classification_and_compression(client: grpcclient.InferenceServerClient,
                                        compression: str) -> None:
    texts = [t.encode() for t in TEXTS[:2]]
    plain = client.infer("clf", [texts_input(*texts)], headers=AUTH)
    top = client.infer("clf", [texts_input(*texts)], headers=AUTH,
                       outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=2)],
                       compression_algorithm=compression)
    classes = top.as_numpy("probabilities")  # "value:index:label", the top 2 of each row
    assert classes.shape == (2, 2)
    for row, probabilities, label in zip(classes, plain.as_numpy("probabilities"),
                                         plain.as_numpy("label")):
        value, index, name = row[0].decode().split(":")
        assert int(index) == int(np.argmax(probabilities)) and name.encode() == label
        assert float(value) == pytest.approx(float(probabilities.max()), abs=1e-6)


def test_token_ids_and_the_outputs_asked_for(client: grpcclient.InferenceServerClient) -> None:
    outputs = [grpcclient.InferRequestedOutput("logits")]
    result = client.infer("clf", token_inputs([[2, 10, 11, 3], [2, 12, 3, 0]]), outputs=outputs,
                          headers=AUTH)
    assert result.as_numpy("logits").shape == (2, 4)
    assert result.as_numpy("label") is None and result.as_numpy("probabilities") is None


def test_timeout_is_in_microseconds(client: grpcclient.InferenceServerClient) -> None:
    # 30 ms is shorter than the batcher's wait for company (150 ms): the request times out
    timed_out = refusal(lambda: client.infer("clf", [texts_input(b"hi")], timeout=30_000,
                                             headers=AUTH))
    assert timed_out.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "timed out" in timed_out.message()
    assert client.infer("clf", [texts_input(b"hi")], timeout=10_000_000, headers=AUTH)


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (lambda c: c.infer("nope", [texts_input(b"hi")], headers=AUTH), "NOT_FOUND",
         "unknown model 'nope'"),
        (lambda c: c.infer("clf", [texts_input(b"ok", b"\xff\xfe")], headers=AUTH),
         "INVALID_ARGUMENT", "input 'text': element 1 is not valid UTF-8"),
        (lambda c: c.infer("clf", token_inputs([[2, 10**6, 3]]), headers=AUTH), "INVALID_ARGUMENT",
         "input 'input_ids': token id 1000000 at [0, 1] is not in the model's vocabulary"),
        (lambda c: c.infer("clf", [texts_input(b"hi")],
                           headers={"authorization": "Bearer wrong"}), "UNAUTHENTICATED",
         "API key"),
        (lambda c: c.infer("clf", [texts_input(b"hi")]), "UNAUTHENTICATED", "API key"),
        (lambda c: c.get_model_metadata("clf"), "UNAUTHENTICATED", "API key"),
        (lambda c: c.is_model_ready("nope", headers=AUTH), "NOT_FOUND", "unknown model 'nope'"),
        (lambda c: c.get_inference_statistics("nope", headers=AUTH), "NOT_FOUND",
         "unknown model 'nope'"),
        # over --max-request-bytes (4 MiB by default): grpc's own refusal
        (lambda c: c.infer("clf", [texts_input(b"x" * (5 << 20))], headers=AUTH),
         "RESOURCE_EXHAUSTED", "larger than max"),
    ],
)
def test_errors_get_grpc_status_codes_naming_the_problem(
        client: grpcclient.InferenceServerClient, call: Any, status: str, message: str) -> None:
    refused = refusal(lambda: call(client))
    assert refused.status() == f"StatusCode.{status}" and message in refused.message()


def test_statistics_count_the_requests_answered(
        client: grpcclient.InferenceServerClient) -> None:
    def stats() -> Any:
        [model] = client.get_inference_statistics("clf", headers=AUTH,
                                                  as_json=True)["model_stats"]
        return model

    before = stats()
    client.infer("clf", [texts_input(b"one", b"two")], headers=AUTH)
    after = stats()
    assert (after["name"], after["version"]) == ("clf", "1")
    # as_json renders 64-bit counts as strings, as protobuf's JSON mapping does
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 2
    success = after["inference_stats"]["success"]
    assert int(success["count"]) - int(before["inference_stats"]["success"].get("count", 0)) == 1
    assert int(success["ns"]) > 0
    assert client.get_inference_statistics(headers=AUTH).model_stats[0].name == "clf"


def test_bytes_that_are_no_message_are_an_invalid_argument(server: tuple[str, str]) -> None:
    with grpc.insecure_channel(server[1]) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as refused:
            infer(b"\xff\xff\xff\xff", timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in refused.value.details()


def test_grpc_and_rest_requests_share_a_batch_and_the_metrics(
        server: tuple[str, str], client: grpcclient.InferenceServerClient) -> None:
    url = server[0]

    def batches() -> tuple[float, float, float]:
        return (sample(url, "kiln_batch_size", "kiln_batch_size_count", model="clf"),
                sample(url, "kiln_batch_size", "kiln_batch_size_sum", model="clf"),
                sample(url, "kiln_requests", "kiln_requests_total", outcome="success"))

    count, rows, served = batches()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        rest = pool.submit(rest_labels, url, [TEXTS[0]])
        over_grpc = pool.submit(client.infer, "clf", [texts_input(TEXTS[0].encode())],
                                headers=AUTH)
        label = over_grpc.result(timeout=30).as_numpy("label")[0].decode()
        assert rest.result(timeout=30) == [label]
    assert batches() == (count + 1, rows + 2, served + 2)  # one batch of both, both counted


def test_the_asyncio_client_works(server: tuple[str, str]) -> None:
    async def ask() -> tuple[bool, list[str]]:
        async with aioclient.InferenceServerClient(server[1]) as c:
            tensor = aioclient.InferInput("text", [2], "BYTES")
            tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
            ready = await c.is_model_ready("clf", headers=AUTH)
            answers = await asyncio.gather(*(c.infer("clf", [tensor], headers=AUTH)
                                             for _ in range(3)))
            return ready, [x.decode() for a in answers for x in a.as_numpy("label")]

    ready, labels = asyncio.run(ask())
    assert ready and labels == rest_labels(server[0], TEXTS) * 3


def listening(port: int) -> int:
    """How many sockets listen on ``port`` (IPv4, or IPv6 and v4-mapped as grpc's are); Linux."""
    hex_port = f":{port:04X} "
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += local.endswith(hex_port.strip()) and state == "0A"
    return count


@pytest.mark.skipif(not Path("/proc/net/tcp6").exists(), reason="reads Linux's socket tables")
def test_every_worker_serves_grpc_on_the_shared_port(exported_run: Path) -> None:
    port = free_port()
    proc, url = start_server(exported_run, dict(os.environ, OMP_NUM_THREADS="1"), "--workers",
                             "2", "--threads", "1", "--grpc-port", str(port))
    try:
        assert listening(port) == 2  # one gRPC server per worker, the supervisor's holds it
        for _ in range(4):  # new connections, spread by the kernel
            with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as c:
                assert c.infer("clf", [texts_input(b"where is my parcel")]).as_numpy("label")
        assert sample(url, "kiln_requests", "kiln_requests_total", outcome="success") == 4
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_a_taken_grpc_port_is_refused_before_loading_anything(exported_run: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run([sys.executable, "-m", "kiln", "serve", str(exported_run), "--port",
                               "0", "--grpc-port", port], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
