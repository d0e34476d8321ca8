"""ModelInferRequest in, InferRequest out, and back: the gRPC wire's rules, without a server."""

from __future__ import annotations

import math
import struct
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.serve.core import InferResult
from kiln.serve.grpc_adapter import status_code
from kiln.serve.grpc_protocol import CONTENTS, build_model_infer_response, parse_model_infer
from kiln.serve.proto import grpc_service_pb2 as pb
from kiln.serve.tensors import ProtocolError

MAX_LENGTH, VOCABULARY = 8, 100
LABELS = ["account", "billing", "shipping", "technical"]
PARAMETER_FIELDS = {bool: "bool_param", int: "int64_param", str: "string_param",
                    float: "double_param"}


def request(*inputs: dict[str, Any], raw: list[bytes] | None = None, outputs: tuple[str, ...] = (),
            **parameters: Any) -> pb.ModelInferRequest:
    """A ModelInferRequest of ``inputs`` (name, datatype, shape and a ``contents`` field)."""
    message = pb.ModelInferRequest(model_name="clf", raw_input_contents=raw or [])
    for spec in inputs:
        tensor = message.inputs.add(name=spec["name"], datatype=spec["datatype"],
                                    shape=spec["shape"])
        for field, values in spec.items():
            if field.endswith("_contents"):
                getattr(tensor.contents, field).extend(values)
    for name in outputs:
        message.outputs.add(name=name)
    for key, value in parameters.items():
        field = PARAMETER_FIELDS[type(value)]
        setattr(message.parameters[key], field, value)
    return message


def text(*texts: bytes, shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": "text", "datatype": "BYTES", "shape": shape or [len(texts)],
            "bytes_contents": list(texts)}


def ids(rows: list[list[int]], datatype: str = "INT64", name: str = "input_ids") -> dict[str, Any]:
    field = "int64_contents" if datatype == "INT64" else "int_contents"
    return {"name": name, "datatype": datatype, "shape": [len(rows), len(rows[0])],
            field: [x for row in rows for x in row]}


def parse(message: pb.ModelInferRequest, deadline_s: float | None = None) -> Any:
    return parse_model_infer(message, MAX_LENGTH, vocabulary=VOCABULARY, classes=len(LABELS),
                             deadline_s=deadline_s)


