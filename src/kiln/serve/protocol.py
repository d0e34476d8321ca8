"""The Open Inference Protocol (KServe v2) request and response bodies, JSON and binary, with the
Triton extensions kiln speaks in them: binary tensor data (raw binary requests included) and
classification.

A request is checked in full here, before it joins a batch: content the model cannot take (a text
that is not UTF-8, a token id the model does not embed) would otherwise fail every request batched
with it. Each refusal is a `ProtocolError` (400) that names the input and, where it helps, the
element.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import reprlib
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.serve.errors import ServeError

OUTPUTS = ("logits", "probabilities", "label")
DTYPES = {"logits": "FP32", "probabilities": "FP32", "label": "BYTES"}
INPUTS = {"text": "BYTES", "input_ids": "INT64", "attention_mask": "INT64"}
MAX_DEPTH = 100  # levels of JSON nesting a request may use (Triton's limit)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1  # the largest parameters.timeout Triton takes (microseconds)


class ProtocolError(ServeError):
    """A request body the Open Inference Protocol does not allow (400 unless said otherwise)."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    texts: list[str] | None  # BYTES input "text"
    input_ids: list[list[int]] | None  # INT64 inputs, unpadded rows
    outputs: list[str]
    binary_outputs: set[str]
    timeout_s: float | None  # parameters.timeout (sent in microseconds); None: the server's
    # classification extension: output name -> how many top classes to answer with, per row
    classification: dict[str, int] = field(default_factory=dict)
    # the text came as [batch, 1] (as Triton's clients send a dims [1] input): the label is
    # answered [batch, 1] too, as Triton answers an output of dims [1]; else [batch]
    column: bool = False


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
    specs = _input_specs(req.get("inputs"))
    # in input order: that is the order of the inputs' binary chunks
    tensors = {spec["name"]: _decode_input(spec, chunks) for spec in specs}
    chunks.check_all_taken()
    texts, rows = tensors.get("text"), None
    if texts is None:
        rows = _token_rows(tensors["input_ids"], tensors["attention_mask"], max_length, vocabulary)
    params = _parameters(req, "request")
    outputs = _requested_outputs(req.get("outputs"), _binary_data_output(params), classes)
    return InferRequest(id=_request_id(req.get("id")), texts=texts, input_ids=rows,
                        outputs=outputs.names, binary_outputs=outputs.binary,
                        timeout_s=_timeout(params), classification=outputs.classification,
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
        dtype, shape, flat = _output_tensor(name, request, logits, probabilities, labels,
                                            label_names or [])
        entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": shape}
        if name in request.binary_outputs:
            raw = _encode_bytes(flat) if dtype == "BYTES" else struct.pack(f"<{len(flat)}f", *flat)
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


def _output_tensor(name: str, request: InferRequest, logits: list[list[float]],
                   probabilities: list[list[float]], labels: list[str],
                   label_names: list[str]) -> tuple[str, list[int], list[Any]]:
    """An output's datatype, shape and values in row-major order (with a classification asked
    for it: its top classes per row, as the classification extension answers them)."""
    if name == "label":
        return DTYPES[name], [len(labels), 1] if request.column else [len(labels)], labels
    top_k = request.classification.get(name, 0)
    matrix = logits if name == "logits" else probabilities
    if top_k:
        return "BYTES", [len(matrix), top_k], [
            text for row in matrix for text in top_classes(row, top_k, label_names)]
    return DTYPES[name], [len(matrix), len(matrix[0]) if matrix else 0], [
        x for row in matrix for x in row]


def top_classes(row: list[float], k: int, label_names: list[str]) -> list[str]:
    """The ``k`` highest values of ``row`` as Triton's classification strings
    "value:index:label" (the value as C's ``%f`` prints it, as Triton does; ties go to the lower
    index; no ":label" where ``label_names`` has none)."""
    best = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
    return [f"{row[i]:f}:{i}:{label_names[i]}" if i < len(label_names) else f"{row[i]:f}:{i}"
            for i in best]


def _split(body: bytes, header_length: str | None) -> tuple[bytes | None, bytes]:
    """The JSON header and the binary data after it (no header: a raw binary request)."""
    if header_length is None:
        return body, b""
    digits = header_length.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise ProtocolError("Inference-Header-Content-Length must be a non-negative integer, got "
                            f"{_show(header_length)}")
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
    return InferRequest(id=None, texts=_texts("text", [text]), input_ids=None,
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


def _input_specs(specs: Any) -> list[dict[str, Any]]:
    """The request's inputs: objects with known names, each given once, forming one usable set."""
    if not isinstance(specs, list) or not specs:
        raise ProtocolError("request must be a JSON object with a non-empty 'inputs' list")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError(f"inputs[{i}] must be an object with a string 'name', a 'shape' "
                                "and a 'datatype'")
    names = [spec["name"] for spec in specs]
    unknown = set(names) - INPUTS.keys()
    if unknown:
        raise ProtocolError(f"unknown input(s) {_show(sorted(unknown))}; this model takes 'text' "
                            "(BYTES) or 'input_ids' and 'attention_mask' (INT64)")
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ProtocolError(f"input '{twice}' is given twice; give each input once")
    if set(names) not in ({"text"}, {"input_ids", "attention_mask"}):
        raise ProtocolError(f"give 'text' or both 'input_ids' and 'attention_mask', not "
                            f"{sorted(names)}")
    return specs


def _decode_input(spec: dict[str, Any], chunks: _BinaryChunks) -> Any:
    """An input's values, checked: a list of texts (BYTES) or an int64 array of its shape."""
    name, dtype = spec["name"], INPUTS[spec["name"]]
    if spec.get("datatype") != dtype:
        raise ProtocolError(f"input '{name}' must have datatype {dtype}, got "
                            f"{_show(spec.get('datatype'))}")
    shape = _shape(name, spec.get("shape"))
    size = _parameters(spec, f"input '{name}'").get("binary_data_size")
    values: Any
    if size is not None:
        if spec.get("data") is not None:
            raise ProtocolError(f"input '{name}' has both 'data' and binary_data_size; give one")
        raw = chunks.take(name, size)
        values = _binary_texts(name, raw) if dtype == "BYTES" else _binary_int64(name, raw)
    elif isinstance(spec.get("data"), list):
        values = _flatten(name, spec["data"], shape)
    else:
        raise ProtocolError(f"input '{name}' has no 'data' (or binary_data_size)")
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(f"input '{name}': shape {shape} needs {count} values, got "
                            f"{len(values)}")
    if dtype == "BYTES":
        return _texts(name, values)
    return _int64(name, values).reshape(shape)


def _shape(name: str, shape: Any) -> list[int]:
    """The input's shape, checked against what the model takes (non-empty batch, 2-D ids)."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers, "
                            f"got {_show(shape)}")
    if INPUTS[name] == "BYTES" and not (len(shape) == 1 or len(shape) == 2 and shape[1] == 1):
        raise ProtocolError(f"input 'text' must have shape [batch] or [batch, 1], got "
                            f"{_show(shape)}")
    if INPUTS[name] == "INT64" and len(shape) != 2:
        raise ProtocolError(f"input '{name}' must have shape [batch, sequence], got "
                            f"{_show(shape)}")
    if shape[0] == 0:
        raise ProtocolError(f"input '{name}' has shape {shape}: the batch is empty; send at "
                            "least one row")
    if INPUTS[name] == "INT64" and shape[1] == 0:
        raise ProtocolError(f"input '{name}' has shape {shape}: each row needs at least one "
                            "token")
    return shape


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


def _texts(name: str, values: list[Any]) -> list[str]:
    """``values`` if each is a non-blank string that UTF-8 can encode (no lone surrogates)."""
    if set(map(type, values)) != {str}:
        i = next(i for i, v in enumerate(values) if type(v) is not str)
        raise ProtocolError(f"input '{name}' must hold strings; element {i} is {_show(values[i])}")
    if not all(map(str.strip, values)):
        i = next(i for i, v in enumerate(values) if not v.strip())
        raise ProtocolError(f"input '{name}' must hold non-empty strings; element {i} is blank")
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        i = next(i for i, v in enumerate(values) if not _encodable(v))
        raise ProtocolError(f"input '{name}': element {i} is not valid text ({_show(values[i])} "
                            "holds a lone surrogate, which UTF-8 cannot encode)") from None
    return values


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int64(name: str, values: list[Any] | np.ndarray) -> np.ndarray:
    """``values`` as int64 if each is a JSON integer (not a float or a boolean) in INT64 range."""
    if isinstance(values, np.ndarray):
        return values  # binary data: int64 by construction
    if set(map(type, values)) != {int}:
        i = next(i for i, v in enumerate(values) if type(v) is not int)
        raise ProtocolError(f"input '{name}' must hold integers; element {i} is "
                            f"{_show(values[i])}")
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        i = next(i for i, v in enumerate(values) if not -INT64_MAX - 1 <= v <= INT64_MAX)
        raise ProtocolError(f"input '{name}': element {i} ({_show(values[i])}) is outside the "
                            "INT64 range") from None


class _BinaryChunks:
    """The binary data after the JSON header, taken by the inputs in their order."""

    def __init__(self, data: bytes, announced: bool) -> None:
        self.data, self.taken, self.announced = data, 0, announced

    def take(self, name: str, size: Any) -> bytes:
        """The next ``size`` bytes, for input ``name``."""
        if type(size) is not int or size < 0:
            raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative "
                                f"integer, got {_show(size)}")
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


_LENGTH = struct.Struct("<I")


def _binary_texts(name: str, raw: bytes) -> list[str]:
    """The BYTES elements of ``raw``: a 4-byte little-endian length, then that many UTF-8 bytes."""
    texts: list[str] = []
    at, end = 0, len(raw)
    while at < end:
        if end - at < _LENGTH.size:
            raise ProtocolError(f"input '{name}': element {len(texts)} has {end - at} bytes left "
                                "for its 4-byte length")
        (n,) = _LENGTH.unpack_from(raw, at)
        at += _LENGTH.size
        if n > end - at:
            raise ProtocolError(f"input '{name}': element {len(texts)} declares {n} bytes, but "
                                f"its binary data has {end - at} left")
        try:
            texts.append(raw[at:at + n].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"input '{name}': element {len(texts)} is not valid UTF-8 "
                                f"({exc.reason} at byte {exc.start}); the model reads "
                                "text") from None
        at += n
    return texts


def _binary_int64(name: str, raw: bytes) -> np.ndarray:
    if len(raw) % 8:
        raise ProtocolError(f"input '{name}': binary_data_size {len(raw)} is not a whole number "
                            "of 8-byte INT64 values")
    return np.frombuffer(raw, dtype="<i8").astype(np.int64, copy=False)


def _token_rows(ids: np.ndarray, mask: np.ndarray, max_length: int,
                vocabulary: int | None) -> list[list[int]]:
    """The unpadded rows of token ids (the ids where the mask is 1; [0] for a row without)."""
    if ids.shape != mask.shape:
        raise ProtocolError(f"input_ids {list(ids.shape)} and attention_mask "
                            f"{list(mask.shape)} must both be [batch, sequence]")
    if ids.shape[1] > max_length:
        raise ProtocolError(f"input_ids has {ids.shape[1]} tokens; the model takes at most "
                            f"{max_length}", status=400)
    top = INT64_MAX if vocabulary is None else vocabulary - 1
    if ids.min() < 0 or ids.max() > top:  # an id the model does not embed fails a whole batch
        row, col = np.argwhere((ids < 0) | (ids > top))[0]
        raise ProtocolError(f"input 'input_ids': token id {ids[row, col]} at [{row}, {col}] is "
                            f"not in the model's vocabulary (0 .. {top})")
    if mask.min() < 0 or mask.max() > 1:
        row, col = np.argwhere((mask < 0) | (mask > 1))[0]
        raise ProtocolError(f"input 'attention_mask' must hold 0 or 1; it holds "
                            f"{mask[row, col]} at [{row}, {col}]")
    if mask.all():  # the usual case: no padding to drop
        return ids.tolist()
    return [ids[i][mask[i] != 0].tolist() or [0] for i in range(ids.shape[0])]


@dataclass
class _Outputs:
    names: list[str]
    binary: set[str]  # those answered as binary data
    classification: dict[str, int]  # name -> top K classes


def _requested_outputs(spec: Any, binary_default: bool, classes: int | None) -> _Outputs:
    """The outputs asked for (all when none is named), those wanted as binary data (by default
    when ``binary_default``) and those wanted as their top classes."""
    if spec is None or spec == []:
        return _Outputs(list(OUTPUTS), set(OUTPUTS) if binary_default else set(), {})
    if not isinstance(spec, list):
        raise ProtocolError("'outputs' must be a list of {\"name\": ...}")
    asked = _Outputs([], set(), {})
    for i, o in enumerate(spec):
        name = o.get("name") if isinstance(o, dict) else None
        if not isinstance(name, str):
            raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {_show(name)}; outputs are {list(OUTPUTS)}")
        if name in asked.names:
            raise ProtocolError(f"output '{name}' is asked for twice; name each output once")
        asked.names.append(name)
        params = _parameters(o, f"output '{name}'")
        if _output_is_binary(name, params, binary_default):
            asked.binary.add(name)
        top_k = _classification(name, params, classes)
        if top_k:
            asked.classification[name] = top_k
    return asked


def _output_is_binary(name: str, params: dict[str, Any], default: bool) -> bool:
    flag = params.get("binary_data")
    if flag is not None and type(flag) is not bool:
        raise ProtocolError(f"output '{name}': parameters.binary_data must be true or false, "
                            f"got {_show(flag)}")
    return default if flag is None else flag


def _binary_data_output(params: dict[str, Any]) -> bool:
    """The request's parameters.binary_data_output: every output binary unless it says not."""
    flag = params.get("binary_data_output")
    if flag is not None and type(flag) is not bool:
        raise ProtocolError("parameters.binary_data_output must be true or false, got "
                            f"{_show(flag)}")
    return flag is True


def _classification(name: str, params: dict[str, Any], classes: int | None) -> int:
    """How many top classes output ``name`` asks for (0: none; the plain tensor)."""
    top_k = params.get("classification")
    if top_k is None or (top_k == 0 and type(top_k) is int):
        return 0
    if type(top_k) is not int or top_k < 0:
        raise ProtocolError(f"output '{name}': parameters.classification must be a non-negative "
                            f"integer (how many top classes), got {_show(top_k)}")
    if name == "label":
        raise ProtocolError("output 'label' is BYTES and has no class scores to rank; ask for "
                            "classification on 'probabilities' or 'logits'")
    if classes is not None and top_k > classes:
        raise ProtocolError(f"output '{name}': classification {top_k} asks for more classes than "
                            f"the model has; ask for 1 .. {classes}")
    return top_k


def _parameters(owner: dict[str, Any], where: str) -> dict[str, Any]:
    """``owner``'s parameters: a JSON object of strings, numbers and booleans ({} when absent)."""
    params = owner.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object, got {_show(params)}")
    for key, value in params.items():
        if isinstance(value, (list, dict)):
            raise ProtocolError(f"{where}: parameter {_show(key)} must be a string, number or "
                                f"boolean, got {_show(value)}")
    if "shared_memory_region" in params:  # ignoring it would leave the client's region empty
        raise ProtocolError(f"{where}: shared memory is not supported; send the data in the "
                            "request body (JSON or binary) and read it from the answer")
    return params


def _timeout(params: dict[str, Any]) -> float | None:
    """parameters.timeout, sent in microseconds (Triton's unit, what tritonclient's
    ``infer(timeout=...)`` sends), in seconds (None: the server's --timeout, also for 0, which
    Triton reads as "no timeout of the request's own")."""
    timeout = params.get("timeout")
    if timeout is None:
        return None
    # comparisons, not float(): an integer of 400 digits compares fine, NaN fails both
    if type(timeout) not in (int, float) or not 0 <= timeout <= UINT64_MAX:
        raise ProtocolError("parameters.timeout must be a number of microseconds from 0 to "
                            f"{UINT64_MAX} (0: the server's timeout), got {_show(timeout)}")
    return timeout / 1e6 or None


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
                            f"{{\"ready\": true}}, got {_show(req)}")
    ready = req.get("ready")
    if ready is not None and type(ready) is not bool:
        raise ProtocolError(f"'ready' must be true or false, got {_show(ready)}")
    return ready is True


def _request_id(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"'id' must be a string, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    """``value`` for an error message, shortened (a request may hold megabytes)."""
    return reprlib.repr(value)


def _encode_bytes(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))
