"""Fuzzing the infer route of the real app, in process: whatever a request holds, it gets a 4xx
(never a 5xx) with a JSON body, and the request batched with it still gets its right answer.
Requests carry the Triton extensions' fields too (timeouts in microseconds, binary_data_output,
classification, raw binary requests) and compressed bodies, right and wrong."""

from __future__ import annotations

import asyncio
import copy
import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.runtime import load_predictor
from kiln.serve.app import build_app
from kiln.serve.asgi import ASGIApp, Message
from kiln.serve.protocol import OUTPUTS, ProtocolError, parse_infer_request
from kiln.serve.repository import discover_models
from kiln.serve.settings import ServeSettings

pytestmark = pytest.mark.slow

INFER = "/v2/models/clf/infer"
GOOD_TEXT = "where is my parcel, it has not arrived"
VOCABULARY, MAX_LENGTH = 500, 48  # tiny_overrides' model.vocab_size and data.max_length
# ONNX Runtime refuses token ids outside the vocabulary (OpenVINO reads past the table): a bad
# request that reached the model would fail its whole batch, and the test would see it
ARTIFACT = "onnx-fp32"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The JSON part of the body (all of it, unless the answer uses binary outputs), once
        decompressed if the answer is."""
        body = decoded(self.body, self.headers.get("content-encoding"))
        head = self.headers.get("inference-header-content-length")
        return json.loads(body if head is None else body[:int(head)])


def decoded(body: bytes, coding: str | None) -> bytes:
    """``body`` decompressed from ``coding`` (gzip, deflate; as it is for anything else)."""
    coding = (coding or "").strip().lower()
    if coding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    return zlib.decompress(body) if coding == "deflate" else body


class Client:
    """A started app on its own event loop, driven one exchange at a time, without sockets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()  # lifespan messages
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.lifespan: asyncio.Task[None] | None = None

    def run(self, *requests: tuple[str, bytes, list[tuple[bytes, bytes]]]) -> list[Answer]:
        """The answers to ``requests`` (path, body, headers), sent together (so they can share a
        batch)."""
        async def together() -> list[Answer]:
            return list(await asyncio.gather(*(self.post(*r) for r in requests)))

        return self.loop.run_until_complete(together())

    async def post(self, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> Answer:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
                 "server": ("127.0.0.1", 8000),
                 # a real HTTP server checks Content-Length itself: it is never fuzzed
                 "headers": [(b"content-length", str(len(body)).encode()), *headers]}
        incoming = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start, rest = sent[0], sent[1:]
        assert start["type"] == "http.response.start"
        headers_ = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
        return Answer(start["status"], headers_, b"".join(m.get("body", b"") for m in rest))

    def start(self) -> None:
        """Run the app's lifespan startup (loads the model) and wait until it is done."""
        async def startup() -> Message:
            self.lifespan = asyncio.ensure_future(
                self.app({"type": "lifespan"}, self.to_app.get, self.from_app.put))
            await self.to_app.put({"type": "lifespan.startup"})
            return await self.from_app.get()

        assert self.loop.run_until_complete(startup())["type"] == "lifespan.startup.complete"

    def stop(self) -> None:
        async def shutdown() -> Message:
            await self.to_app.put({"type": "lifespan.shutdown"})
            answer = await self.from_app.get()
            assert self.lifespan is not None
            await self.lifespan
            return answer

        assert self.loop.run_until_complete(shutdown())["type"] == "lifespan.shutdown.complete"
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture(scope="module")
def client(exported_run: Path) -> Iterator[Client]:
    app = build_app(discover_models(exported_run, "clf"),
                    ServeSettings(threads=1, max_queue_delay_ms=1.0, artifact=ARTIFACT))
    running = Client(app)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def good_label(exported_run: Path) -> str:
    return load_predictor(exported_run, ARTIFACT).predict([GOOD_TEXT]).labels[0]


def good_request() -> tuple[str, bytes, list[tuple[bytes, bytes]]]:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [GOOD_TEXT]}],
            "outputs": [{"name": "label"}]}
    return INFER, json.dumps(body).encode(), [(b"content-type", b"application/json")]


