"""kiln's TorchServe handler: text in, label and probabilities out as JSON, one answer for each
request of the batch TorchServe forms.

`kiln torchserve` copies this file into the model archive as ``kiln_handler.py``; TorchServe
imports it in its Python worker (the Python that runs ``torchserve``), so kiln must be installed
there. The model runs through kiln's runtime (``load_predictor``), so any artifact kiln serves
works, ONNX Runtime and OpenVINO as well as torch; its files are checked against the checksums
in the archive's ``kiln.json`` first, and a mismatch fails the model's load.

A request's body is the text itself (``text/plain``), a JSON object ``{"text": "..."}`` or a JSON
list of texts; the answer is ``{"label": ..., "probabilities": {label: p}}`` (a list of them for
a list). Any other request gets 400 and a JSON message, alone: the other requests of its batch
are answered, and the worker lives on.

TorchServe takes the one class this file defines as the handler (its loader refuses a file with
two), so a request is a plain tuple and a bad one a ValueError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.errors import shorten_list
from kiln.models import read_manifest
from kiln.runtime import Predictor, load_predictor

if TYPE_CHECKING:
    from ts.context import Context

logger = logging.getLogger(__name__)

BAD_REQUEST = 400
JSON = "application/json"
BODY_NAMES = ("data", "body")  # TorchServe's name for a raw body, and a form's usual field
USAGE = ('send the text as the body (Content-Type: text/plain), or JSON {"text": "..."} or a '
         'JSON list of texts (Content-Type: application/json)')
Request = tuple[list[str], bool]  # its texts; whether they came as a list (answered as one)


class KilnHandler:
    """TorchServe's custom handler protocol: ``initialize(context)`` once in each worker, then
    ``handle(data, context)`` for each batch of requests."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.rows_per_run = 1  # texts per model call: the model's batchSize

    def initialize(self, context: Context) -> None:
        """Load the archive's artifact (``torchserve.artifact`` in its kiln.json) through kiln's
        runtime, after checking every file against its checksum.

        Raises:
            RunDirError: a file is missing or changed (TorchServe fails the model's load), the
                artifact's runtime is not installed in this Python, or kiln.json is not kiln's.
        """
        folder = Path(context.system_properties["model_dir"])
        artifact = read_manifest(folder).get("torchserve", {}).get("artifact")
        # idle inference threads sleep: TorchServe's frontend needs the CPU between batches
        self.predictor = load_predictor(folder, artifact, spin_wait=False)
        self.rows_per_run = max(1, int(context.system_properties.get("batch_size") or 1))
        self.predictor.predict(["warm up"])  # so the first request does not pay for lazy set-up
        logger.info("kiln: serving artifact %s from %s", artifact, folder)

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[str]:
        """One JSON answer for each request of ``data``, in order; a bad request gets status
        400 and ``{"code": 400, "type": "BadRequest", "message": ...}``."""
        requests: list[Request | str] = []  # a request, or why it is refused
        for idx, row in enumerate(data):
            try:
                requests.append(read_request(row, content_type(context, idx)))
            except ValueError as exc:
                requests.append(str(exc))
        answers = iter(self.predict([t for r in requests if not isinstance(r, str) for t in r[0]]))
        out = []
        for idx, request in enumerate(requests):
            context.set_response_content_type(idx, JSON)
            if isinstance(request, str):
                # the message goes in the body: a reason phrase cannot carry any text safely
                context.set_response_status(BAD_REQUEST, "Bad Request", idx)
                out.append(json.dumps({"code": BAD_REQUEST, "type": "BadRequest",
                                       "message": request}))
                continue
            texts, as_list = request
            mine = [next(answers) for _ in texts]
            out.append(json.dumps(mine if as_list else mine[0]))
        return out

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Label and probabilities of each text, run ``rows_per_run`` texts at a time."""
        if self.predictor is None:
            raise RuntimeError("KilnHandler.predict before initialize")
        names = self.predictor.label_names
        answers: list[dict[str, Any]] = []
        for start in range(0, len(texts), self.rows_per_run):
            predictions = self.predictor.predict(texts[start:start + self.rows_per_run])
            answers.extend({"label": label, "probabilities": dict(zip(names, map(float, row)))}
                           for label, row in zip(predictions.labels, predictions.probabilities))
        return answers


def read_request(row: Mapping[str, Any], content_type: str = "") -> Request:
    """The texts of one request as TorchServe hands it over: ``row["body"]`` is str for a
    ``text/*`` body that is UTF-8, parsed JSON for ``application/json`` that parses, else bytes.

    Raises:
        ValueError: not one of the forms the handler takes, a blank text or one that is not text;
            the message says what to send.
    """
    name = next((n for n in BODY_NAMES if n in row), None)
    if name is None:  # a form body (curl -d's default) arrives as its fields
        fields = f" (a form with fields {shorten_list(sorted(row), 5)})" if row else ""
        raise ValueError(f"the request has no body{fields}: {USAGE}")
    value = row[name]
    if isinstance(value, (bytes, bytearray)):
        value = decode_body(bytes(value), content_type)
    if isinstance(value, str):
        return [checked_text(value, "the body")], False
    if isinstance(value, dict):
        if set(value) != {"text"}:
            raise ValueError(f"a JSON object must have the one field 'text', got "
                             f"{shorten_list(sorted(value), 5)}: {USAGE}")
        return [checked_text(value["text"], "'text'")], False
    if isinstance(value, list):
        if not value:
            raise ValueError(f"the list of texts is empty: {USAGE}")
        return [checked_text(v, f"element {i} of the list") for i, v in enumerate(value)], True
    raise ValueError(f"the body is a JSON {json_type(value)}: {USAGE}")


def decode_body(body: bytes, content_type: str) -> Any:
    """A body TorchServe left as bytes: the text, or the JSON value for a JSON content type.

    Raises:
        ValueError: not UTF-8, or a JSON content type and not valid JSON.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the body is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    media = content_type.split(";")[0].strip().lower()
    if media == JSON or media.endswith("+json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the body is not valid JSON ({exc}): {USAGE}") from None
    return text


def checked_text(value: Any, where: str) -> str:
    """``value`` if it is a non-blank string UTF-8 can encode.

    Raises:
        ValueError: naming ``where`` and what is wrong.
    """
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got a JSON {json_type(value)}")
    if not value.strip():
        raise ValueError(f"{where} is blank: send the text to classify")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} holds a lone surrogate, which is not text") from None
    return value


def content_type(context: Context, idx: int) -> str:
    """The Content-Type of request ``idx``'s body as TorchServe recorded it, or ''."""
    for name in BODY_NAMES:
        part = context.get_request_header(idx, name)
        if isinstance(part, dict):
            return str(part.get("content-type") or "")
    return ""


def json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", type(None): "null",
             dict: "object", list: "array", str: "string"}
    return names.get(type(value), type(value).__name__)
