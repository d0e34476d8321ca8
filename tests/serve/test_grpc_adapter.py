"""How the gRPC adapter answers a call that fails, without a server: the status, the details and
the trailing metadata a client gets."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from kiln.serve.errors import Overloaded, ServeError
from kiln.serve.grpc_adapter import SERVICE, GrpcAdapter, answering, authorization
from kiln.serve.proto import grpc_service_pb2 as pb
from kiln.serve.protocol import ProtocolError


class Aborted(Exception):
    pass


class FakeContext:
    """The little of grpc.aio.ServicerContext the adapter uses."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.aborted: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str,
                    trailing_metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.aborted = (code, details, trailing_metadata)
        raise Aborted


def call(error: BaseException | None, raw: bytes = b"") -> FakeContext:
    async def rpc(request: Any, context: Any) -> pb.ServerLiveResponse:
        if error is not None:
            raise error
        return pb.ServerLiveResponse(live=True)

    context = FakeContext()
    try:
        answer = asyncio.run(answering(rpc, pb.ServerLiveRequest)(raw, context))
        assert answer == pb.ServerLiveResponse(live=True)
    except Aborted:
        assert context.aborted is not None
    return context


def test_an_answer_goes_out_as_it_is() -> None:
    assert call(None).aborted is None


@pytest.mark.parametrize(("error", "code", "details", "trailers"), [
    (ProtocolError("input 'text' is bad"), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'text' is bad", ()),
    (Overloaded("server busy", retry_after_s=2.5), grpc.StatusCode.UNAVAILABLE, "server busy",
     (("retry-after", "3"),)),
    (ServeError("too many rows", status=413), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "too many rows", ()),
    (ValueError("a bug"), grpc.StatusCode.INTERNAL, "internal error: ValueError: a bug", ()),
])
def test_errors_are_answered_with_their_status(error: Exception, code: grpc.StatusCode,
                                               details: str, trailers: tuple[Any, ...]) -> None:
    assert call(error).aborted == (code, details, trailers)


def test_bytes_that_are_no_message_are_an_invalid_argument() -> None:
    aborted = call(None, raw=b"\xff\xff\xff").aborted
    assert aborted is not None and aborted[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ServerLiveRequest message" in aborted[1]


def test_the_key_comes_from_the_authorization_metadata() -> None:
    context = FakeContext((("user-agent", "x"), ("authorization", "Bearer k")))
    assert authorization(context) == "Bearer k" and authorization(FakeContext()) is None


def test_every_call_of_the_service_has_a_handler() -> None:
    handler = GrpcAdapter(core=None).handler()  # type: ignore[arg-type]
    for method in SERVICE.methods:
        details = type("Details", (), {"method": f"/{SERVICE.full_name}/{method.name}"})()
        assert handler.service(details) is not None, method.name
