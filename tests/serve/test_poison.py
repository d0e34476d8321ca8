"""One poisoned request among many concurrent good ones fails alone: the others, batched with it,
get their right answers (on ONNX Runtime and OpenVINO artifacts; text, token-id and binary)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.extras import installed
from kiln.runtime import load_predictor
from kiln.serve.app import build_app
from kiln.serve.repository import discover_models
from kiln.serve.settings import ServeSettings
from tests.serve.test_fuzz import INFER, Client

pytestmark = pytest.mark.slow

TEXTS = ["my parcel has not arrived yet", "i need to change my password",
         "why was i charged twice", "the app keeps crashing after the update"]
ARTIFACTS = ["onnx-int8-dynamic", *(["openvino-int8"] if installed("openvino") else [])]
JSON = [(b"content-type", b"application/json")]


def text_request(text: str) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "data": [text]}]}).encode()


def ids_request(ids: list[int]) -> bytes:
    return json.dumps({"inputs": [
        {"name": "input_ids", "shape": [1, len(ids)], "datatype": "INT64", "data": ids},
        {"name": "attention_mask", "shape": [1, len(ids)], "datatype": "INT64",
         "data": [1] * len(ids)}]}).encode()


def binary_text_request(raw: bytes, declared: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    chunk = struct.pack("<I", declared) + raw
    head = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(chunk)}}]}).encode()
    return head + chunk, [(b"inference-header-content-length", str(len(head)).encode())]


POISONS = {
    "lone surrogate text": (b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES",'
                            b'"data":["\\ud800"]}]}', JSON),
    "token id past the vocabulary": (ids_request([2, 1_000_000, 3]), JSON),
    "binary length prefix past the data": binary_text_request(b"abc", 2**31),
    "binary invalid utf-8": binary_text_request(b"\xff\xfe", 2),
}


@pytest.fixture(scope="module", params=ARTIFACTS)
def client(request: pytest.FixtureRequest, exported_run: Path) -> Iterator[tuple[Client, str]]:
    app = build_app(discover_models(exported_run, "clf"),
                    ServeSettings(threads=1, max_queue_delay_ms=5.0, artifact=request.param))
    running = Client(app)
    running.start()
    yield running, request.param
    running.stop()


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_a_poisoned_request_fails_alone(client: tuple[Client, str], exported_run: Path,
                                        poison: str) -> None:
    running, artifact = client
    predictor = load_predictor(exported_run, artifact, allow_failed=True)
    expected = dict(zip(TEXTS, predictor.predict(TEXTS).labels))
    ids = [e.ids for e in predictor.tokenizer.encode_batch(TEXTS)]
    good = [(INFER, text_request(t), JSON) for t in TEXTS] * 25 + [
        (INFER, ids_request(i), JSON) for i in ids] * 25  # 200 requests, texts and token ids
    body, headers = POISONS[poison]
    answers = running.run(*good[:100], (INFER, body, headers), *good[100:])
    bad = answers.pop(100)
    assert bad.status == 400 and "error" in bad.json()
    assert [a.status for a in answers] == [200] * len(good)  # no collateral failure
    labels = [next(o for o in a.json()["outputs"] if o["name"] == "label")["data"][0]
              for a in answers]
    assert labels == [expected[t] for t in TEXTS] * 50
