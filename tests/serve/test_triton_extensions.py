"""The Triton extensions of `kiln serve`'s REST side, as a client sees them: the real
``tritonclient.http`` against a real server where the client has a call for it (health, model
configuration, statistics, repository index, classification, binary outputs, timeout,
compression), plain HTTP for the rest (raw binary requests, response bodies), and the not-ready
answers in process."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.serve.app import EXTENSIONS, RestAdapter
from kiln.serve.asgi import HttpRequest, Message, Reply
from kiln.serve.core import InferenceCore
from tests.serve.test_server import TEXTS, start_server

LABELS = {"account", "billing", "shipping", "technical"}


@pytest.fixture(scope="module")
def server(exported_run: Path) -> Iterator[str]:
    proc, url = start_server(exported_run, dict(os.environ, OMP_NUM_THREADS="1"), "--threads", "1")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url=server)


def exchange(url: str, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-case headers, body as sent) of one plain HTTP request."""
    connection = http.client.HTTPConnection(url, timeout=30)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        connection.close()


def text_input(*texts: str) -> httpclient.InferInput:
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return text


def json_request(*texts: str, **fields: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                                   "data": list(texts)}], **fields}).encode()


# ---- health, metadata, configuration, repository ---------------------------------------------


@pytest.mark.parametrize(("path", "status", "body"), [
    ("/v2/health/live", 200, {"live": True}),
    ("/v2/health/ready", 200, {"ready": True}),
    ("/v2/models/clf/ready", 200, {"name": "clf", "ready": True}),
    ("/v2/models/clf/versions/1/ready", 200, {"name": "clf", "ready": True}),
])
def test_health_answers_have_json_bodies(server: str, path: str, status: int,
                                         body: dict[str, Any]) -> None:
    code, headers, answer = exchange(server, "GET", path)
    assert (code, json.loads(answer)) == (status, body)
    assert headers["content-type"] == "application/json"