def short_deadline(body: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether ``body`` is a valid request with a timeout under a second: a 503 (cannot be
    reached in time) or 504 (timed out) is then its right answer, not a server fault."""
    fields = {name.lower(): value.decode("latin-1") for name, value in headers}
    header = fields.get(b"inference-header-content-length")
    try:
        parsed = parse_infer_request(decoded(body, fields.get(b"content-encoding")), header,
                                     MAX_LENGTH, vocabulary=VOCABULARY)
    except (ProtocolError, OSError, EOFError, zlib.error):  # gzip raises the first two
        return False
    return parsed.timeout_s is not None and parsed.timeout_s < 1


def exchange(client: Client, good_label: str, path: str, body: bytes,
             headers: list[tuple[bytes, bytes]]) -> Answer:
    """Send the fuzzed request together with a good one; check both answers (the fuzzed one's
    returned)."""
    fuzzed, good = client.run((path, body, headers), good_request())
    if fuzzed.status >= 500:
        assert fuzzed.status in (503, 504) and short_deadline(body, headers), fuzzed
    assert isinstance(fuzzed.json(), dict), fuzzed
    if fuzzed.status >= 400:
        assert isinstance(fuzzed.json()["error"], str)
    assert good.status == 200, good
    assert good.json()["outputs"][0]["data"] == [good_label]
    return fuzzed


# ---- what the fuzzer sends ---------------------------------------------------------------------

ANY_CHAR = st.one_of(st.characters(), st.characters(categories=["Cs"]))  # with lone surrogates
WILD_TEXT = st.lists(ANY_CHAR, max_size=12).map("".join)  # st.text() would drop the surrogates
LATIN1 = st.text(st.characters(max_codepoint=255), max_size=16)
TEXTS = st.one_of(st.text(min_size=1, max_size=30).filter(str.strip),
                  st.sampled_from([GOOD_TEXT, "naïve café 😀", "[{", "\x00 zero"]))
INTS = st.one_of(st.integers(-3, VOCABULARY + 3), st.integers(),
                 st.integers(2**62, 2**80), st.integers(-(2**80), -(2**62)))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), WILD_TEXT)
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(WILD_TEXT, inner, max_size=4), max_leaves=8)
OUTPUT: st.SearchStrategy[dict[str, Any]] = st.builds(
    lambda name, params: {"name": name, "parameters": params},
    st.sampled_from(OUTPUTS), st.fixed_dictionaries({}, optional={
        "binary_data": st.booleans(),
        "classification": st.one_of(st.integers(1, 4), st.integers(-1, 6))}))  # 4 classes
REQUESTED = st.lists(OUTPUT, max_size=3, unique_by=lambda o: str(o["name"]))
# microseconds, as Triton and tritonclient send them: from none at all (0) to a minute
TIMEOUTS = st.one_of(st.integers(0, 60_000_000), st.floats(0, 6e7), st.just(2**64 - 1))
FIELDS = st.fixed_dictionaries({}, optional={
    "id": st.text(max_size=8),
    "outputs": REQUESTED,
    "parameters": st.fixed_dictionaries({}, optional={"timeout": TIMEOUTS,
                                                      "binary_data_output": st.booleans()}),
})
CODINGS = ["gzip", "deflate", "identity", "x-gzip", "GZIP", "br", "gzip, deflate", ""]
HEADER_NAMES = st.one_of(st.sampled_from(["content-type", "authorization", "accept",
                                          "inference-header-content-length",
                                          "content-encoding", "accept-encoding"]),
                         st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10)
                         .filter(lambda n: n != "content-length"))
HEADER_VALUES = st.one_of(LATIN1, st.sampled_from(CODINGS + ["0", "deflate;q=0.5, gzip;q=0"]))
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES).map(
    lambda h: (h[0].encode(), h[1].encode("latin-1"))), max_size=3)
PATHS = st.sampled_from([INFER] * 8 + ["/v2/models/clf/versions/1/infer",
                                       "/v2/models/clf/versions/2/infer", "/v2/models/x/infer"])


@st.composite
def text_requests(draw: st.DrawFn) -> dict[str, Any]:
    wild = draw(st.booleans())  # half the texts are fine, half may be anything
    texts = draw(st.lists(TEXTS | WILD_TEXT if wild else TEXTS, min_size=1, max_size=4))
    shape = draw(st.sampled_from([[len(texts)], [len(texts), 1]]))
    data: list[Any] = [[t] for t in texts] if len(shape) == 2 and draw(st.booleans()) else texts
    return {"inputs": [{"name": "text", "shape": shape, "datatype": "BYTES", "data": data}],
            **draw(FIELDS)}


@st.composite
def id_requests(draw: st.DrawFn) -> dict[str, Any]:
    rows, seq = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    wild = draw(st.booleans())  # half the ids and masks are fine, half may be any integer
    ids = draw(st.lists(st.integers(0, VOCABULARY - 1) | INTS if wild else
                        st.integers(0, VOCABULARY - 1), min_size=rows * seq, max_size=rows * seq))
    mask = draw(st.lists(st.integers(0, 1) | INTS if wild else st.integers(0, 1),
                         min_size=rows * seq, max_size=rows * seq))
    nested = draw(st.booleans())  # else flat, in row-major order

    def data(flat: list[int]) -> list[Any]:
        return [flat[r * seq:(r + 1) * seq] for r in range(rows)] if nested else flat

    inputs = [{"name": "input_ids", "shape": [rows, seq], "datatype": "INT64", "data": data(ids)},
              {"name": "attention_mask", "shape": [rows, seq], "datatype": "INT64",
               "data": data(mask)}]
    return {"inputs": draw(st.permutations(inputs)), **draw(FIELDS)}


def places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value in a JSON document (the root's is ())."""
    children = (value.items() if isinstance(value, dict)
                else enumerate(value) if isinstance(value, list) else [])
    return [path] + [p for key, child in children for p in places(child, (*path, key))]


@st.composite
def mutated(draw: st.DrawFn, requests: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A request with up to three of its values replaced, deleted, duplicated, or joined by junk."""
    doc: Any = copy.deepcopy(draw(requests))
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(places(doc)))
        if not path:
            doc = draw(JUNK) if draw(st.booleans()) else doc
            continue
        parent, key = doc, path[-1]
        for step in path[:-1]:
            parent = parent[step]
        edit = draw(st.sampled_from(["replace", "delete", "insert", "duplicate"]))
        if edit == "replace":
            parent[key] = draw(JUNK)
        elif edit == "delete":
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(key, draw(JUNK) if edit == "insert" else copy.deepcopy(parent[key]))
        else:
            parent[draw(WILD_TEXT)] = draw(JUNK) if edit == "insert" else copy.deepcopy(
                parent[key])
    return doc


@st.composite
def raw_edits(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` as it is, cut short, with bytes spliced in, nested deep, or with a number
    replaced by NaN, Infinity, 1e999 or an integer of thousands of digits."""
    edit = draw(st.sampled_from(["none", "none", "cut", "splice", "nest", "constant"]))
    at = draw(st.integers(0, len(body)))
    if edit == "cut":
        return body[:at]
    if edit == "splice":
        return body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
    if edit == "nest":
        depth = draw(st.sampled_from([99, 100, 101, 1000, 5000]))
        return b'{"inputs": ' + b"[" * depth + body + b"]" * depth + b"}"
    if edit == "constant":
        constant = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0",
                                         b"9" * 5000, b"1" * 30]))
        return body.replace(b"1", constant, 1) if b"1" in body else body
    return body


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    doc = draw(mutated(st.one_of(text_requests(), id_requests())))
    return draw(raw_edits(json.dumps(doc).encode()))


