"""Compressed bodies: gzip and deflate, as ``tritonclient.http`` sends and asks for them.

A request's ``Content-Encoding`` says how its body is compressed (``request_compression_algorithm``);
its ``Accept-Encoding`` says how the answer may be (``response_compression_algorithm``). "deflate"
is the zlib format (RFC 9110 section 8.4.1.2; what ``zlib.compress`` writes and tritonclient
sends), not a bare deflate stream.

A compressed body is decoded piece by piece as it arrives, and refused the moment its decoded size
passes the limit: a few kilobytes of gzip can expand to gigabytes (a zip bomb), so nothing is ever
decoded in full before it is measured.
"""

from __future__ import annotations

import reprlib
import zlib

from kiln.serve.errors import ServeError, TooLarge

# zlib's window bits for each content coding: 16 + 15 reads and writes the gzip wrapper
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPTED = "gzip, deflate"  # the Accept-Encoding sent with a 415, as Triton does
# Compressing runs on the event loop: level 1 takes half the time of zlib's default 6 for 4% more
# bytes (a 32-row answer of 5.8 KB: 84 against 162 us, 2.9 against 2.8 KB; measured)
LEVEL = 1


class BodyDecoder:
    """Decodes one request body of content coding ``coding``, refusing it once it decodes to
    more than ``limit`` bytes."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding, self.limit, self.size = coding, limit, 0
        self._stream = zlib.decompressobj(WBITS[coding])

    def decode(self, data: bytes) -> bytes:
        """The decoded bytes of the next piece of the body.

        Raises:
            TooLarge: the body decodes to more than ``limit`` bytes (413).
            ServeError: the piece is not valid data of the coding (400).
        """
        pieces = []
        while data:
            try:  # at most one byte past the limit: enough to know it is passed
                piece = self._stream.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise ServeError(f"request body is not valid {self.coding} data "
                                 f"(Content-Encoding: {self.coding}): {exc}") from None
            self.size += len(piece)
            if self.size > self.limit:
                raise TooLarge(f"request body decompresses to more than {self.limit} bytes, the "
                               "limit (--max-request-bytes)")
            pieces.append(piece)
            data = self._next_member()
        return b"".join(pieces)

    def _next_member(self) -> bytes:
        """What follows the end of the compressed data in the last piece: another gzip member
        (RFC 1952 allows several), started here; nothing else may follow."""
        if not self._stream.eof or not self._stream.unused_data:
            return b""
        if self.coding == "deflate":
            raise ServeError(f"request body has {len(self._stream.unused_data)} bytes after the "
                             "end of its deflate data")
        rest = self._stream.unused_data
        self._stream = zlib.decompressobj(WBITS[self.coding])
        return rest

    def finish(self) -> None:
        """Raises: ServeError: the body ended inside its compressed data (400)."""
        if not self._stream.eof:
            raise ServeError(f"request body ends before its {self.coding} data does (cut short, "
                             "or not compressed at all?)")


def body_decoder(content_encoding: str | None, limit: int) -> BodyDecoder | None:
    """The decoder of a body sent with ``Content-Encoding: content_encoding`` (None: the body is
    as sent).

    Raises:
        ServeError: a coding other than gzip, deflate or identity (415, listing those accepted).
    """
    if content_encoding is None:
        return None
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in WBITS:
        raise ServeError(f"Content-Encoding {reprlib.repr(content_encoding)} is not supported; "
                         "compress the body with gzip or deflate (one coding), or not at all",
                         415, {"accept-encoding": ACCEPTED})
    return BodyDecoder(coding, limit)


def response_coding(accept_encoding: str | None) -> str | None:
    """gzip or deflate, whichever ``Accept-Encoding: accept_encoding`` weighs highest (the first
    listed of equal weight; None: answer uncompressed). Malformed entries are skipped, never
    refused: an answer can always be sent as it is."""
    if not accept_encoding:
        return None
    best, best_weight = None, 0.0
    for entry in accept_encoding.split(","):
        coding, _, params = entry.partition(";")
        coding = coding.strip().lower()
        if coding not in WBITS:
            continue
        weight = _weight(params)
        if weight > best_weight:
            best, best_weight = ("gzip" if coding == "x-gzip" else coding), weight
    return best


def _weight(params: str) -> float:
    """The ``q`` of an Accept-Encoding entry's parameters (1 without one, 0 when malformed)."""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                weight = float(value)
            except ValueError:
                return 0.0
            return weight if 0.0 <= weight <= 1.0 else 0.0  # NaN fails both
    return 1.0


def compress(body: bytes, coding: str) -> bytes:
    """``body`` in content coding ``coding`` (gzip or deflate)."""
    stream = zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS[coding])
    return stream.compress(body) + stream.flush()
