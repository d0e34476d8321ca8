"""The Open Inference Protocol (KServe v2) REST request and response bodies, JSON and binary, with
the Triton extensions kiln speaks in them: binary tensor data (raw binary requests included) and
classification.

This module reads and writes the wire: the JSON (UTF-8, depth, NaN), the binary extension's header
length and chunks, JSON values as tensors. What the tensors, outputs and parameters must then be is
`kiln.serve.tensors`' (shared with gRPC), whose names are re-exported here. A request is checked in
full before it joins a batch; each refusal is a `ProtocolError` (400) that names the input and,
where it helps, the element.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
from typing import Any

import numpy as np

from kiln.serve.tensors import (
    INPUTS,
    INT64_MAX,
    OUTPUTS,
    InferRequest,
    ProtocolError,
    decode_bytes,
    encode_bytes,
    input_shape,
    input_specs,
    input_texts,
    output_tensor,
    parameters_of,
    request_timeout_s,
    requested_outputs,
    short_repr,
    token_rows,
    top_classes,
)

# this module's own, and the names other code imports from it (their home is `tensors`)
__all__ = ["MAX_DEPTH", "OUTPUTS", "InferRequest", "ProtocolError", "build_infer_response",
           "parse_index_request", "parse_infer_request", "top_classes"]

MAX_DEPTH = 100  # levels of JSON nesting a request may use (Triton's limit)


def parse_infer_request(body: bytes, header_length: str | None, max_length: int, *,
                        vocabulary: int | None = None, classes: int | None = None) -> InferRequest:
    """Decode and check a JSON (or binary-extension) infer request.

    The JSON must be UTF-8, at most `MAX_DEPTH` levels deep, without NaN or Infinity; ``null``
    stands for an absent field. It holds:

    - ``inputs``: ``text`` (BYTES, shape [batch] or [batch, 1], non-blank text), or
      ``input_ids`` and ``attention_mask`` (INT64, one shape [batch, sequence] with
      1 <= sequence <= ``max_length``; ids 0 .. ``vocabulary`` - 1, mask values 0 or 1); each
      input once. ``data`` is flat (row-major) or nested exactly as ``shape``, and holds exactly
      as many values as the shape (JSON strings for BYTES, JSON integers for INT64). A batch of
      0 rows is refused ("the batch is empty"): there is nothing to run.
    - binary data (``parameters.binary_data_size`` instead of ``data``, after a JSON header of
      ``header_length`` bytes): the inputs' chunks follow each other in input order and cover the
      rest of the body exactly (trailing bytes are refused: they mean the sizes are wrong). INT64
      chunks are whole 8-byte little-endian values; a BYTES chunk is elements of a 4-byte
      little-endian length and that many bytes, the last ending at the chunk's end. BYTES
      elements must be valid UTF-8 (the protocol's BYTES are raw bytes, but this model reads
      text: replacing bad bytes would answer for a text the client never sent).
    - a raw binary request (``header_length`` 0, Triton's binary extension): the whole body is
      one text, as UTF-8 bytes (no length prefix: Triton adds it itself for a BYTES raw input);
      a batch of one, every output answered, all of them as binary data.
    - optional ``id`` (a string), ``outputs`` (objects with distinct known names, a boolean
      ``binary_data`` and ``classification``; [] means all), ``parameters`` (an object wherever
      it appears, with string, number or boolean values; shared memory is refused),
      ``parameters.timeout`` (microseconds, Triton's unit: a number from 0 to 2^64 - 1; 0 is no
      timeout of the request's own, so the server's) and ``parameters.binary_data_output`` (a
      boolean: every output binary unless its own ``binary_data`` says otherwise).
    - ``classification: K`` on ``logits`` or ``probabilities`` (1 <= K <= ``classes``; 0 is the
      plain tensor, as in Triton): the output answers the top K classes of each row instead.

    Args:
        vocabulary: token ids must be below it (None: only checked to be >= 0).
        classes: how many classes the model has: the most a classification may ask for (None:
            not checked).

    Raises:
        ProtocolError: the first rule the request breaks, naming the input (and element).
    """
    json_part, binary = _split(body, header_length)
    if json_part is None:
        return _raw_request(binary)
    req = _load_json(json_part)
    if not isinstance(req, dict):
        raise ProtocolError("request must be a JSON object with a non-empty 'inputs' list")
    chunks = _BinaryChunks(binary, header_length is not None)
    specs = input_specs(req.get("inputs"))
    # in input order: that is the order of the inputs' binary chunks
    tensors = {spec["name"]: _decode_input(spec, chunks) for spec in specs}
    chunks.check_all_taken()
    texts, rows = tensors.get("text"), None
    if texts is None:
        rows = token_rows(tensors["input_ids"], tensors["attention_mask"], max_length, vocabulary)
    params = parameters_of(req, "request")
    outputs = requested_outputs(req.get("outputs"), _binary_data_output(params), classes)
    return InferRequest(id=_request_id(req.get("id")), texts=texts, input_ids=rows,
                        outputs=outputs.names, binary_outputs=outputs.binary,
                        timeout_s=request_timeout_s(params), classification=outputs.classification,
                        column=any(spec["name"] == "text" and len(spec["shape"]) == 2
                                   for spec in specs))


def build_infer_response(
    model: str, version: str, request: InferRequest, logits: list[list[float]],
    probabilities: list[list[float]], labels: list[str], label_names: list[str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers (binary extension when any output asked for it).

    Plain Python lists in, no numpy: this runs on the event loop, where a numpy call that drops
    the GIL lets the inference thread take it for a whole switch interval.

    Args:
        label_names: the model's classes, in output order, for the classification strings
            (None: the strings carry no label, "value:index").
    """
    outputs, chunks = [], []
    for name in request.outputs:
        dtype, shape, flat = output_tensor(name, request, logits, probabilities, labels,
                                            label_names or [])
        entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": shape}
        if name in request.binary_outputs:
            raw = encode_bytes(flat) if dtype == "BYTES" else struct.pack(f"<{len(flat)}f", *flat)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = flat
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    head = json.dumps(body).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {"inference-header-content-length": str(len(head)),
                                     "content-type": "application/octet-stream"}


def _split(body: bytes, header_length: str | None) -> tuple[bytes | None, bytes]:
    """The JSON header and the binary data after it (no header: a raw binary request)."""
    if header_length is None:
        return body, b""
    digits = header_length.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise ProtocolError("Inference-Header-Content-Length must be a non-negative integer, got "
                            f"{short_repr(header_length)}")
    n = int(digits) if len(digits) < 20 else len(body) + 1  # more digits: past any body
    if n > len(body):
        shown = digits if len(digits) < 20 else f"{digits[:16]}..."
        raise ProtocolError(f"Inference-Header-Content-Length {shown} exceeds the body "
                            f"({len(body)} bytes)")
    if n == 0:  # the binary extension's raw binary request: no JSON at all
        return None, body
    return body[:n], body[n:]


def _raw_request(body: bytes) -> InferRequest:
    """A raw binary request: ``body`` is one text (UTF-8), every output is answered in binary."""
    if not body:
        raise ProtocolError("raw binary request (Inference-Header-Content-Length: 0) with an "
                            "empty body: send the text to classify as the body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"raw binary request: the body is not valid UTF-8 ({exc.reason} at "
                            f"byte {exc.start}); it must be the text to classify") from None
    return InferRequest(id=None, texts=input_texts("text", [text]), input_ids=None,
                        outputs=list(OUTPUTS), binary_outputs=set(OUTPUTS), timeout_s=None,
                        column=True)  # Triton's raw input is the model's dims [1]: [1, 1]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


# NaN and Infinity are Python's extensions of JSON: refused like any other invalid JSON
_JSON = json.JSONDecoder(parse_constant=_refuse_constant)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _load_json(text: bytes) -> Any:
    try:
        value = _JSON.decode(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"request body is not valid JSON: not UTF-8 ({exc.reason} at byte "
                            f"{exc.start})") from None
    except RecursionError:  # ~1000 levels: the parser gave up before `_check_depth` could look
        raise ProtocolError(f"request JSON is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers of over 4300 digits
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    _check_depth(text)
    return value


def _check_depth(text: bytes) -> None:
    """Refuse valid JSON nested more than `MAX_DEPTH` levels (brackets in strings not counted)."""
    if text.count(b"[") + text.count(b"{") <= MAX_DEPTH:  # nearly every request: no scan
        return
    brackets = np.frombuffer(_STRING.sub(b"", text).translate(None, _NOT_BRACKET), np.uint8)
    opening = (brackets == ord("[")) | (brackets == ord("{"))
    if np.cumsum(np.where(opening, 1, -1)).max() > MAX_DEPTH:
        raise ProtocolError(f"request JSON is nested more than {MAX_DEPTH} levels deep")


def _decode_input(spec: dict[str, Any], chunks: _BinaryChunks) -> Any:
    """An input's values, checked: a list of texts (BYTES) or an int64 array of its shape."""
    name, dtype = spec["name"], INPUTS[spec["name"]]
    if spec.get("datatype") != dtype:
        raise ProtocolError(f"input '{name}' must have datatype {dtype}, got "
                            f"{short_repr(spec.get('datatype'))}")
    shape = input_shape(name, spec.get("shape"))
    size = parameters_of(spec, f"input '{name}'").get("binary_data_size")
    values: Any
    if size is not None:
        if spec.get("data") is not None:
            raise ProtocolError(f"input '{name}' has both 'data' and binary_data_size; give one")
        raw = chunks.take(name, size)
        values = decode_bytes(name, raw) if dtype == "BYTES" else _binary_int64(name, raw)
    elif isinstance(spec.get("data"), list):
        values = _flatten(name, spec["data"], shape)
    else:
        raise ProtocolError(f"input '{name}' has no 'data' (or binary_data_size)")
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(f"input '{name}': shape {shape} needs {count} values, got "
                            f"{len(values)}")
    if dtype == "BYTES":
        return input_texts(name, values)
    return _int64(name, values).reshape(shape)


def _flatten(name: str, data: list[Any], shape: list[int]) -> list[Any]:
    """``data``'s values in row-major order: ``data`` is flat, or nested exactly as ``shape``."""
    if len(shape) < 2 or not data or type(data[0]) is not list:
        return data  # flat: the caller checks the count and the values' types
    level = data  # every node at one depth, left to right (C-speed steps, no Python loop)
    if len(level) != shape[0]:
        raise ProtocolError(f"input '{name}': data must be flat or nested as shape {shape}")
    for dim in shape[1:]:
        if set(map(type, level)) != {list} or set(map(len, level)) != {dim}:
            raise ProtocolError(f"input '{name}': data must be flat or nested as shape {shape}")
        level = list(itertools.chain.from_iterable(level))
    return level


def _int64(name: str, values: list[Any] | np.ndarray) -> np.ndarray:
    """``values`` as int64 if each is a JSON integer (not a float or a boolean) in INT64 range."""
    if isinstance(values, np.ndarray):
        return values  # binary data: int64 by construction
    if set(map(type, values)) != {int}:
        i = next(i for i, v in enumerate(values) if type(v) is not int)
        raise ProtocolError(f"input '{name}' must hold integers; element {i} is "
                            f"{short_repr(values[i])}")
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        i = next(i for i, v in enumerate(values) if not -INT64_MAX - 1 <= v <= INT64_MAX)
        raise ProtocolError(f"input '{name}': element {i} ({short_repr(values[i])}) is outside "
                            "the INT64 range") from None


class _BinaryChunks:
    """The binary data after the JSON header, taken by the inputs in their order."""

    def __init__(self, data: bytes, announced: bool) -> None:
        self.data, self.taken, self.announced = data, 0, announced

    def take(self, name: str, size: Any) -> bytes:
        """The next ``size`` bytes, for input ``name``."""
        if type(size) is not int or size < 0:
            raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative "
                                f"integer, got {short_repr(size)}")
        left = len(self.data) - self.taken
        if size > left:
            hint = "" if self.announced else " (no Inference-Header-Content-Length header)"
            raise ProtocolError(f"input '{name}': binary_data_size {size} runs past the end of "
                                f"the body ({left} bytes of binary data left){hint}")
        self.taken += size
        return self.data[self.taken - size:self.taken]

    def check_all_taken(self) -> None:
        unused = len(self.data) - self.taken
        if unused:
            raise ProtocolError(f"{unused} bytes after the JSON header belong to no input: the "
                                "inputs' binary_data_size must add up to the binary data")


def _binary_int64(name: str, raw: bytes) -> np.ndarray:
    if len(raw) % 8:
        raise ProtocolError(f"input '{name}': binary_data_size {len(raw)} is not a whole number "
                            "of 8-byte INT64 values")
    return np.frombuffer(raw, dtype="<i8").astype(np.int64, copy=False)


def _binary_data_output(params: dict[str, Any]) -> bool:
    """The request's parameters.binary_data_output: every output binary unless it says not."""
    flag = params.get("binary_data_output")
    if flag is not None and type(flag) is not bool:
        raise ProtocolError("parameters.binary_data_output must be true or false, got "
                            f"{short_repr(flag)}")
    return flag is True


def parse_index_request(body: bytes) -> bool:
    """Whether a repository index request asks for the ready models only: its body is empty, or
    a JSON object with an optional boolean ``ready``.

    Raises:
        ProtocolError: any other body.
    """
    if not body.strip():
        return False
    req = _load_json(body)
    if not isinstance(req, dict):
        raise ProtocolError("a repository index request must be empty or a JSON object such as "
                            f"{{\"ready\": true}}, got {short_repr(req)}")
    ready = req.get("ready")
    if ready is not None and type(ready) is not bool:
        raise ProtocolError(f"'ready' must be true or false, got {short_repr(ready)}")
    return ready is True


def _request_id(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"'id' must be a string, got {short_repr(value)}")
    return value