def length_prefixed(elements: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


@st.composite
def binary_input(draw: st.DrawFn, name: str, rows: int, seq: int) -> tuple[dict[str, Any], bytes]:
    """One input's JSON spec and its binary chunk, each maybe broken."""
    if name == "text":
        elements = draw(st.lists(st.one_of(TEXTS.map(lambda t: t.encode("utf-8")),
                                           st.binary(max_size=8)), min_size=rows, max_size=rows))
        chunk, shape, dtype = length_prefixed(elements), [rows], "BYTES"
    else:
        values = st.integers(0, VOCABULARY - 1) if name == "input_ids" else st.integers(0, 1)
        flat = draw(st.lists(values, min_size=rows * seq, max_size=rows * seq))
        chunk, shape, dtype = np.array(flat, "<i8").tobytes(), [rows, seq], "INT64"
    chunk = draw(st.one_of(st.just(chunk), st.binary(max_size=40),
                           st.integers(0, len(chunk)).map(lambda n: chunk[:n])))
    size = draw(st.one_of(st.just(len(chunk)), st.just(len(chunk)), JUNK))
    return {"name": name, "shape": shape, "datatype": dtype,
            "parameters": {"binary_data_size": size}}, chunk


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(body, headers) of a binary-extension request, with a right or wrong header length."""
    rows, seq = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    names = draw(st.sampled_from([["text"], ["input_ids", "attention_mask"],
                                  ["attention_mask", "input_ids"], ["text", "text"]]))
    inputs = [draw(binary_input(name, rows, seq)) for name in names]
    head = json.dumps(draw(mutated(st.just({"inputs": [spec for spec, _ in inputs]})))).encode()
    body = head + b"".join(chunk for _, chunk in inputs) + draw(st.one_of(
        st.just(b""), st.just(b""), st.binary(max_size=9)))
    length = draw(st.one_of(st.just(str(len(head))), st.just(str(len(head))),
                            st.integers(-2, len(body) + 2).map(str), LATIN1))
    return body, [(b"inference-header-content-length", length.encode("latin-1"))]


FUZZ = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(FUZZ, max_examples=600)
@given(body=json_bodies(), headers=HEADERS, path=PATHS)
def test_fuzzed_json_requests_get_4xx_and_spare_their_batch(
        client: Client, good_label: str, body: bytes, headers: list[tuple[bytes, bytes]],
        path: str) -> None:
    exchange(client, good_label, path, body, headers)


@settings(FUZZ, max_examples=400)
@given(request=binary_bodies(), headers=HEADERS)
def test_fuzzed_binary_requests_get_4xx_and_spare_their_batch(
        client: Client, good_label: str, request: tuple[bytes, list[tuple[bytes, bytes]]],
        headers: list[tuple[bytes, bytes]]) -> None:
    body, binary_headers = request
    exchange(client, good_label, INFER, body, binary_headers + headers)


@settings(FUZZ, max_examples=100)
@given(body=st.binary(max_size=200), headers=HEADERS)
def test_fuzzed_bytes_get_4xx(client: Client, good_label: str, body: bytes,
                              headers: list[tuple[bytes, bytes]]) -> None:
    exchange(client, good_label, INFER, body, headers)


CLASSIFIED = st.lists(st.builds(
    lambda name, k, binary: {"name": name, "parameters": {"classification": k,
                                                          "binary_data": binary}},
    st.sampled_from(["logits", "probabilities"]), st.integers(0, 4), st.booleans()),
    min_size=1, max_size=2, unique_by=lambda o: str(o["name"]))


@settings(FUZZ, max_examples=150)
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), outputs=CLASSIFIED,
       extra=st.sampled_from(["label", None]), binary=st.booleans(),
       timeout=st.one_of(st.none(), TIMEOUTS),
       coding=st.sampled_from(["gzip", "deflate", "identity"]))
def test_fuzzed_valid_requests_of_the_extensions_are_answered(
        client: Client, good_label: str, texts: list[str], outputs: list[dict[str, Any]],
        extra: str | None, binary: bool, timeout: float | None, coding: str) -> None:
    """Valid requests using classification, binary_data_output, timeouts and compressed bodies
    and answers: answered (200, or 503/504 for a deadline under a second), in the right shape."""
    request = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                           "data": texts}],
               "outputs": outputs + ([{"name": extra}] if extra else []),
               "parameters": {"binary_data_output": binary,
                              **({} if timeout is None else {"timeout": timeout})}}
    body = json.dumps(request).encode()
    headers = [(b"accept-encoding", coding.encode())]
    if coding != "identity":
        body = gzip.compress(body) if coding == "gzip" else zlib.compress(body)
        headers.append((b"content-encoding", coding.encode()))
    answer = exchange(client, good_label, INFER, body, headers)
    if answer.status != 200:
        assert answer.status in (503, 504) and short_deadline(body, headers), answer
        return
    for output in answer.json()["outputs"]:
        top_k = next((o["parameters"]["classification"] for o in outputs
                      if o["name"] == output["name"]), 0)
        if top_k:
            assert output["datatype"] == "BYTES" and output["shape"] == [len(texts), top_k]


@st.composite
def compressed_bodies(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(body, headers) of a JSON request compressed right or wrong (cut, spliced, a zip bomb, or
    another coding than the header says), with an Accept-Encoding perhaps."""
    coding = draw(st.sampled_from(["gzip", "deflate"]))
    sent = draw(st.sampled_from([coding] * 3 + CODINGS))
    unmutated = st.one_of(text_requests(), id_requests()).map(lambda r: json.dumps(r).encode())
    plain = draw(st.one_of(unmutated, json_bodies()))  # most of the first get answered: 200
    if draw(st.integers(0, 9)) == 0:  # expands past the 4 MiB limit
        plain += b" " * (5 << 20)
    body = gzip.compress(plain) if coding == "gzip" else zlib.compress(plain)
    body = draw(st.one_of(st.just(body), st.just(body), raw_edits(body)))
    headers = [(b"content-encoding", sent.encode())]
    if draw(st.booleans()):
        headers.append((b"accept-encoding", draw(st.sampled_from(CODINGS)).encode()))
    return body, headers


@settings(FUZZ, max_examples=200)
@given(request=compressed_bodies())
def test_fuzzed_compressed_requests_get_4xx_and_spare_their_batch(
        client: Client, good_label: str,
        request: tuple[bytes, list[tuple[bytes, bytes]]]) -> None:
    exchange(client, good_label, INFER, *request)


def test_after_the_fuzzing_real_texts_get_the_predictors_labels(
        client: Client, exported_run: Path, small_dataset: tuple[Path, Path]) -> None:
    with open(small_dataset[1], encoding="utf-8", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:12]
    expected = load_predictor(exported_run, ARTIFACT).predict(texts).labels
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                        "data": texts}], "outputs": [{"name": "label"}]}
    (batch,) = client.run((INFER, json.dumps(body).encode(), []))
    assert batch.status == 200 and batch.json()["outputs"][0]["data"] == expected
    one_by_one = client.run(*((INFER, json.dumps({**body, "inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]}).encode(), [])
        for t in texts))
    assert [a.json()["outputs"][0]["data"][0] for a in one_by_one] == expected

