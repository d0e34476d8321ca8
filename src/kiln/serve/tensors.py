"""What an infer request's tensors, outputs and parameters must be, whatever the wire: the rules
the REST (`protocol`) and gRPC (`grpc_protocol`) readers share, and the output tensors both write.

Each transport reads its own wire format into plain values (names, shapes, lists of texts, int64
arrays, parameter dicts) and hands them to these checks, so a request is refused with the same
`ProtocolError` (400) message whichever way it came: naming the input and, where it helps, the
element. The checks run before a request joins a batch: content the model cannot take (a text that
is not UTF-8, a token id the model does not embed) would otherwise fail every request batched with
it.
"""

from __future__ import annotations

import reprlib
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.serve.errors import ServeError

OUTPUTS = ("logits", "probabilities", "label")
DTYPES = {"logits": "FP32", "probabilities": "FP32", "label": "BYTES"}
INPUTS = {"text": "BYTES", "input_ids": "INT64", "attention_mask": "INT64"}
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1  # the largest parameters.timeout Triton takes (microseconds)


class ProtocolError(ServeError):
    """A request body the Open Inference Protocol does not allow (400 unless said otherwise)."""


@dataclass(frozen=True)
class InferRequest:
    """A checked infer request, in the core's terms (as every transport reads it)."""

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


def short_repr(value: Any) -> str:
    """``value`` for an error message, shortened (a request may hold megabytes)."""
    return reprlib.repr(value)


def input_specs(specs: Any) -> list[dict[str, Any]]:
    """The request's inputs: objects with known names, each given once, forming one usable set.

    Args:
        specs: the request's inputs, each a dict with at least its ``name``.

    Raises:
        ProtocolError: not a non-empty list of named objects, an unknown or repeated name, or
            neither ``text`` alone nor ``input_ids`` with ``attention_mask``.
    """
    if not isinstance(specs, list) or not specs:
        raise ProtocolError("request must be a JSON object with a non-empty 'inputs' list")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError(f"inputs[{i}] must be an object with a string 'name', a 'shape' "
                                "and a 'datatype'")
    names = [spec["name"] for spec in specs]
    unknown = set(names) - INPUTS.keys()
    if unknown:
        raise ProtocolError(f"unknown input(s) {short_repr(sorted(unknown))}; this model takes "
                            "'text' (BYTES) or 'input_ids' and 'attention_mask' (INT64)")
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ProtocolError(f"input '{twice}' is given twice; give each input once")
    if set(names) not in ({"text"}, {"input_ids", "attention_mask"}):
        raise ProtocolError(f"give 'text' or both 'input_ids' and 'attention_mask', not "
                            f"{sorted(names)}")
    return specs


def input_shape(name: str, shape: Any) -> list[int]:
    """The shape of input ``name`` (one of `INPUTS`), checked against what the model takes.

    Raises:
        ProtocolError: not a list of non-negative integers, ``text`` not [batch] or [batch, 1],
            token ids not [batch, sequence], an empty batch or a row of no tokens.
    """
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"input '{name}': shape must be a list of non-negative integers, "
                            f"got {short_repr(shape)}")
    if INPUTS[name] == "BYTES" and not (len(shape) == 1 or len(shape) == 2 and shape[1] == 1):
        raise ProtocolError(f"input 'text' must have shape [batch] or [batch, 1], got "
                            f"{short_repr(shape)}")
    if INPUTS[name] == "INT64" and len(shape) != 2:
        raise ProtocolError(f"input '{name}' must have shape [batch, sequence], got "
                            f"{short_repr(shape)}")
    if shape[0] == 0:
        raise ProtocolError(f"input '{name}' has shape {shape}: the batch is empty; send at "
                            "least one row")
    if INPUTS[name] == "INT64" and shape[1] == 0:
        raise ProtocolError(f"input '{name}' has shape {shape}: each row needs at least one "
                            "token")
    return shape


def input_texts(name: str, values: list[Any]) -> list[str]:
    """``values`` if each is a non-blank string that UTF-8 can encode (no lone surrogates).

    Raises:
        ProtocolError: naming the first element that is not a string, is blank, or holds a lone
            surrogate.
    """
    if set(map(type, values)) != {str}:
        i = next(i for i, v in enumerate(values) if type(v) is not str)
        raise ProtocolError(f"input '{name}' must hold strings; element {i} is "
                            f"{short_repr(values[i])}")
    if not all(map(str.strip, values)):
        i = next(i for i, v in enumerate(values) if not v.strip())
        raise ProtocolError(f"input '{name}' must hold non-empty strings; element {i} is blank")
    try:
        "".join(values).encode("utf-8")
    except UnicodeEncodeError:
        i = next(i for i, v in enumerate(values) if not _encodable(v))
        raise ProtocolError(f"input '{name}': element {i} is not valid text "
                            f"({short_repr(values[i])} holds a lone surrogate, which UTF-8 cannot "
                            "encode)") from None
    return values


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_LENGTH = struct.Struct("<I")


def decode_bytes(name: str, raw: bytes) -> list[str]:
    """The elements of a serialized BYTES tensor (Triton's form, on either wire): each a 4-byte
    little-endian length, then that many bytes, here UTF-8 text.

    Raises:
        ProtocolError: an element's length or bytes run past ``raw``, or are not valid UTF-8
            (the model reads text: replacing bad bytes would answer for a text never sent).
    """
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


