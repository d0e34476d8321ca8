"""`kiln serve`'s gRPC transport: the Open Inference Protocol's GRPCInferenceService (as Triton and
KServe serve it, so ``tritonclient.grpc`` works unchanged), over the same `InferenceCore` as REST.

Each worker runs it with ``grpc.aio`` on its own event loop, uvicorn's (uvloop), beside HTTP:
started once the core has loaded the models, stopped before the core stops (see server.py). An
inference request goes through ``core.request`` and ``core.predict`` exactly as a REST one does,
so both share the batches, the queue limits, the API key and the metrics.

The core's `ServeError`s become gRPC statuses by their HTTP status (`STATUS_CODES`), with their
message as the details and their headers (Retry-After) as trailing metadata. Requests are decoded
here rather than by grpc, so that bytes that are not a protobuf message get INVALID_ARGUMENT
(grpc answers UNKNOWN for them): a malformed request never gets INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from kiln.errors import KilnError
from kiln.serve.core import InferenceCore
from kiln.serve.errors import ServeError
from kiln.serve.grpc_protocol import (
    build_model_infer_response,
    model_config_response,
    model_metadata_response,
    parse_model_infer,
    repository_index_response,
    server_metadata_response,
)
from kiln.serve.proto import grpc_service_pb2 as pb

log = logging.getLogger("kiln.serve")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# What ServerMetadata lists: the Triton extensions that work in full over gRPC (binary tensor data
# is REST's; gRPC has raw_input_contents built in).
EXTENSIONS = ("classification", "model_configuration", "statistics")
GRACE_S = 30.0  # on stop, RPCs in flight get this long to finish (as HTTP requests get in uvicorn)

# A ServeError's gRPC status, from its HTTP status. 413 (more than the server will ever take) is
# RESOURCE_EXHAUSTED, as grpc itself answers a message over the size limit; other 4xx are
# INVALID_ARGUMENT (the client's to fix), other 5xx INTERNAL.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Context = Any  # grpc.aio.ServicerContext (grpc has no type hints)
Rpc = Callable[[Any, Context], Awaitable[Message]]


def status_code(http_status: int) -> grpc.StatusCode:
    """The gRPC status code of a `ServeError` with ``http_status``."""
    code = STATUS_CODES.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


async def start_grpc_server(core: InferenceCore, host: str, port: int) -> grpc.aio.Server:
    """A gRPC server for ``core`` listening on ``host:port``, started on the running event loop.

    The socket is SO_REUSEPORT (grpc's default on Linux, set here explicitly): every worker
    listens on the port and the kernel spreads connections over them, as for HTTP; the
    supervisor reserves the port first (see server.py), so it is never shared with another server.
    Messages up to ``--max-request-bytes`` are taken (larger: RESOURCE_EXHAUSTED, from grpc), and
    at most ``--max-connections`` RPCs at once (more: RESOURCE_EXHAUSTED).

    Raises:
        KilnError: the address cannot be bound.
    """
    settings = core.settings
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1),
                 ("grpc.max_receive_message_length", settings.max_request_bytes)],
        maximum_concurrent_rpcs=settings.max_connections)
    server.add_generic_rpc_handlers((GrpcAdapter(core).handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpc's message only says to turn on its debug log
        bound = 0
    if not bound:
        raise KilnError(f"cannot listen for gRPC on {address}: the address is taken or not this "
                        "machine's (--grpc-port)")
    await server.start()
    return server


class GrpcAdapter:
    """The GRPCInferenceService's calls over one `InferenceCore`."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def handler(self) -> grpc.GenericRpcHandler:
        """Every call of grpc_service.proto's service, each taking its request as bytes."""
        rpcs: dict[str, Rpc] = {
            "ServerLive": self.server_live, "ServerReady": self.server_ready,
            "ModelReady": self.model_ready, "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata, "ModelInfer": self.model_infer,
            "ModelConfig": self.model_config, "ModelStatistics": self.model_statistics,
            "RepositoryIndex": self.repository_index,
        }
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(
                answering(rpcs[method.name], getattr(pb, method.input_type.name)),
                response_serializer=_serialize)
            for method in SERVICE.methods}
        return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)

    async def model_infer(self, request: pb.ModelInferRequest,
                          context: Context) -> pb.ModelInferResponse:
        async with self.core.request(request.model_name, request.model_version or None,
                                     authorization(context)) as model:
            label_names = model.predictor.label_names
            parsed = parse_model_infer(request, model.max_length, vocabulary=model.vocabulary,
                                       classes=len(label_names),
                                       deadline_s=context.time_remaining())
            result = await self.core.predict(model, parsed)
            return build_model_infer_response(result, parsed, bool(request.raw_input_contents),
                                              label_names)

    async def server_live(self, request: pb.ServerLiveRequest,
                          context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.core.live)

    async def server_ready(self, request: pb.ServerReadyRequest,
                           context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.core.ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest,
                              context: Context) -> pb.ServerMetadataResponse:
        return server_metadata_response(self.core.server_metadata(), EXTENSIONS)

    async def model_ready(self, request: pb.ModelReadyRequest,
                          context: Context) -> pb.ModelReadyResponse:
        self.core.check_api_key(authorization(context))
        return pb.ModelReadyResponse(
            ready=self.core.model_ready(request.name, request.version or None))  # NOT_FOUND

    async def model_metadata(self, request: pb.ModelMetadataRequest,
                             context: Context) -> pb.ModelMetadataResponse:
        self.core.check_api_key(authorization(context))
        return model_metadata_response(
            self.core.model_metadata(request.name, request.version or None))

    async def model_config(self, request: pb.ModelConfigRequest,
                           context: Context) -> pb.ModelConfigResponse:
        self.core.check_api_key(authorization(context))
        return model_config_response(self.core.model_config(request.name, request.version or None))

    async def repository_index(self, request: pb.RepositoryIndexRequest,
                               context: Context) -> pb.RepositoryIndexResponse:
        self.core.check_api_key(authorization(context))
        return repository_index_response(self.core.repository_index(), request.ready)

    async def model_statistics(self, request: pb.ModelStatisticsRequest,
                               context: Context) -> pb.ModelStatisticsResponse:
        self.core.check_api_key(authorization(context))
        stats = self.core.statistics(request.name or None, request.version or None)  # NOT_FOUND
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())


def answering(rpc: Rpc, request_type: type[Message]) -> Callable[[bytes, Context],
                                                                Awaitable[Message]]:
    """``rpc`` as a grpc behaviour: decodes the request, and answers an error with its status."""

    async def behaviour(raw: bytes, context: Context) -> Message:
        trailers: tuple[tuple[str, str], ...] = ()
        try:
            return await rpc(request_type.FromString(raw), context)
        except DecodeError as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT
            details = f"not a valid {request_type.DESCRIPTOR.full_name} message: {exc}"
        except ServeError as exc:
            code, details = status_code(exc.status), str(exc)
            trailers = tuple(exc.headers.items())  # retry-after, as REST sends it
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # one broken request must not take the server down
            log.exception("unhandled error in gRPC %s", getattr(rpc, "__name__", rpc))
            code, details = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        await context.abort(code, details, trailers)  # raises: the call ends here
        raise AssertionError("unreachable")

    return behaviour


def authorization(context: Context) -> str | None:
    """The request's ``authorization`` metadata ("Bearer KEY"), as REST's header."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
