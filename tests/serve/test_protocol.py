"""Parsing infer requests: every malformed body is a 4xx `ProtocolError` naming the problem, and
valid bodies (JSON and binary, texts and token ids) parse as they always did; the Triton
extensions' fields (timeout in microseconds, binary_data_output, classification, raw binary
requests) parse as Triton reads them, and answers are written in their formats."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from kiln.serve.protocol import (
    OUTPUTS,
    InferRequest,
    ProtocolError,
    build_infer_response,
    parse_index_request,
    parse_infer_request,
    top_classes,
)

MAX_LENGTH, VOCABULARY, CLASSES = 48, 500, 4


def parse(body: bytes, header: str | None = None,
          vocabulary: int | None = VOCABULARY) -> InferRequest:
    return parse_infer_request(body, header, MAX_LENGTH, vocabulary=vocabulary, classes=CLASSES)


def refused(body: bytes, header: str | None = None, vocabulary: int | None = VOCABULARY) -> str:
    """The message of the 4xx error ``body`` gets."""
    with pytest.raises(ProtocolError) as caught:
        parse(body, header, vocabulary)
    assert 400 <= caught.value.status < 500
    return str(caught.value)


def dumps(request: dict[str, Any]) -> bytes:
    return json.dumps(request).encode()


def text_input(data: Any, shape: Any = None, **extra: Any) -> dict[str, Any]:
    shape = [len(data)] if shape is None else shape
    return {"name": "text", "shape": shape, "datatype": "BYTES", "data": data, **extra}


def int64_input(name: str, data: Any, shape: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": "INT64", "data": data, **extra}


def texts_request(*texts: Any, **fields: Any) -> bytes:
    return dumps({"inputs": [text_input(list(texts))], **fields})


def ids_request(ids: Any, mask: Any, shape: Any) -> bytes:
    return dumps({"inputs": [int64_input("input_ids", ids, shape),
                             int64_input("attention_mask", mask, shape)]})


def binary_request(inputs: list[tuple[dict[str, Any], bytes]], trailing: bytes = b"",
                   **fields: Any) -> tuple[bytes, str]:
    """(body, Inference-Header-Content-Length) of inputs given with their binary chunks."""
    specs = [{**spec, "parameters": {"binary_data_size": len(raw)}} for spec, raw in inputs]
    head = dumps({"inputs": specs, **fields})
    return head + b"".join(raw for _, raw in inputs) + trailing, str(len(head))


def bytes_elements(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def expected(texts: list[str] | None = None, rows: list[list[int]] | None = None,
             **fields: Any) -> InferRequest:
    defaults: dict[str, Any] = {"id": None, "outputs": list(OUTPUTS), "binary_outputs": set(),
                                "timeout_s": None}
    return InferRequest(texts=texts, input_ids=rows, **{**defaults, **fields})


# ---- valid requests parse as before ------------------------------------------------------------

HEAD_TEXT = {"name": "text", "shape": [2], "datatype": "BYTES"}
HEAD_IDS = {"name": "input_ids", "shape": [1, 3], "datatype": "INT64"}
HEAD_MASK = {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64"}
IDS = np.array([[2, 10, 3]], dtype="<i8").tobytes()
MASK = np.array([[1, 1, 0]], dtype="<i8").tobytes()

VALID: list[tuple[str, bytes, str | None, InferRequest]] = [
    ("json texts", texts_request("where is my parcel", "naïve café 😀"), None,
     expected(["where is my parcel", "naïve café 😀"])),
    ("json texts [batch, 1] nested", dumps({"inputs": [text_input([["a"], ["b"]], [2, 1])]}),
     None, expected(["a", "b"], column=True)),
    ("json texts [batch, 1] flat", dumps({"inputs": [text_input(["a", "b"], [2, 1])]}), None,
     expected(["a", "b"], column=True)),
    ("brackets inside strings are not nesting", texts_request("[" * 300 + "{" * 300), None,
     expected(["[" * 300 + "{" * 300])),
    ("id, outputs, binary output, timeout",
     texts_request("hi", id="req-1", parameters={"timeout": 2_500_000, "binary_data_output": True},
                   outputs=[{"name": "label", "parameters": {"binary_data": True}},
                            {"name": "logits", "parameters": {"binary_data": False}}]), None,
     expected(["hi"], id="req-1", outputs=["label", "logits"], binary_outputs={"label"},
              timeout_s=2.5)),
    ("null means absent", texts_request("hi", id=None, parameters=None, outputs=None), None,
     expected(["hi"])),
    # as Triton does (kiln answered with no outputs at all before)
    ("[] outputs means all", texts_request("hi", outputs=[]), None, expected(["hi"])),
    ("unknown extra fields are ignored",
     dumps({"inputs": [text_input(["hi"], extra={"x": [1]})], "extension": {"a": [[1]]}}), None,
     expected(["hi"])),
    # parameters.timeout is in microseconds, as Triton and tritonclient's infer(timeout=...) send it
    ("integer timeout", texts_request("hi", parameters={"timeout": 3_000_000}), None,
     expected(["hi"], timeout_s=3.0)),
    ("fractional microseconds", texts_request("hi", parameters={"timeout": 1.5}), None,
     expected(["hi"], timeout_s=1.5e-6)),
    ("timeout 0 is the server's", texts_request("hi", parameters={"timeout": 0}), None,
     expected(["hi"])),
    ("the largest timeout", texts_request("hi", parameters={"timeout": 2**64 - 1}), None,
     expected(["hi"], timeout_s=(2**64 - 1) / 1e6)),
    # binary_data_output: every output binary, unless its own binary_data says otherwise
    ("binary_data_output without outputs", texts_request(
        "hi", parameters={"binary_data_output": True}), None,
     expected(["hi"], binary_outputs=set(OUTPUTS))),
    ("binary_data_output with outputs", texts_request(
        "hi", parameters={"binary_data_output": True}, outputs=[
            {"name": "label"}, {"name": "logits", "parameters": {"binary_data": False}}]), None,
     expected(["hi"], outputs=["label", "logits"], binary_outputs={"label"})),
    ("binary_data_output false", texts_request(
        "hi", parameters={"binary_data_output": False}, outputs=[
            {"name": "label"}, {"name": "logits", "parameters": {"binary_data": True}}]), None,
     expected(["hi"], outputs=["label", "logits"], binary_outputs={"logits"})),
    ("classification", texts_request("hi", outputs=[
        {"name": "probabilities", "parameters": {"classification": 2}},
        {"name": "logits", "parameters": {"classification": CLASSES, "binary_data": True}}]),
     None, expected(["hi"], outputs=["probabilities", "logits"], binary_outputs={"logits"},
                    classification={"probabilities": 2, "logits": CLASSES})),
    ("classification 0 is the plain tensor (as in Triton)", texts_request("hi", outputs=[
        {"name": "probabilities", "parameters": {"classification": 0}}]), None,
     expected(["hi"], outputs=["probabilities"])),
    # Triton's raw binary request: the body is the one text, every output comes back binary
    ("raw binary request", "naïve café, where is my parcel".encode(), "0",
     expected(["naïve café, where is my parcel"], binary_outputs=set(OUTPUTS), column=True)),
    ("raw binary request that looks like JSON", b'{"inputs": []}', " 0",
     expected(['{"inputs": []}'], binary_outputs=set(OUTPUTS), column=True)),
    ("json ids, flat", ids_request([2, 10, 11, 3, 2, 12, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0], [2, 4]),
     None, expected(rows=[[2, 10, 11, 3], [2, 12]])),
    ("json ids, nested", ids_request([[2, 10, 11, 3]], [[1, 1, 1, 1]], [1, 4]), None,
     expected(rows=[[2, 10, 11, 3]])),
    ("a row the mask hides entirely is [0]", ids_request([[5, 6]], [[0, 0]], [1, 2]), None,
     expected(rows=[[0]])),
    ("highest id in the vocabulary", ids_request([[VOCABULARY - 1]], [[1]], [1, 1]), None,
     expected(rows=[[VOCABULARY - 1]])),
    ("binary texts", *binary_request([(HEAD_TEXT, bytes_elements(b"where is my parcel",
                                                                 "naïve".encode()))]),
     expected(["where is my parcel", "naïve"])),
    ("binary ids, mask first", *binary_request([(HEAD_MASK, MASK), (HEAD_IDS, IDS)]),
     expected(rows=[[2, 10]])),
    ("binary texts with outputs named", *binary_request(
        [({**HEAD_TEXT, "shape": [1]}, bytes_elements(b"x"))],
        outputs=[{"name": "probabilities"}]), expected(["x"], outputs=["probabilities"])),
    ("a header length covering the whole body", texts_request("hi"),
     str(len(texts_request("hi"))), expected(["hi"])),
]


@pytest.mark.parametrize(("body", "header", "parsed"), [v[1:] for v in VALID],
                         ids=[v[0] for v in VALID])
def test_valid_requests_parse_as_before(body: bytes, header: str | None,
                                        parsed: InferRequest) -> None:
    assert parse(body, header) == parsed


def test_without_a_vocabulary_any_non_negative_int64_id_passes() -> None:
    big = 2**63 - 1
    assert parse(ids_request([[big]], [[1]], [1, 1]), vocabulary=None).input_ids == [[big]]
    assert "vocabulary" in refused(ids_request([[-1]], [[1]], [1, 1]), vocabulary=None)


def test_json_nesting_up_to_100_levels_passes() -> None:
    deep = {"inputs": [text_input(["hi"])], "x": json.loads("[" * 99 + "]" * 99)}
    assert parse(dumps(deep)).texts == ["hi"]  # the top-level object is level 1
    deep["x"] = json.loads("[" * 100 + "]" * 100)
    assert "nested more than 100 levels" in refused(dumps(deep))


# ---- malformed requests: 4xx with a message naming the problem ---------------------------------

TEXT = text_input(["hi"])
IDS_2x2 = int64_input("input_ids", [[1, 2], [3, 4]], [2, 2])
MASK_2x2 = int64_input("attention_mask", [[1, 1], [1, 1]], [2, 2])


def with_ids(ids: list[Any]) -> bytes:
    """One row of ``ids``, all of them attended."""
    return ids_request([ids], [[1] * len(ids)], [1, len(ids)])


BAD_JSON: list[tuple[str, bytes, str]] = [
    ("not json", b"{not json", "not valid JSON"),
    ("not utf-8", b'{"inputs": "\xff"}', "not UTF-8"),
    ("NaN timeout", b'{"inputs": [], "parameters": {"timeout": NaN}}', "NaN is not a JSON value"),
    ("Infinity in data", b'{"inputs": [{"name": "input_ids", "data": [Infinity]}]}',
     "Infinity is not a JSON value"),
    ("an integer of 5000 digits", b'{"id": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ("nested 1000 deep", b"[" * 1000 + b"]" * 1000, "nested more than 100 levels"),
    ("nested 101 deep", dumps({"inputs": [TEXT], "x": json.loads("[" * 100 + "]" * 100)}),
     "nested more than 100 levels"),
    ("a list", b"[1, 2]", "must be a JSON object"),
    ("no inputs", b"{}", "non-empty 'inputs'"),
    ("empty inputs", b'{"inputs": []}', "non-empty 'inputs'"),
    ("inputs not a list", b'{"inputs": {"name": "text"}}', "non-empty 'inputs'"),
    ("input not an object", b'{"inputs": ["text"]}', "inputs[0] must be an object"),
    ("input name not a string", dumps({"inputs": [{**TEXT, "name": 1}]}), "string 'name'"),
    ("unknown input", dumps({"inputs": [{**TEXT, "name": "txt"}]}), "unknown input(s) ['txt']"),
    ("the same input twice", dumps({"inputs": [TEXT, TEXT]}), "input 'text' is given twice"),
    ("text and ids", dumps({"inputs": [TEXT, IDS_2x2, MASK_2x2]}), "give 'text' or both"),
    ("ids without mask", dumps({"inputs": [IDS_2x2]}), "give 'text' or both"),
    ("wrong datatype", dumps({"inputs": [{**TEXT, "datatype": "FP32"}]}),
     "must have datatype BYTES, got 'FP32'"),
    ("shape not a list", dumps({"inputs": [{**TEXT, "shape": 1}]}), "shape must be a list"),
    ("negative dim", dumps({"inputs": [{**TEXT, "shape": [-1]}]}), "non-negative integers"),
    ("boolean dim", dumps({"inputs": [{**TEXT, "shape": [True]}]}), "non-negative integers"),
    ("float dim", dumps({"inputs": [{**TEXT, "shape": [1.0]}]}), "non-negative integers"),
    ("empty text batch", dumps({"inputs": [text_input([], [0])]}), "the batch is empty"),
    ("empty id batch", ids_request([], [], [0, 4]), "the batch is empty"),
    ("rows without tokens", ids_request([], [], [2, 0]), "at least one token"),
    ("text shape [1, 2]", dumps({"inputs": [text_input(["a", "b"], [1, 2])]}),
     "[batch] or [batch, 1]"),
    ("ids shape [2]", ids_request([1, 2], [1, 1], [2]), "[batch, sequence]"),
    ("too few values", dumps({"inputs": [text_input(["x"], [2])]}),
     "shape [2] needs 2 values, got 1"),
    ("too many values", ids_request([1, 2, 3], [1, 1, 1], [1, 2]), "needs 2 values, got 3"),
    ("no data", dumps({"inputs": [{k: v for k, v in TEXT.items() if k != "data"}]}),
     "has no 'data'"),
    ("data not a list", dumps({"inputs": [{**TEXT, "data": "hi"}]}), "has no 'data'"),
    ("ragged nesting", ids_request([[1, 2, 3], [4]], [[1, 1], [1, 1]], [2, 2]),
     "flat or nested as shape [2, 2]"),
    ("half nested", ids_request([[1, 2], 3, 4], [[1, 1], [1, 1]], [2, 2]),
     "flat or nested as shape [2, 2]"),
    ("nested deeper than the shape", dumps({"inputs": [text_input([["a"]], [1])]}),
     "must hold strings; element 0 is ['a']"),
    ("a number as text", texts_request("a", 7), "must hold strings; element 1 is 7"),
    ("null as text", texts_request("a", None), "element 1 is None"),
    ("blank text", texts_request("a", " \n"), "non-empty strings; element 1 is blank"),
    ("lone surrogate", texts_request("fine", "bad \ud800"), "element 1 is not valid text"),
    ("lone low surrogate", texts_request("\udc80"), "lone surrogate"),
    ("float token id", with_ids([2, 3.7, 3]), "must hold integers; element 1 is 3.7"),
    ("integral float token id", with_ids([2, 3.0]), "element 1 is 3.0"),
    ("boolean token id", with_ids([2, True]), "element 1 is True"),
    ("string token id", with_ids(["2"]), "element 0 is '2'"),
    ("id of 2^70", with_ids([2, 2**70]), "element 1 (1180591620717411303424) is outside the "
     "INT64 range"),
    ("id below INT64", with_ids([-(2**63) - 1]), "outside the INT64 range"),
    ("id beyond the vocabulary", with_ids([2, 1000000, 3]),
     "token id 1000000 at [0, 1] is not in the model's vocabulary (0 .. 499)"),
    ("id just beyond the vocabulary", with_ids([VOCABULARY]), "not in the model's vocabulary"),
    ("negative id", with_ids([-1]), "token id -1 at [0, 0]"),
    ("mask of 2", ids_request([[1, 2]], [[1, 2]], [1, 2]),
     "'attention_mask' must hold 0 or 1; it holds 2 at [0, 1]"),
    ("negative mask", ids_request([[1, 2]], [[-1, 1]], [1, 2]), "must hold 0 or 1"),
    ("float mask", ids_request([[1, 2]], [[1, 0.5]], [1, 2]),
     "input 'attention_mask' must hold integers"),
    ("mask of another shape", dumps({"inputs": [IDS_2x2, int64_input("attention_mask", [1, 1],
                                                                      [1, 2])]}),
     "must both be [batch, sequence]"),
    ("too many tokens", ids_request([1] * 49, [1] * 49, [1, 49]), "at most 48"),
    ("parameters a string on an input", dumps({"inputs": [{**TEXT, "parameters": "x"}]}),
     "input 'text': 'parameters' must be a JSON object, got 'x'"),
    ("parameters a string", texts_request("hi", parameters="x"),
     "request: 'parameters' must be a JSON object"),
    ("parameters a list on an output", texts_request("hi", outputs=[{"name": "label",
                                                                     "parameters": [1]}]),
     "output 'label': 'parameters' must be a JSON object"),
    ("a nested parameter", texts_request("hi", parameters={"x": {"y": 1}}),
     "request: parameter 'x' must be a string, number or boolean, got {'y': 1}"),
    ("outputs not a list", texts_request("hi", outputs={"name": "label"}), "must be a list"),
    ("output not an object", texts_request("hi", outputs=["label"]),
     "outputs[0] must be an object with a string 'name'"),
    ("output name not a string", texts_request("hi", outputs=[{"name": 1}]), "outputs[0]"),
    ("unknown output", texts_request("hi", outputs=[{"name": "scores"}]),
     "unknown output 'scores'"),
    ("the same output twice", texts_request("hi", outputs=[{"name": "label"}, {"name": "label"}]),
     "output 'label' is asked for twice"),
    ("binary_data not a boolean", texts_request("hi", outputs=[
        {"name": "label", "parameters": {"binary_data": "yes"}}]), "must be true or false"),
    ("classification a string", texts_request("hi", outputs=[
        {"name": "probabilities", "parameters": {"classification": "2"}}]),
     "output 'probabilities': parameters.classification must be a non-negative integer (how "
     "many top classes), got '2'"),
    ("classification negative", texts_request("hi", outputs=[
        {"name": "logits", "parameters": {"classification": -1}}]), "non-negative integer"),
    ("classification a float", texts_request("hi", outputs=[
        {"name": "logits", "parameters": {"classification": 2.0}}]), "got 2.0"),
    ("classification a boolean", texts_request("hi", outputs=[
        {"name": "logits", "parameters": {"classification": True}}]), "got True"),
    ("classification beyond the classes", texts_request("hi", outputs=[
        {"name": "probabilities", "parameters": {"classification": CLASSES + 1}}]),
     "output 'probabilities': classification 5 asks for more classes than the model has; ask "
     "for 1 .. 4"),
    ("classification of the label", texts_request("hi", outputs=[
        {"name": "label", "parameters": {"classification": 1}}]),
     "output 'label' is BYTES and has no class scores to rank"),
    ("binary_data_output not a boolean", texts_request(
        "hi", parameters={"binary_data_output": 1}),
     "parameters.binary_data_output must be true or false, got 1"),
    ("shared memory output", texts_request("hi", outputs=[
        {"name": "label", "parameters": {"shared_memory_region": "r", "binary_data": False}}]),
     "output 'label': shared memory is not supported"),
    ("shared memory input", dumps({"inputs": [{**TEXT, "parameters": {
        "shared_memory_region": "r", "shared_memory_byte_size": 8}}]}),
     "input 'text': shared memory is not supported"),
    ("numeric id", texts_request("hi", id=7), "'id' must be a string, got 7"),
    ("timeout a string", texts_request("hi", parameters={"timeout": "5"}),
     "parameters.timeout must be a number of microseconds from 0 to 18446744073709551615 (0: "
     "the server's timeout), got '5'"),
    ("timeout negative", texts_request("hi", parameters={"timeout": -1}), "microseconds from 0"),
    ("timeout a boolean", texts_request("hi", parameters={"timeout": True}), "got True"),
    ("timeout 1e999 (inf)", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
     b'"data": ["hi"]}], "parameters": {"timeout": 1e999}}', "got inf"),
    ("timeout beyond UINT64", texts_request("hi", parameters={"timeout": 2**64}),
     "microseconds from 0 to 18446744073709551615"),
    ("timeout beyond float", texts_request("hi", parameters={"timeout": 10**400}),
     "microseconds from 0"),
]


@pytest.mark.parametrize(("body", "message"), [b[1:] for b in BAD_JSON],
                         ids=[b[0] for b in BAD_JSON])
def test_malformed_json_requests_get_4xx_naming_the_problem(body: bytes, message: str) -> None:
    assert message in refused(body)


TEXT_HEAD = {"name": "text", "shape": [1], "datatype": "BYTES"}


def binary(elements: bytes, shape: int = 1, **fields: Any) -> tuple[bytes, str]:
    return binary_request([({**TEXT_HEAD, "shape": [shape]}, elements)], **fields)


def sized(size: Any) -> tuple[bytes, str]:
    head = dumps({"inputs": [{**TEXT_HEAD, "parameters": {"binary_data_size": size}}]})
    return head + bytes_elements(b"hi"), str(len(head))


BAD_BINARY: list[tuple[str, tuple[bytes, str | None], str]] = [
    ("header length not a number", (b"{}", "abc"), "must be a non-negative integer, got 'abc'"),
    ("negative header length", (b"{}", "-1"), "non-negative integer"),
    ("non-ASCII digit header length", (b"{}", "\u00b2"), "non-negative integer"),
    ("underscored header length", (b"{}", "1_0"), "non-negative integer"),
    ("header length past the body", (b"{}", "3"), "exceeds the body (2 bytes)"),
    ("header length of 30 digits", (b"{}", "9" * 30), "exceeds the body"),
    ("binary_data_size a string", sized("abc"), "binary_data_size must be a non-negative integer"),
    ("binary_data_size negative", sized(-1), "non-negative integer, got -1"),
    ("binary_data_size a float", sized(6.0), "non-negative integer, got 6.0"),
    ("binary_data_size a boolean", sized(True), "non-negative integer, got True"),
    ("binary_data_size past the body", sized(7), "binary_data_size 7 runs past the end of the "
     "body (6 bytes of binary data left)"),
    ("binary data without the header", (sized(6)[0][:int(sized(6)[1])], None),
     "no Inference-Header-Content-Length header"),
    ("data and binary_data_size", binary_request([({**TEXT, "shape": [1]}, bytes_elements(b"x"))]),
     "has both 'data' and binary_data_size"),
    ("trailing bytes", binary(bytes_elements(b"hi"), trailing=b"\0"),
     "1 bytes after the JSON header belong to no input"),
    ("binary bytes but no binary input", (texts_request("hi") + b"junk",
                                          str(len(texts_request("hi")))), "4 bytes"),
    ("INT64 not a multiple of 8", binary_request(
        [(HEAD_IDS, IDS[:-1]), (HEAD_MASK, MASK)]), "binary_data_size 23 is not a whole number"),
    ("BYTES length of 2^31 and 3 bytes", binary(struct.pack("<I", 2**31) + b"abc"),
     "element 0 declares 2147483648 bytes, but its binary data has 3 left"),
    ("BYTES length cut off", binary(bytes_elements(b"ok") + b"\x01\x00", 2),
     "element 1 has 2 bytes left for its 4-byte length"),
    ("BYTES invalid UTF-8", binary(bytes_elements(b"ok", b"caf\xe9"), 2),
     "element 1 is not valid UTF-8 (unexpected end of data at byte 3)"),
    ("BYTES encoded surrogate", binary(bytes_elements(b"\xed\xa0\x80")), "element 0 is not valid "
     "UTF-8"),
    ("BYTES fewer elements than the shape", binary(bytes_elements(b"a", b"b"), 3),
     "shape [3] needs 3 values, got 2"),
    ("BYTES empty element", binary(bytes_elements(b"")), "element 0 is blank"),
    ("binary INT64 too few values", binary_request([(HEAD_IDS, IDS[:16]), (HEAD_MASK, MASK)]),
     "shape [1, 3] needs 3 values, got 2"),
    ("raw binary request without a body", (b"", "0"),
     "raw binary request (Inference-Header-Content-Length: 0) with an empty body"),
    ("raw binary request not UTF-8", (b"caf\xe9", "0"), "raw binary request: the body is not valid "
     "UTF-8 (unexpected end of data at byte 3)"),
    ("raw binary request of blanks", (b" \n\t", "0"), "element 0 is blank"),
    ("binary id beyond the vocabulary", binary_request(
        [(HEAD_IDS, np.array([2, 10**6, 3], "<i8").tobytes()), (HEAD_MASK, MASK)]),
     "token id 1000000 at [0, 1]"),
]


@pytest.mark.parametrize(("request_", "message"), [b[1:] for b in BAD_BINARY],
                         ids=[b[0] for b in BAD_BINARY])
def test_malformed_binary_requests_get_4xx_naming_the_problem(
        request_: tuple[bytes, str | None], message: str) -> None:
    assert message in refused(*request_)


def test_errors_quote_at_most_a_short_excerpt_of_what_was_sent() -> None:
    for body in (dumps({"inputs": [{**TEXT, "datatype": "x" * 100_000}]}),
                 texts_request("hi", outputs=[{"name": "y" * 100_000}]),
                 texts_request("hi", id=list(range(100_000)))):
        assert len(refused(body)) < 200


# ---- answers: classification strings, binary outputs ----------------------------------------------

LABELS = ["account", "billing", "shipping", "technical"]


def test_top_classes_are_triton_s_value_index_label_strings() -> None:
    # as Triton's std::to_string(float): six decimals; highest first, ties to the lower index
    assert top_classes([0.1, 0.7, 0.1, 0.1], 3, LABELS) == [
        "0.700000:1:billing", "0.100000:0:account", "0.100000:2:shipping"]
    assert top_classes([-2.5, 3.25], 1, []) == ["3.250000:1"]  # no labels: "value:index"


def test_classification_answers_shape_batch_by_k_in_json_and_binary() -> None:
    logits = [[1.0, 4.0, 2.0, 3.0], [0.5, -1.0, 9.0, 0.0]]
    probabilities = [[0.1, 0.6, 0.1, 0.2], [0.2, 0.1, 0.6, 0.1]]
    request = parse(texts_request("a", "b", outputs=[
        {"name": "logits", "parameters": {"classification": 2}},
        {"name": "probabilities", "parameters": {"classification": 1, "binary_data": True}}]))
    body, headers = build_infer_response("clf", "1", request, logits, probabilities,
                                         ["billing", "shipping"], LABELS)
    head = int(headers["inference-header-content-length"])
    answer = json.loads(body[:head])
    by_logits, by_probabilities = answer["outputs"]
    assert by_logits == {"name": "logits", "datatype": "BYTES", "shape": [2, 2], "data": [
        "4.000000:1:billing", "3.000000:3:technical", "9.000000:2:shipping", "0.500000:0:account"]}
    assert by_probabilities["datatype"] == "BYTES" and by_probabilities["shape"] == [2, 1]
    assert body[head:] == bytes_elements(b"0.600000:1:billing", b"0.600000:2:shipping")
    assert by_probabilities["parameters"] == {"binary_data_size": len(body) - head}


def test_binary_data_output_makes_every_output_binary() -> None:
    request = parse(texts_request("a", parameters={"binary_data_output": True}))
    body, headers = build_infer_response("clf", "1", request, [[1.0, 2.0]], [[0.25, 0.75]],
                                         ["billing"])
    assert headers["content-type"] == "application/octet-stream"
    head = int(headers["inference-header-content-length"])
    outputs = json.loads(body[:head])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [8, 8, 11]
    assert all("data" not in o for o in outputs)
    assert body[head:] == (struct.pack("<2f", 1.0, 2.0) + struct.pack("<2f", 0.25, 0.75)
                           + bytes_elements(b"billing"))


@pytest.mark.parametrize(("body", "ready_only"), [
    (b"", False), (b" \n", False), (b"{}", False), (b'{"ready": false}', False),
    (b'{"ready": true}', True), (b'{"ready": null, "other": 1}', False)])
def test_a_repository_index_request_is_empty_or_asks_for_ready_models(body: bytes,
                                                                      ready_only: bool) -> None:
    assert parse_index_request(body) is ready_only


@pytest.mark.parametrize(("body", "message"), [
    (b"[true]", "must be empty or a JSON object"), (b'{"ready": "yes"}', "must be true or false"),
    (b"{", "not valid JSON")])
def test_a_malformed_repository_index_request_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_index_request(body)


@pytest.mark.parametrize(("shape", "label_shape"), [([2], [2]), ([2, 1], [2, 1])])
def test_the_label_keeps_the_shape_the_text_came_in(shape: list[int],
                                                    label_shape: list[int]) -> None:
    # Triton's clients send a dims [1] input as [batch, 1] and read [batch, 1] back
    request = parse(dumps({"inputs": [text_input(["a", "b"], shape)]}))
    body, _ = build_infer_response("clf", "1", request, [[0.0] * 4] * 2, [[0.25] * 4] * 2,
                                   ["billing", "billing"], LABELS)
    label = next(o for o in json.loads(body)["outputs"] if o["name"] == "label")
    assert label["shape"] == label_shape and label["data"] == ["billing", "billing"]