def encode_bytes(values: list[str]) -> bytes:
    """``values`` as a serialized BYTES tensor (the form `decode_bytes` reads)."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))


def token_rows(ids: np.ndarray, mask: np.ndarray, max_length: int,
               vocabulary: int | None) -> list[list[int]]:
    """The unpadded rows of token ids (the ids where the mask is 1; [0] for a row without).

    Args:
        ids, mask: the ``input_ids`` and ``attention_mask`` inputs, int64 [batch, sequence].
        max_length: the most tokens a row may have.
        vocabulary: token ids must be below it (None: only checked to be >= 0).

    Raises:
        ProtocolError: the shapes differ, rows are longer than ``max_length``, an id is outside
            the vocabulary or a mask value is not 0 or 1.
    """
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
class RequestedOutputs:
    """The outputs a request asks for, in its order, and how each is answered."""

    names: list[str]
    binary: set[str]  # those answered as binary data
    classification: dict[str, int]  # name -> top K classes


def requested_outputs(spec: Any, binary_default: bool, classes: int | None) -> RequestedOutputs:
    """The outputs asked for (all when none is named), those wanted as binary data (by default
    when ``binary_default``) and those wanted as their top classes.

    Args:
        spec: the request's outputs, each a dict with a ``name`` and optional ``parameters``
            (``binary_data``, ``classification``); None or [] asks for all.
        classes: how many classes the model has: the most a classification may ask for (None:
            not checked).

    Raises:
        ProtocolError: an unknown or repeated output, or a parameter it cannot take.
    """
    if spec is None or spec == []:
        return RequestedOutputs(list(OUTPUTS), set(OUTPUTS) if binary_default else set(), {})
    if not isinstance(spec, list):
        raise ProtocolError("'outputs' must be a list of {\"name\": ...}")
    asked = RequestedOutputs([], set(), {})
    for i, o in enumerate(spec):
        name = o.get("name") if isinstance(o, dict) else None
        if not isinstance(name, str):
            raise ProtocolError(f"outputs[{i}] must be an object with a string 'name'")
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {short_repr(name)}; outputs are {list(OUTPUTS)}")
        if name in asked.names:
            raise ProtocolError(f"output '{name}' is asked for twice; name each output once")
        asked.names.append(name)
        params = parameters_of(o, f"output '{name}'")
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
                            f"got {short_repr(flag)}")
    return default if flag is None else flag


def _classification(name: str, params: dict[str, Any], classes: int | None) -> int:
    """How many top classes output ``name`` asks for (0: none; the plain tensor)."""
    top_k = params.get("classification")
    if top_k is None or (top_k == 0 and type(top_k) is int):
        return 0
    if type(top_k) is not int or top_k < 0:
        raise ProtocolError(f"output '{name}': parameters.classification must be a non-negative "
                            f"integer (how many top classes), got {short_repr(top_k)}")
    if name == "label":
        raise ProtocolError("output 'label' is BYTES and has no class scores to rank; ask for "
                            "classification on 'probabilities' or 'logits'")
    if classes is not None and top_k > classes:
        raise ProtocolError(f"output '{name}': classification {top_k} asks for more classes than "
                            f"the model has; ask for 1 .. {classes}")
    return top_k


def parameters_of(owner: dict[str, Any], where: str) -> dict[str, Any]:
    """``owner``'s parameters: a JSON object of strings, numbers and booleans ({} when absent).

    Args:
        owner: the request, an input or an output, as a dict with an optional ``parameters``.
        where: ``owner`` in an error message ("request", "input 'text'").

    Raises:
        ProtocolError: not an object, a value that is a list or an object, or shared memory.
    """
    params = owner.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object, got "
                            f"{short_repr(params)}")
    for key, value in params.items():
        if isinstance(value, (list, dict)):
            raise ProtocolError(f"{where}: parameter {short_repr(key)} must be a string, number "
                                f"or boolean, got {short_repr(value)}")
    if "shared_memory_region" in params:  # ignoring it would leave the client's region empty
        raise ProtocolError(f"{where}: shared memory is not supported; send the data in the "
                            "request body (JSON or binary) and read it from the answer")
    return params


def request_timeout_s(params: dict[str, Any]) -> float | None:
    """parameters.timeout, sent in microseconds (Triton's unit, what tritonclient's
    ``infer(timeout=...)`` sends), in seconds (None: the server's --timeout, also for 0, which
    Triton reads as "no timeout of the request's own").

    Raises:
        ProtocolError: not a number from 0 to `UINT64_MAX`.
    """
    timeout = params.get("timeout")
    if timeout is None:
        return None
    # comparisons, not float(): an integer of 400 digits compares fine, NaN fails both
    if type(timeout) not in (int, float) or not 0 <= timeout <= UINT64_MAX:
        raise ProtocolError("parameters.timeout must be a number of microseconds from 0 to "
                            f"{UINT64_MAX} (0: the server's timeout), got {short_repr(timeout)}")
    return timeout / 1e6 or None


def output_tensor(name: str, request: InferRequest, logits: list[list[float]],
                  probabilities: list[list[float]], labels: list[str],
                  label_names: list[str]) -> tuple[str, list[int], list[Any]]:
    """An output's datatype, shape and values in row-major order (with a classification asked
    for it: its top classes per row, as the classification extension answers them).

    Plain Python lists in and out, no numpy: this runs on the event loop, where a numpy call that
    drops the GIL lets the inference thread take it for a whole switch interval.
    """
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