def test_health_through_the_triton_client(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("clf")
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("path", ["/v2/models/nope/ready", "/v2/models/clf/versions/9/ready",
                                  "/v2/models/nope/config"])
def test_unknown_models_and_versions_stay_404(server: str, path: str) -> None:
    code, _, answer = exchange(server, "GET", path)
    assert code == 404 and "error" in json.loads(answer)


def test_server_metadata_lists_exactly_the_extensions_that_work(
        client: httpclient.InferenceServerClient) -> None:
    assert client.get_server_metadata()["extensions"] == list(EXTENSIONS)
    assert "model_repository" not in EXTENSIONS  # only its index works


def test_model_configuration_is_what_get_model_config_reads(
        client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("clf")
    assert config["name"] == "clf" and config["max_batch_size"] > 0
    assert {i["name"] for i in config["input"]} == {"text", "input_ids", "attention_mask"}
    assert [o["name"] for o in config["output"]] == ["logits", "probabilities", "label"]
    assert client.get_model_config("clf", "1") == config


def test_repository_index_lists_the_served_versions(
        server: str, client: httpclient.InferenceServerClient) -> None:
    index = [{"name": "clf", "version": "1", "state": "READY"}]
    assert client.get_model_repository_index() == index
    for body in (b"{}", b'{"ready": true}', b'{"ready": false}'):
        code, _, answer = exchange(server, "POST", "/v2/repository/index", body)
        assert (code, json.loads(answer)) == (200, index)
    code, _, answer = exchange(server, "POST", "/v2/repository/index", b'{"ready": 1}')
    assert code == 400 and "'ready' must be true or false" in json.loads(answer)["error"]


def test_load_and_unload_are_refused_saying_models_are_fixed_at_start(
        client: httpclient.InferenceServerClient) -> None:
    for control in (client.load_model, client.unload_model):
        with pytest.raises(InferenceServerException, match="loads every model of its repository "
                                                           "at start"):
            control("clf")
    assert client.is_model_ready("clf")


def test_statistics_count_what_was_served(server: str,
                                          client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("clf")["model_stats"][0]["inference_count"]
    client.infer("clf", [text_input(*TEXTS)])
    (stats,) = client.get_inference_statistics("clf", "1")["model_stats"]
    assert (stats["name"], stats["version"]) == ("clf", "1")
    assert stats["inference_count"] == before + 2  # rows, as Triton counts them
    assert client.get_inference_statistics()["model_stats"] == [stats]  # every model
    code, _, _ = exchange(server, "GET", "/v2/models/nope/stats")
    assert code == 404


# ---- inference: classification, binary outputs, timeout ----------------------------------------


def test_classification_answers_the_top_k_classes_per_row(
        client: httpclient.InferenceServerClient) -> None:
    plain = client.infer("clf", [text_input(*TEXTS)])
    probabilities, labels = plain.as_numpy("probabilities"), plain.as_numpy("label")
    result = client.infer("clf", [text_input(*TEXTS)], outputs=[
        httpclient.InferRequestedOutput("probabilities", class_count=2),  # binary
        httpclient.InferRequestedOutput("logits", binary_data=False, class_count=4)])
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 2) and result.as_numpy("logits").shape == (2, 4)
    for row, classes in enumerate(top):
        value, index, label = classes[0].decode().split(":")
        assert label == labels[row].decode() and label in LABELS
        assert int(index) == probabilities[row].argmax()
        assert float(value) == pytest.approx(probabilities[row].max(), abs=1e-6)
    too_many = httpclient.InferRequestedOutput("probabilities", class_count=5)
    with pytest.raises(InferenceServerException, match="asks for more classes than the model"):
        client.infer("clf", [text_input(TEXTS[0])], outputs=[too_many])


def test_binary_data_output_makes_every_output_binary(server: str) -> None:
    # as tritonclient asks when no output is named
    code, headers, body = exchange(server, "POST", "/v2/models/clf/infer", json_request(
        *TEXTS, parameters={"binary_data_output": True}, outputs=[
            {"name": "label"}, {"name": "logits", "parameters": {"binary_data": False}}]))
    assert code == 200
    head = int(headers["inference-header-content-length"])
    result = httpclient.InferResult.from_response_body(body, header_length=head)
    label, logits = result.get_response()["outputs"]
    assert "binary_data_size" in label["parameters"] and len(logits["data"]) == 8
    assert {x.decode() for x in result.as_numpy("label")} <= LABELS


def test_timeout_is_in_microseconds_as_tritonclient_sends_it(
        client: httpclient.InferenceServerClient) -> None:
    answer = client.infer("clf", [text_input(TEXTS[0])], timeout=30_000_000)  # 30 s
    assert answer.as_numpy("label")[0].decode() in LABELS
    with pytest.raises(InferenceServerException, match="timed out|server busy"):
        client.infer("clf", [text_input(TEXTS[0])], timeout=1)  # 1 us: no model is that fast


# ---- compression ---------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_requests_and_answers_through_the_triton_client(
        client: httpclient.InferenceServerClient, coding: str) -> None:
    plain = client.infer("clf", [text_input(*TEXTS)]).as_numpy("probabilities")
    compressed = client.infer("clf", [text_input(*TEXTS)], request_compression_algorithm=coding,
                              response_compression_algorithm=coding)
    np.testing.assert_allclose(compressed.as_numpy("probabilities"), plain, rtol=1e-6)


@pytest.mark.parametrize(("coding", "decompress"), [("gzip", gzip.decompress),
                                                    ("deflate", zlib.decompress)])
def test_answers_say_their_content_encoding(server: str, coding: str, decompress: Any) -> None:
    code, headers, body = exchange(server, "POST", "/v2/models/clf/infer", json_request(*TEXTS),
                                   {"accept-encoding": f"br;q=1, {coding};q=0.9"})
    assert code == 200 and headers["content-encoding"] == coding
    assert len(json.loads(decompress(body))["outputs"]) == 3


def test_a_zip_bomb_gets_413_and_a_broken_body_400(server: str) -> None:
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join(stream.compress(zeros) for _ in range(64)) + stream.flush()  # 64 MiB
    code, _, answer = exchange(server, "POST", "/v2/models/clf/infer", bomb,
                               {"content-encoding": "gzip"})
    assert code == 413 and "decompresses to more than" in json.loads(answer)["error"]
    code, _, answer = exchange(server, "POST", "/v2/models/clf/infer", b"\x1f\x8b junk",
                               {"content-encoding": "gzip"})
    assert code == 400 and "not valid gzip data" in json.loads(answer)["error"]
    code, headers, _ = exchange(server, "POST", "/v2/models/clf/infer", b"x",
                                {"content-encoding": "br"})
    assert code == 415 and headers["accept-encoding"] == "gzip, deflate"


# ---- raw binary requests -------------------------------------------------------------------------


def test_a_raw_binary_request_is_one_text_answered_in_binary(
        server: str, client: httpclient.InferenceServerClient) -> None:
    text = "naïve café: where is my parcel"
    code, headers, body = exchange(server, "POST", "/v2/models/clf/infer", text.encode(), {
        "content-type": "application/octet-stream", "inference-header-content-length": "0"})
    assert code == 200 and headers["content-type"] == "application/octet-stream"
    result = httpclient.InferResult.from_response_body(
        body, header_length=int(headers["inference-header-content-length"]))
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    expected = client.infer("clf", [text_input(text)])
    # a batch of one of the model's dims [1] input, as Triton reads a raw request: [1, 1]
    assert result.as_numpy("label").tolist() == [expected.as_numpy("label").tolist()]
    assert result.as_numpy("logits").shape == (1, 4)
    code, _, answer = exchange(server, "POST", "/v2/models/clf/infer", b"caf\xe9",
                               {"inference-header-content-length": "0"})
    assert code == 400 and "not valid UTF-8" in json.loads(answer)["error"]


# ---- before the models are loaded (in process, no model needed) ---------------------------------


def call(handler: Any, path: str, params: dict[str, str], body: bytes = b"") -> Reply:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return asyncio.run(handler(HttpRequest("GET", path, params, {}, receive)))


def test_while_loading_readiness_says_false_with_503(tmp_path: Path) -> None:
    adapter = RestAdapter(InferenceCore({"clf": {"1": tmp_path}}))  # not started: loading
    ready = call(adapter.server_ready, "/v2/health/ready", {})
    assert (ready.status, json.loads(ready.body)) == (503, {"ready": False})
    live = call(adapter.live, "/v2/health/live", {})
    assert (live.status, json.loads(live.body)) == (200, {"live": True})
    model = call(adapter.model_ready, "/v2/models/clf/ready", {"model": "clf"})
    assert (model.status, json.loads(model.body)) == (503, {"name": "clf", "ready": False})
    index = call(adapter.repository_index, "/v2/repository/index", {})
    assert json.loads(index.body) == [{"name": "clf", "version": "1", "state": "UNAVAILABLE",
                                       "reason": "loading"}]
    assert json.loads(call(adapter.repository_index, "/v2/repository/index", {},
                           b'{"ready": true}').body) == []

