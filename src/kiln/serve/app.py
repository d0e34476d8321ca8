"""`kiln serve`'s REST transport: the Open Inference Protocol (KServe v2) over HTTP, with the Triton
extensions its clients use (see `EXTENSIONS`).

Each route parses its HTTP request, asks the `InferenceCore`, and writes the answer; the core's
`ServeError`s become error replies with their status and headers (in ``asgi_app``).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST

from kiln.serve.asgi import (
    ASGIApp,
    HttpRequest,
    Reply,
    Route,
    asgi_app,
    error_reply,
    json_reply,
)
from kiln.serve.compression import compress, response_coding
from kiln.serve.core import InferenceCore
from kiln.serve.errors import ServeError
from kiln.serve.protocol import build_infer_response, parse_index_request, parse_infer_request
from kiln.serve.repository import Repository
from kiln.serve.settings import ServeSettings

__all__ = ["EXTENSIONS", "RestAdapter", "ServeSettings", "build_app"]

# What GET /v2 lists: the Triton extensions that work in full over REST. "model_repository" is
# not listed: its index works (POST /v2/repository/index), but load and unload are refused, and a
# client that sees the name may rely on them.
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")


def build_app(repository: Repository, settings: ServeSettings = ServeSettings()) -> ASGIApp:
    """The ASGI app serving every model version of ``repository`` (see discover_models)."""
    core = InferenceCore(repository, settings)
    return asgi_app(RestAdapter(core).routes(), core.start, core.stop)


class RestAdapter:
    """The protocol's HTTP routes over one `InferenceCore`."""

    def __init__(self, core: InferenceCore) -> None:
        self.core = core
        self._infer_routes = [
            Route("/v2/models/{model}/infer", self.infer, methods=("POST",)),
            Route("/v2/models/{model}/versions/{version}/infer", self.infer, methods=("POST",)),
        ]

    def routes(self) -> list[Route]:
        return [  # tried in order: the two infer routes, the hot path, first
            *self._infer_routes,
            Route("/v2", self.server_metadata),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.server_ready),
            Route("/v2/models/stats", self.statistics),  # before {model}: as Triton, not a model
            Route("/v2/models/{model}", self.model_metadata),
            Route("/v2/models/{model}/versions/{version}", self.model_metadata),
            Route("/v2/models/{model}/ready", self.model_ready),
            Route("/v2/models/{model}/versions/{version}/ready", self.model_ready),
            Route("/v2/models/{model}/config", self.model_config),
            Route("/v2/models/{model}/versions/{version}/config", self.model_config),
            Route("/v2/models/{model}/stats", self.statistics),
            Route("/v2/models/{model}/versions/{version}/stats", self.statistics),
            Route("/v2/repository/index", self.repository_index, methods=("POST",)),
            Route("/v2/repository/models/{model}/load", self.model_control, methods=("POST",)),
            Route("/v2/repository/models/{model}/unload", self.model_control, methods=("POST",)),
            Route("/metrics", self.metrics),
        ]

    def early_reply(self, method: str, path: str, authorization: str | None) -> Reply | None:
        """The answer to a request known from its request line and headers alone, before its
        body is read (None: read it and route it as usual): an inference request that the
        model's full queue refuses (503). Under overload most requests are these, so they
        should cost the server next to nothing (see serve/http.py)."""
        if method != "POST":
            return None
        for route in self._infer_routes:
            match = route.regex.match(path)
            if match is not None:
                refused = self.core.refusal(match["model"], match.groupdict().get("version"),
                                            authorization)
                return None if refused is None else error_reply(
                    str(refused), refused.status, refused.headers)
        return None

    async def infer(self, request: HttpRequest) -> Reply:
        params, headers = request.params, request.headers
        async with self.core.request(params["model"], params.get("version"),
                                     headers.get("authorization")) as model:
            body = await request.body(self.core.settings.max_request_bytes)
            label_names = model.predictor.label_names
            parsed = parse_infer_request(body, headers.get("inference-header-content-length"),
                                         model.max_length, vocabulary=model.vocabulary,
                                         classes=len(label_names))
            result = await self.core.predict(model, parsed)
            payload, reply_headers = build_infer_response(
                result.model, result.version, parsed, result.logits, result.probabilities,
                result.labels, label_names)
        return compressed(Reply(200, payload, reply_headers), headers.get("accept-encoding"))

    async def server_metadata(self, request: HttpRequest) -> Reply:
        return json_reply({**self.core.server_metadata(), "extensions": list(EXTENSIONS)})

    async def live(self, request: HttpRequest) -> Reply:
        live = self.core.live
        return json_reply({"live": live}, 200 if live else 503)

    async def server_ready(self, request: HttpRequest) -> Reply:
        ready = self.core.ready
        return json_reply({"ready": ready}, 200 if ready else 503)

    async def model_metadata(self, request: HttpRequest) -> Reply:
        self.core.check_api_key(request.headers.get("authorization"))
        return json_reply(self.core.model_metadata(request.params["model"],
                                                   request.params.get("version")))

    async def model_ready(self, request: HttpRequest) -> Reply:
        self.core.check_api_key(request.headers.get("authorization"))
        name = request.params["model"]
        ready = self.core.model_ready(name, request.params.get("version"))  # 404 if not served
        return json_reply({"name": name, "ready": ready}, 200 if ready else 503)

    async def model_config(self, request: HttpRequest) -> Reply:
        self.core.check_api_key(request.headers.get("authorization"))
        return json_reply(self.core.model_config(request.params["model"],
                                                 request.params.get("version")))

    async def statistics(self, request: HttpRequest) -> Reply:
        self.core.check_api_key(request.headers.get("authorization"))
        return json_reply(self.core.statistics(request.params.get("model"),
                                               request.params.get("version")))

    async def repository_index(self, request: HttpRequest) -> Reply:
        self.core.check_api_key(request.headers.get("authorization"))
        ready_only = parse_index_request(await request.body(self.core.settings.max_request_bytes))
        index = self.core.repository_index()
        return json_reply([e for e in index if e["state"] == "READY"] if ready_only else index)

    async def model_control(self, request: HttpRequest) -> Reply:
        """Load and unload: refused, the models are fixed when the server starts."""
        self.core.check_api_key(request.headers.get("authorization"))
        action = request.path.rpartition("/")[2]
        raise ServeError(f"cannot {action} model '{request.params['model']}': kiln serve loads "
                         "every model of its repository at start and serves them until it stops "
                         "(restart it to change them)")

    async def metrics(self, request: HttpRequest) -> Reply:
        return Reply(200, self.core.metrics_exposition(), {"content-type": CONTENT_TYPE_LATEST})


def compressed(reply: Reply, accept_encoding: str | None) -> Reply:
    """``reply`` compressed as ``Accept-Encoding`` asks (gzip or deflate), else as it is.
    Inference-Header-Content-Length still counts the JSON before compression: a client
    decompresses the body first (as Triton and tritonclient do)."""
    coding = response_coding(accept_encoding)
    if coding is None:
        return reply
    return Reply(reply.status, compress(reply.body, coding),
                 {**reply.headers, "content-encoding": coding, "vary": "accept-encoding"})