def length_prefixed(*texts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def test_texts_and_token_ids_read_as_rest_reads_them() -> None:
    parsed = parse(request(text(b"where is my parcel", "caf\u00e9".encode())))
    assert parsed.texts == ["where is my parcel", "caf\u00e9"] and parsed.input_ids is None
    assert parsed.outputs == ["logits", "probabilities", "label"] and parsed.timeout_s is None
    parsed = parse(request(ids([[5, 6, 7], [8, 9, 0]]), ids([[1, 1, 1], [1, 1, 0]],
                                                          name="attention_mask")))
    assert parsed.input_ids == [[5, 6, 7], [8, 9]] and parsed.texts is None
    int32 = parse(request(ids([[5, 6, 7]], "INT32"), ids([[1, 1, 1]], "INT32", "attention_mask")))
    assert int32.input_ids == [[5, 6, 7]]


def test_raw_input_contents_are_read_like_typed_contents() -> None:
    texts = {"name": "text", "datatype": "BYTES", "shape": [2]}
    parsed = parse(request(texts, raw=[length_prefixed(b"hello", b"world")]))
    assert parsed.texts == ["hello", "world"]
    for datatype, fmt in (("INT64", "<3q"), ("INT32", "<3i")):
        tensors = [{"name": n, "datatype": datatype, "shape": [1, 3]}
                   for n in ("input_ids", "attention_mask")]
        raw = [struct.pack(fmt, 5, 6, 7), struct.pack(fmt, 1, 1, 0)]
        assert parse(request(*tensors, raw=raw)).input_ids == [[5, 6]]


def test_id_outputs_and_timeout_in_microseconds() -> None:
    message = request(text(b"hi"), outputs=("label", "logits"), timeout=2_500_000)
    message.id = "req-7"
    parsed = parse(message)
    assert (parsed.id, parsed.outputs, parsed.timeout_s) == ("req-7", ["label", "logits"], 2.5)
    assert parse(request(text(b"hi"), timeout=0)).timeout_s is None  # 0: the server's
    assert parse(request(text(b"hi"), timeout=2_500_000), deadline_s=0.5).timeout_s == 0.5
    assert parse(request(text(b"hi")), deadline_s=0.5).timeout_s == 0.5


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (request(), "has no inputs"),
        (request({"name": "txt", "datatype": "BYTES", "shape": [1]}), "unknown input(s) ['txt']"),
        (request(text(b"a"), text(b"b")), "input 'text' is given twice"),
        (request(ids([[1]])), "give 'text' or both 'input_ids' and 'attention_mask'"),
        (request({"name": "text", "datatype": "FP32", "shape": [1], "fp32_contents": [1.0]}),
         "input 'text' must have datatype BYTES, got 'FP32'"),
        (request({"name": "input_ids", "datatype": "INT64", "shape": [1, 1], "int_contents": [1]},
                 ids([[1]], name="attention_mask")),
         "send its values in contents.int64_contents, not contents.int_contents"),
        (request(text(b"a", shape=[2])), "shape [2] needs 2 values, got 1"),
        (request(text(b"ok", b"\xff\xfe")), "input 'text': element 1 is not valid UTF-8"),
        (request(text(b"  ")), "element 0 is blank"),
        (request({"name": "text", "datatype": "BYTES", "shape": [1]},
                 raw=[length_prefixed(b"\xc3")]), "input 'text': element 0 is not valid UTF-8"),
        (request({"name": "text", "datatype": "BYTES", "shape": [1]},
                 raw=[b"\x09\0\0\0abc"]), "element 0 declares 9 bytes"),
        (request(ids([[1, 100]]), ids([[1, 1]], name="attention_mask")),
         "input 'input_ids': token id 100 at [0, 1] is not in the model's vocabulary (0 .. 99)"),
        (request(ids([[1] * 9]), ids([[1] * 9], name="attention_mask")), "at most 8"),
        (request({"name": "input_ids", "datatype": "INT64", "shape": [1, 1]},
                 {"name": "attention_mask", "datatype": "INT64", "shape": [1, 1]},
                 raw=[b"\1" * 8, b"\1" * 7]), "not a whole number of 8-byte INT64 values"),
        (request(text(b"a"), raw=[length_prefixed(b"a")]), "send every input one way"),
        (request({"name": "text", "datatype": "BYTES", "shape": [1]},
                 {"name": "x", "datatype": "BYTES", "shape": [1]}, raw=[b""]),
         "unknown input(s) ['x']"),
        (request({"name": "input_ids", "datatype": "INT64", "shape": [1, 1]},
                 {"name": "attention_mask", "datatype": "INT64", "shape": [1, 1]},
                 raw=[b"\1" * 8]), "raw_input_contents has 1 entries for 2 inputs"),
        (request(text(b"a"), timeout="soon"), "parameters.timeout must be a number of micro"),
        (request(text(b"a"), timeout=-1), "parameters.timeout must be a number of micro"),
        (request(text(b"a"), outputs=("scores",)), "unknown output 'scores'"),
        (request(text(b"a"), outputs=("label", "label")), "output 'label' is asked for twice"),
    ],
)
def test_bad_requests_are_refused_naming_the_problem(message: pb.ModelInferRequest,
                                                     error: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(message)
    assert error in str(refused.value) and refused.value.status == 400


def test_shared_memory_is_refused() -> None:
    message = request(text(b"a"))
    message.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(ProtocolError, match="input 'text': shared memory is not supported"):
        parse(message)


RESULT = InferResult("clf", "1", logits=[[1.0, 2.0, 0.5, 0.0]],
                     probabilities=[[0.2, 0.6, 0.15, 0.05]], labels=["billing"])


def test_typed_request_gets_typed_answer_with_the_outputs_asked_for() -> None:
    message = request(text(b"hi"), outputs=("label", "probabilities"))
    message.id = "r1"
    response = build_model_infer_response(RESULT, parse(message), False, LABELS)
    assert (response.model_name, response.model_version, response.id) == ("clf", "1", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("label", "BYTES", [1]), ("probabilities", "FP32", [1, 4])]
    assert list(response.outputs[0].contents.bytes_contents) == [b"billing"]
    np.testing.assert_allclose(response.outputs[1].contents.fp32_contents, [0.2, 0.6, 0.15, 0.05])
    assert not response.raw_output_contents


def test_raw_request_gets_raw_answer() -> None:
    parsed = parse(request({"name": "text", "datatype": "BYTES", "shape": [1]},
                           raw=[length_prefixed(b"hi")]))
    response = build_model_infer_response(RESULT, parsed, True, LABELS)
    assert [o.name for o in response.outputs] == ["logits", "probabilities", "label"]
    assert not any(o.HasField("contents") for o in response.outputs)
    logits, _, label = response.raw_output_contents
    assert struct.unpack("<4f", logits) == (1.0, 2.0, 0.5, 0.0)
    assert label == length_prefixed(b"billing")


def test_classification_answers_the_top_classes() -> None:
    message = request(text(b"hi"))
    message.outputs.add(name="probabilities").parameters["classification"].int64_param = 2
    response = build_model_infer_response(RESULT, parse(message), False, LABELS)
    assert (response.outputs[0].datatype, list(response.outputs[0].shape)) == ("BYTES", [1, 2])
    assert list(response.outputs[0].contents.bytes_contents) == [
        b"0.600000:1:billing", b"0.200000:0:account"]


NAMES = st.sampled_from(["text", "input_ids", "attention_mask", "", "txt"])
DATATYPES = st.sampled_from(["BYTES", "INT64", "INT32", "FP32", ""])
PARAMETERS = st.dictionaries(
    st.sampled_from(["timeout", "classification", "shared_memory_region", "priority", "x"]),
    st.one_of(st.integers(-2**63, 2**63 - 1), st.booleans(), st.text(max_size=3),
              st.floats(allow_nan=True)), max_size=2)


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Any ModelInferRequest, well-formed or not: mostly one of the input sets kiln takes, with
    the datatypes, shapes and values of each mostly right."""
    message = pb.ModelInferRequest(model_name="clf")
    names = draw(st.sampled_from([["text"], ["input_ids", "attention_mask"], None]))
    rows = draw(mostly(st.integers(1, 3), st.integers(0, 3)))
    length, raw = draw(st.integers(1, 9)), draw(st.booleans())
    for name in names if names is not None else draw(st.lists(NAMES, max_size=3)):
        datatype = draw(mostly(st.just("BYTES" if name == "text" else "INT64"), DATATYPES))
        shape = draw(mostly(st.just([rows] if name == "text" else [rows, length]),
                            st.lists(st.integers(-1, 4), max_size=3)))
        count = max(0, math.prod(shape))
        values = draw(st.lists(element(name, datatype), min_size=count,
                               max_size=count + draw(mostly(st.just(0), st.just(1)))))
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            message.raw_input_contents.append(
                draw(mostly(st.just(encoded(datatype, values)), st.binary(max_size=12))))
        else:
            field = draw(mostly(st.just(CONTENTS.get(datatype, "fp32_contents")),
                                st.sampled_from(list(CONTENTS.values()))))
            getattr(tensor.contents, field).extend(
                values if (field == "bytes_contents") == (datatype == "BYTES") else [])
        set_parameters(tensor.parameters, draw(mostly(st.just({}), PARAMETERS)))
    for name in draw(st.lists(st.sampled_from(["logits", "label", "probabilities", "x"]),
                              max_size=3)):
        set_parameters(message.outputs.add(name=name).parameters,
                       draw(mostly(st.just({}), PARAMETERS)))
    set_parameters(message.parameters, draw(mostly(st.just({}), PARAMETERS)))
    return message


def mostly(usual: st.SearchStrategy[Any],
           other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """What ``usual`` draws three times in four, else what ``other`` draws."""
    return st.integers(0, 3).flatmap(lambda i: usual if i else other)


def element(name: str, datatype: str) -> st.SearchStrategy[Any]:
    """One value of input ``name``, mostly one the model takes."""
    if datatype == "BYTES":
        return mostly(st.text("ab c\u00e9", min_size=1, max_size=5).map(str.encode),
                      st.binary(max_size=4))
    if name == "input_ids":
        return mostly(st.integers(0, VOCABULARY - 1), st.integers(-2, VOCABULARY + 1))
    return mostly(st.integers(0, 1), st.integers(-1, 2))


def encoded(datatype: str, values: list[Any]) -> bytes:
    """``values`` as raw_input_contents: length-prefixed BYTES, little-endian integers."""
    if datatype == "BYTES":
        return length_prefixed(*values)
    return struct.pack(f"<{len(values)}{'i' if datatype == 'INT32' else 'q'}", *values)


def set_parameters(parameters: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        setattr(parameters[key], PARAMETER_FIELDS[type(value)], value)


@settings(max_examples=300, deadline=None)
@given(infer_requests())
def test_any_request_is_read_or_refused_with_a_protocol_error(
        message: pb.ModelInferRequest) -> None:
    """Anything but a ProtocolError would be answered INTERNAL: never for a client's mistake."""
    try:
        parsed = parse(message)
    except ProtocolError as exc:
        assert exc.status == 400 and str(exc)
        return
    rows = parsed.texts if parsed.texts is not None else parsed.input_ids
    assert rows and all(rows)


@pytest.mark.parametrize(("status", "code"), [
    (400, grpc.StatusCode.INVALID_ARGUMENT), (401, grpc.StatusCode.UNAUTHENTICATED),
    (404, grpc.StatusCode.NOT_FOUND), (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (415, grpc.StatusCode.INVALID_ARGUMENT), (501, grpc.StatusCode.UNIMPLEMENTED),
    (503, grpc.StatusCode.UNAVAILABLE), (504, grpc.StatusCode.DEADLINE_EXCEEDED),
    (500, grpc.StatusCode.INTERNAL)])
def test_serve_errors_map_to_grpc_status_codes(status: int, code: grpc.StatusCode) -> None:
    assert status_code(status) == code
