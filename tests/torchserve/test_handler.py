"""kiln's handler inside TorchServe's own Python classes, in this process: its model loader on the
unpacked archive, its request decoding and its Context, without the Java frontend."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.errors import RunDirError
from kiln.runtime import load_predictor
from kiln.torchserve import TorchServeArchive
from kiln.torchserve.handler import read_request
from tests.torchserve.conftest import NOT_INSTALLED, extract

pytest.importorskip("ts", reason=NOT_INSTALLED)
from ts.protocol.otf_message_handler import create_predict_response  # noqa: E402
from ts.service import Service  # noqa: E402

JSON, TEXT, BYTES = "application/json", "text/plain", "application/octet-stream"


def run_batch(service: Any, bodies: list[tuple[Any, str]]) -> list[tuple[int, Any]]:
    """One batch through the handler as TorchServe's worker runs it: ``bodies`` are (the value
    TorchServe's decoder hands over, the request's Content-Type); returns (status, answer) each."""
    batch = [{"requestId": f"r{i}".encode(), "parameters": [
        {"name": "body", "contentType": content_type, "value": value}]}
        for i, (value, content_type) in enumerate(bodies)]
    headers, inputs, ids = Service.retrieve_data_for_inference(batch)
    service.context.request_ids, service.context.request_processor = ids, headers
    answers = service._entry_point(inputs, service.context)  # what Service.predict calls
    reply = create_predict_response(answers, ids, "Prediction success", 200, service.context)
    assert reply[:4] == (200).to_bytes(4, "big")  # TorchServe could encode every answer
    return [(service.context.get_response_status(i)[0], json.loads(a))
            for i, a in enumerate(answers)]


def test_a_batch_answers_each_request_and_refuses_bad_ones_alone(
    archive: TorchServeArchive, exported_run: Path, tmp_path: Path,
    load_service: Callable[[Path], Any],
) -> None:
    service = load_service(extract(archive.mar, tmp_path / "model"))
    texts = ["my card was charged twice", "the app crashes on start", "where is my parcel"]
    results = run_batch(service, [
        (texts[0], TEXT),
        (b"\xff\xfe not utf-8", TEXT),  # TorchServe hands over what it cannot decode as bytes
        ({"text": texts[1]}, JSON),
        ({"txt": texts[1]}, JSON),
        (b'{"text": ', JSON),  # JSON that does not parse
        (texts[1:], JSON),
        (["fine", 7], JSON),
        (42, JSON),
        ("   ", TEXT),
        ([], JSON),
        (texts[2].encode(), BYTES),
    ])
    statuses = [status for status, _ in results]
    assert statuses == [200, 400, 200, 400, 400, 200, 400, 400, 400, 400, 200]
    predictor = load_predictor(exported_run, archive.artifact)
    expected = predictor.predict(texts)
    answers = [results[0][1], results[2][1], *results[5][1], results[10][1]]
    assert [a["label"] for a in answers] == [expected.labels[i] for i in (0, 1, 1, 2, 2)]
    for answer, row in zip(answers, expected.probabilities[[0, 1, 1, 2, 2]]):
        assert list(answer["probabilities"]) == predictor.label_names
        np.testing.assert_allclose(list(answer["probabilities"].values()), row, atol=1e-5)
    messages = [answer["message"] for status, answer in results if status == 400]
    assert [m.split(" (")[0].split(":")[0] for m in messages] == [
        "the body is not UTF-8 text", "a JSON object must have the one field 'text', got ['txt']",
        "the body is not valid JSON", "element 1 of the list must be a string, got a JSON number",
        "the body is a JSON number", "the body is blank", "the list of texts is empty"]
    assert all(answer["code"] == 400 for status, answer in results if status == 400)
    assert run_batch(service, [(texts[0], TEXT)])[0][0] == 200  # the handler lives on


def test_a_changed_file_in_the_archive_fails_the_load(
    archive: TorchServeArchive, tmp_path: Path, load_service: Callable[[Path], Any],
) -> None:
    model = extract(archive.mar, tmp_path / "model")
    packaged = json.loads((model / "kiln.json").read_text())
    victim = next(f for f in packaged["files"] if f.startswith("model."))
    data = bytearray((model / victim).read_bytes())
    data[len(data) // 2] ^= 1
    (model / victim).write_bytes(bytes(data))
    with pytest.raises(RunDirError, match=f"{victim} does not match the checksum in kiln.json"):
        load_service(model)


def test_the_handler_file_itself_is_checksummed(
    archive: TorchServeArchive, tmp_path: Path, load_service: Callable[[Path], Any],
) -> None:
    model = extract(archive.mar, tmp_path / "model")
    handler = model / "kiln_handler.py"
    handler.write_text(handler.read_text() + "\n# changed\n")
    with pytest.raises(RunDirError, match="kiln_handler.py does not match the checksum"):
        load_service(model)


@pytest.mark.parametrize(("row", "content_type", "texts"), [
    ({"body": "plain text"}, TEXT, (["plain text"], False)),
    ({"data": b"form field"}, "", (["form field"], False)),
    ({"body": b'["a", "b"]'}, "application/json; charset=utf-8", (["a", "b"], True)),
    ({"body": b'["a", "b"]'}, TEXT, (['["a", "b"]'], False)),  # text/plain is the text itself
    ({"body": "\u00e9t\u00e9"}, JSON, (["\u00e9t\u00e9"], False)),  # a JSON string
])
def test_the_forms_a_request_may_take(row: dict[str, Any], content_type: str,
                                      texts: tuple[list[str], bool]) -> None:
    assert read_request(row, content_type) == texts


@pytest.mark.parametrize(("row", "message"), [
    ({}, "the request has no body"),
    ({"hello there": b""}, "a form with fields ['hello there']"),
    ({"body": "\ud800"}, "lone surrogate"),
    ({"body": {"text": None}}, "'text' must be a string, got a JSON null"),
    ({"body": True}, "the body is a JSON boolean"),
])
def test_bad_requests_say_what_to_send(row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        read_request(row, JSON)
