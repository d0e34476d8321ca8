"""Cases from Triton's own HTTP tests (server repo, qa/L0_http) and its client examples
(simple_http_* and simple_grpc_*), adapted to kiln's model: what is sent and what comes back,
written here. Where kiln answers differently on purpose, the test says so (README: "Deliberate
differences from Triton")."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from tests.serve.test_server import TEXTS, start_server
from tests.serve.test_triton_extensions import exchange, text_input


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(exported_run: Path) -> Iterator[tuple[str, str]]:
    """(HTTP host:port, gRPC host:port) of one kiln serve with a one-row queue whose batches wait
    up to 1.5 s for company, so that a second request finds the queue full."""
    grpc_port = free_port()
    proc, url = start_server(exported_run, dict(os.environ, OMP_NUM_THREADS="1"), "--threads",
                             "1", "--grpc-port", str(grpc_port), "--max-queue-size", "1",
                             "--max-batch-size", "2", "--max-queue-delay-ms", "1500")
    yield url, f"127.0.0.1:{grpc_port}"
    proc.terminate()
    proc.wait(timeout=30)


def infer_path(model: str = "clf") -> str:
    return f"/v2/models/{model}/infer"


def error_of(body: bytes) -> str:
    answer = json.loads(body)
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str)
    return str(answer["error"])


# ---- qa/L0_http/http_test.py --------------------------------------------------------------------


def test_raw_binary_request_sent_chunked(server: tuple[str, str]) -> None:
    # Triton: a raw binary request whose body comes chunk-encoded is read as any other
    text = b"where is my parcel"
    chunked = b"%X\r\n%s\r\n0\r\n\r\n" % (len(text), text)
    code, headers, body = exchange(server[0], "POST", infer_path(), chunked, {
        "inference-header-content-length": "0", "transfer-encoding": "chunked"})
    assert code == 200, body
    result = httpclient.InferResult.from_response_body(
        body, header_length=int(headers["inference-header-content-length"]))
    assert result.as_numpy("label").shape == (1, 1)


def test_descriptive_status_code_when_the_queue_is_full(server: tuple[str, str]) -> None:
    # Triton: a model that queues one request at most answers a second one 503 (unavailable)
    body = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "data": ["hello"]}]}).encode()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(exchange, server[0], "POST", infer_path(), body)
        time.sleep(0.5)  # the first waits in the queue (1.5 s for a second row)
        code, headers, answer = exchange(server[0], "POST", infer_path(), body)
        assert first.result(timeout=30)[0] == 200
    assert code == 503 and "queue full" in error_of(answer) and int(headers["retry-after"]) >= 1


@pytest.mark.parametrize("shape", [[2**4, 2**60 + 2], [2**2, 2**60 + 2]])
def test_a_shape_whose_element_count_overflows_is_refused(server: tuple[str, str],
                                                         shape: list[int]) -> None:
    # Triton: 400 naming the overflow; kiln: 400 naming the shape that does not match the data
    request = {"inputs": [{"name": name, "shape": shape, "datatype": "INT64", "data": [1]}
                          for name in ("input_ids", "attention_mask")]}
    code, _, answer = exchange(server[0], "POST", infer_path(), json.dumps(request).encode())
    assert code == 400 and "input_ids" in error_of(answer)


def test_negative_dimensions_are_a_client_error(server: tuple[str, str]) -> None:
    # Triton answers 500 here; a negative dimension is the client's mistake, so kiln says 400
    request = {"inputs": [{"name": "text", "shape": [2, -5], "datatype": "BYTES",
                           "data": ["a"]}]}
    code, _, answer = exchange(server[0], "POST", infer_path(), json.dumps(request).encode())
    assert code == 400 and "shape must be a list of non-negative integers" in error_of(answer)


@pytest.mark.parametrize(("depth", "nesting_refused"), [(120, True), (50, False)])
def test_json_nesting_is_limited_to_100_levels(server: tuple[str, str], depth: int,
                                               nesting_refused: bool) -> None:
    data: Any = "hello"
    for _ in range(depth):
        data = [data]
    request = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": data}]}
    code, _, answer = exchange(server[0], "POST", infer_path(), json.dumps(request).encode())
    # past 100 levels the JSON is refused as such; at 50 it is read, and then its data does not
    # match the shape [1] (Triton's identity model takes any shape; kiln's text is [batch])
    assert code == 400
    assert ("nested" in error_of(answer)) is nesting_refused


def test_loading_a_model_is_refused_with_a_json_error(server: tuple[str, str]) -> None:
    # Triton: a huge load request fails with a JSON error; kiln loads nothing at run time
    payload = json.dumps({"parameters": {"file:1/model.onnx": "A" * (1 << 20)}}).encode()
    code, _, answer = exchange(server[0], "POST", "/v2/repository/models/invalid_onnx/load",
                               payload, {"content-type": "application/json"})
    assert code == 400 and "loads every model of its repository at start" in error_of(answer)


# ---- the client examples: simple_http_* and simple_grpc_* -----------------------------------------


def test_simple_http_health_metadata(server: tuple[str, str]) -> None:
    client = httpclient.InferenceServerClient(server[0])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("clf")
    assert client.get_server_metadata()["name"] == "kiln"
    metadata = client.get_model_metadata("clf")
    assert metadata["name"] == "clf" and {i["name"] for i in metadata["inputs"]} >= {"text"}
    assert client.get_model_config("clf")["max_batch_size"] == 2


def test_simple_http_string_infer_and_async_infer(server: tuple[str, str]) -> None:
    client = httpclient.InferenceServerClient(server[0], concurrency=2)
    labels = client.infer("clf", [text_input(TEXTS[0])]).as_numpy("label").tolist()
    # async_infer: sent at once, its result collected later (one at a time: the test server's
    # queue holds one row)
    pending = client.async_infer("clf", [text_input(TEXTS[0])])
    assert pending.get_result().as_numpy("label").tolist() == labels


def test_simple_http_aio_infer(server: tuple[str, str]) -> None:
    async def conversation() -> list[bytes]:
        async with httpaio.InferenceServerClient(server[0]) as client:
            assert await client.is_server_live() and await client.is_model_ready("clf")
            text = httpaio.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([TEXTS[0].encode()], dtype=object))
            result = await client.infer("clf", [text])
            return list(result.as_numpy("label"))

    [label] = asyncio.run(conversation())
    assert label.decode() in {"account", "billing", "shipping", "technical"}


def test_simple_grpc_health_metadata_and_string_infer(server: tuple[str, str]) -> None:
    client = grpcclient.InferenceServerClient(server[1])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("clf")
    assert client.get_model_metadata("clf").name == "clf"
    assert client.get_model_config("clf").config.max_batch_size == 2
    text = grpcclient.InferInput("text", [1, 1], "BYTES")  # Triton's clients' [batch, 1]
    text.set_data_from_numpy(np.array([[TEXTS[0].encode()]], dtype=object))
    result = client.infer("clf", [text])
    assert result.as_numpy("label").shape == (1, 1)
    http_labels = httpclient.InferenceServerClient(server[0]).infer(
        "clf", [text_input(TEXTS[0])]).as_numpy("label").tolist()
    assert result.as_numpy("label")[0].tolist() == http_labels


def test_simple_grpc_aio_infer(server: tuple[str, str]) -> None:
    async def conversation() -> bytes:
        client = grpcaio.InferenceServerClient(server[1])
        try:
            assert await client.is_server_live()
            text = grpcaio.InferInput("text", [1], "BYTES")
            text.set_data_from_numpy(np.array([TEXTS[1].encode()], dtype=object))
            result = await client.infer("clf", [text])
            return bytes(result.as_numpy("label")[0])
        finally:
            await client.close()

    assert asyncio.run(conversation()).decode() in {"account", "billing", "shipping", "technical"}
