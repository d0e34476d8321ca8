"""`kiln serve`'s REST transport: the Open Inference Protocol (KServe v2) over HTTP.

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
from kiln.serve.core import InferenceCore
from kiln.serve.protocol import build_infer_response, parse_infer_request
from kiln.serve.repository import Repository
from kiln.serve.settings import ServeSettings

__all__ = ["RestAdapter", "ServeSettings", "build_app"]


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
            Route("/v2/models/{model}", self.model_metadata),
            Route("/v2/models/{model}/versions/{version}", self.model_metadata),
            Route("/v2/models/{model}/ready", self.model_ready),
            Route("/v2/models/{model}/versions/{version}/ready", self.model_ready),
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
            parsed = parse_infer_request(body, headers.get("inference-header-content-length"),
                                         model.max_length, vocabulary=model.vocabulary)
            result = await self.core.predict(model, parsed)
            payload, reply_headers = build_infer_response(
                result.model, result.version, parsed, result.logits, result.probabilities,
                result.labels)
        return Reply(200, payload, reply_headers)

    async def server_metadata(self, request: HttpRequest) -> Reply:
        return json_reply(self.core.server_metadata())

    async def live(self, request: HttpRequest) -> Reply:
        return Reply(200 if self.core.live else 503)

    async def server_ready(self, request: HttpRequest) -> Reply:
        return Reply(200 if self.core.ready else 503)

    async def model_metadata(self, request: HttpRequest) -> Reply:
        self.core.check_api_key(request.headers.get("authorization"))
        return json_reply(self.core.model_metadata(request.params["model"],
                                                   request.params.get("version")))

    async def model_ready(self, request: HttpRequest) -> Reply:
        self.core.check_api_key(request.headers.get("authorization"))
        self.core.model(request.params["model"], request.params.get("version"))  # 404, 503
        return Reply(200)

    async def metrics(self, request: HttpRequest) -> Reply:
        return Reply(200, self.core.metrics_exposition(), {"content-type": CONTENT_TYPE_LATEST})
