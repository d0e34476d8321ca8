"""The Open Inference Protocol (KServe v2) request and response bodies, JSON and binary."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.serve.errors import ServeError

OUTPUTS = ("logits", "probabilities", "label")
DTYPES = {"logits": "FP32", "probabilities": "FP32", "label": "BYTES"}


class ProtocolError(ServeError):
    """A request body the Open Inference Protocol does not allow (400 unless said otherwise)."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    texts: list[str] | None  # BYTES input "text"
    input_ids: list[list[int]] | None  # INT64 inputs, unpadded rows
    outputs: list[str]
    binary_outputs: set[str]
    timeout_s: float | None


def parse_infer_request(body: bytes, header_length: str | None, max_length: int) -> InferRequest:
    """Decode a JSON (or binary-extension) infer request.

    Raises:
        ProtocolError: malformed JSON, unknown tensor names, wrong shapes or dtypes, over-long rows.
    """
    json_part, binary = _split(body, header_length)
    try:
        req = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise ProtocolError("request must be a JSON object with a non-empty 'inputs' list")
    tensors: dict[str, np.ndarray | list[str]] = {}
    offset = 0
    for spec in req["inputs"]:
        name, value, offset = _decode_input(spec, binary, offset)
        tensors[name] = value
    unknown = set(tensors) - {"text", "input_ids", "attention_mask"}
    if unknown:
        raise ProtocolError(f"unknown input(s) {sorted(unknown)}; this model takes 'text' (BYTES) "
                            "or 'input_ids' and 'attention_mask' (INT64)")
    texts, rows = None, None
    if "text" in tensors:
        texts = list(tensors["text"])
    elif "input_ids" in tensors and "attention_mask" in tensors:
        rows = _token_rows(tensors["input_ids"], tensors["attention_mask"], max_length)
    else:
        raise ProtocolError("give 'text' or both 'input_ids' and 'attention_mask'")
    outputs, binary_outputs = _requested_outputs(req.get("outputs"))
    params = req.get("parameters") or {}
    timeout = params.get("timeout") if isinstance(params, dict) else None
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ProtocolError("parameters.timeout must be a positive number of seconds")
    return InferRequest(id=req.get("id"), texts=texts, input_ids=rows, outputs=outputs,
                        binary_outputs=binary_outputs, timeout_s=timeout)


def _token_rows(input_ids: Any, attention_mask: Any, max_length: int) -> list[list[int]]:
    """The unpadded rows of token ids (the ids where the mask is not 0; [0] for an empty row)."""
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ProtocolError(f"input_ids {list(ids.shape)} and attention_mask "
                            f"{list(mask.shape)} must both be [batch, sequence]")
    if ids.shape[1] > max_length:
        raise ProtocolError(f"input_ids has {ids.shape[1]} tokens; the model takes at most "
                            f"{max_length}", status=400)
    return [ids[i][mask[i] != 0].tolist() or [0] for i in range(ids.shape[0])]


def build_infer_response(
    model: str, version: str, request: InferRequest, logits: list[list[float]],
    probabilities: list[list[float]], labels: list[str],
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers (binary extension when any output asked for it).

    Plain Python lists in, no numpy: this runs on the event loop, where a numpy call that drops
    the GIL lets the inference thread take it for a whole switch interval.
    """
    rows = len(labels)
    outputs, chunks = [], []
    for name in request.outputs:
        entry: dict[str, Any] = {"name": name, "datatype": DTYPES[name]}
        flat: list[Any]
        if name == "label":
            entry["shape"], flat = [rows], labels
        else:
            matrix = logits if name == "logits" else probabilities
            entry["shape"] = [rows, len(matrix[0]) if matrix else 0]
            flat = [x for row in matrix for x in row]
        if name in request.binary_outputs:
            raw = _encode_bytes(labels) if name == "label" else struct.pack(f"<{len(flat)}f", *flat)
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


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError("Inference-Header-Content-Length must be an integer") from None
    if not 0 <= n <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {n} exceeds the body ({len(body)} bytes)")
    return body[:n], body[n:]


def _decode_input(spec: Any, binary: bytes, offset: int) -> tuple[str, Any, int]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError("each input needs a 'name', 'shape' and 'datatype'")
    name, dtype, shape = spec["name"], spec.get("datatype"), spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers")
    expected = {"text": "BYTES", "input_ids": "INT64", "attention_mask": "INT64"}.get(name)
    if expected is not None and dtype != expected:
        raise ProtocolError(f"input '{name}' must have datatype {expected}, got {dtype!r}")
    count = math.prod(shape)
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        raw = binary[offset:offset + int(size)]
        if len(raw) != int(size):
            raise ProtocolError(f"input '{name}': binary data shorter than binary_data_size")
        offset += int(size)
        values: Any = _decode_bytes(raw, name) if dtype == "BYTES" else np.frombuffer(
            raw, dtype="<i8") if dtype == "INT64" else None
    else:
        values = spec.get("data")
        if not isinstance(values, list):
            raise ProtocolError(f"input '{name}' has no 'data' (or binary_data_size)")
        values = list(_flatten(values))
    if values is None:
        raise ProtocolError(f"input '{name}': datatype {dtype!r} is not supported")
    if len(values) != count:
        raise ProtocolError(f"input '{name}': shape {shape} needs {count} values, got {len(values)}")
    if dtype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise ProtocolError(f"input 'text' must have shape [batch] or [batch, 1], got {shape}")
        texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ProtocolError("input 'text' must hold non-empty strings")
        return name, texts, offset
    try:
        array = np.asarray(values, dtype=np.int64).reshape(shape)
    except (TypeError, ValueError):
        raise ProtocolError(f"input '{name}' must hold integers") from None
    return name, array, offset


def _requested_outputs(spec: Any) -> tuple[list[str], set[str]]:
    if spec is None:
        return list(OUTPUTS), set()
    if not isinstance(spec, list):
        raise ProtocolError("'outputs' must be a list of {\"name\": ...}")
    names, binary = [], set()
    for o in spec:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {name!r}; outputs are {list(OUTPUTS)}")
        names.append(name)
        if (o.get("parameters") or {}).get("binary_data"):
            binary.add(name)
    return names, binary


def _flatten(values: list[Any]) -> Any:
    for v in values:
        if isinstance(v, list):
            yield from _flatten(v)
        else:
            yield v


def _decode_bytes(raw: bytes, name: str) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ProtocolError(f"input '{name}': truncated BYTES element")
        (n,) = struct.unpack_from("<I", raw, i)
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _encode_bytes(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))
