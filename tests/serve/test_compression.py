"""Compressed request and response bodies: gzip and deflate decode as tritonclient sends them, the
size limit holds for what a body decompresses to (a zip bomb is refused after at most the limit,
never held in memory), broken bodies are 4xx, and answers compress as Accept-Encoding asks."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib

import pytest

from kiln.serve.asgi import HttpRequest, Message
from kiln.serve.compression import compress, response_coding
from kiln.serve.errors import ServeError

BODY = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}' * 50


def read(body: bytes, coding: str | None, limit: int = 1 << 20,
         piece: int = 1000) -> tuple[bytes, int]:
    """(what HttpRequest.body reads from ``body`` sent in pieces, how many pieces it took)."""
    pieces = [body[i:i + piece] for i in range(0, len(body), piece)] or [b""]
    taken = 0

    async def receive() -> Message:
        nonlocal taken
        taken += 1
        return {"type": "http.request", "body": pieces[taken - 1],
                "more_body": taken < len(pieces)}

    headers = {} if coding is None else {"content-encoding": coding}
    request = HttpRequest("POST", "/v2/models/clf/infer", {}, headers, receive)
    return asyncio.run(request.body(limit)), taken


def refused(body: bytes, coding: str | None, limit: int = 1 << 20) -> ServeError:
    with pytest.raises(ServeError) as caught:
        read(body, coding, limit)
    return caught.value


@pytest.mark.parametrize(("coding", "encoded"), [
    ("gzip", gzip.compress(BODY)),  # what tritonclient's request_compression_algorithm sends
    ("deflate", zlib.compress(BODY)),
    ("GZIP", gzip.compress(BODY)),  # codings are case-insensitive
    ("x-gzip", gzip.compress(BODY)),
    (" deflate ", zlib.compress(BODY)),
    ("gzip", gzip.compress(BODY[:100]) + gzip.compress(BODY[100:])),  # two gzip members
    ("identity", BODY), ("", BODY), (None, BODY),
])
def test_compressed_bodies_decode_to_what_was_sent(coding: str | None, encoded: bytes) -> None:
    assert read(encoded, coding)[0] == BODY


def test_a_zip_bomb_is_refused_at_the_limit_without_being_decoded_in_full() -> None:
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join(stream.compress(zeros) for _ in range(256)) + stream.flush()  # 256 MiB
    assert len(bomb) < 300_000  # well under any request limit as sent
    tracemalloc.start()
    try:
        with pytest.raises(ServeError) as caught:
            read(bomb, "gzip", limit=1 << 20, piece=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413
    assert "decompresses to more than 1048576 bytes" in str(caught.value)
    assert peak < 8 << 20  # at most about the limit decoded, never the 256 MiB


def test_the_decoded_size_may_reach_the_limit_exactly() -> None:
    body, pieces = read(gzip.compress(bytes(5000)), "gzip", limit=5000, piece=10)
    assert body == bytes(5000) and pieces > 1
    assert refused(gzip.compress(bytes(5001)), "gzip", limit=5000).status == 413


@pytest.mark.parametrize(("coding", "body", "message"), [
    ("gzip", b"not gzip at all", "request body is not valid gzip data"),
    ("deflate", gzip.compress(BODY), "not valid deflate data"),  # a gzip body labelled deflate
    ("deflate", zlib.compress(BODY)[2:], "not valid deflate data"),  # bare deflate, no zlib
    ("gzip", gzip.compress(BODY)[:-20], "ends before its gzip data does"),
    ("gzip", b"", "ends before its gzip data does"),
    ("deflate", zlib.compress(BODY) + b"junk", "4 bytes after the end of its deflate data"),
    ("gzip", gzip.compress(BODY) + b"junk", "not valid gzip data"),
])
def test_bodies_that_do_not_decompress_get_400(coding: str, body: bytes, message: str) -> None:
    error = refused(body, coding)
    assert error.status == 400 and message in str(error)


@pytest.mark.parametrize("coding", ["br", "gzip, deflate", "compress", "zstd"])
def test_unknown_codings_get_415_listing_those_accepted(coding: str) -> None:
    error = refused(b"x", coding)
    assert error.status == 415 and "is not supported" in str(error)
    assert error.headers == {"accept-encoding": "gzip, deflate"}


@pytest.mark.parametrize(("accept", "coding"), [
    ("gzip", "gzip"), ("deflate", "deflate"),  # what response_compression_algorithm sends
    (None, None), ("", None), ("identity", None), ("br, *", None),
    ("deflate, gzip", "deflate"),  # equal weights: the first listed
    ("deflate;q=0.5, gzip", "gzip"), ("gzip;q=0, deflate;q=0.1", "deflate"),
    ("gzip;q=0", None), ("gzip;q=abc, deflate;q=2", None), ("GZip ; Q=0.8", "gzip"),
    ("x-gzip", "gzip"),
])
def test_answers_compress_as_accept_encoding_weighs_the_codings(accept: str | None,
                                                                coding: str | None) -> None:
    assert response_coding(accept) == coding


def test_compressed_answers_decompress_as_tritonclient_reads_them() -> None:
    assert gzip.decompress(compress(BODY, "gzip")) == BODY
    assert zlib.decompress(compress(BODY, "deflate")) == BODY
    assert len(compress(BODY, "gzip")) < len(BODY) // 10
