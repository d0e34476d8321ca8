"""Why a request was not answered, in words every transport understands.

Each error carries the status code of the Open Inference Protocol's REST binding (the HTTP status)
and the headers to answer with; the REST adapter sends them as they are, a gRPC adapter maps the
status to its own codes (404 -> NOT_FOUND, 503 -> UNAVAILABLE, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class ServeError(Exception):
    """A request the server cannot answer; ``status`` says why (400 unless a subclass or the
    caller says otherwise), ``headers`` go with the answer."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def message(self) -> str:
        return str(self)


class Unauthorized(ServeError):
    """The API key is missing or wrong."""

    status = 401


class NotFound(ServeError):
    """No such model, or no such version of it."""

    status = 404


class Unavailable(ServeError):
    """The server cannot take the request now (models still loading, or shutting down)."""

    status = 503


class Overloaded(Unavailable):
    """The batching queue cannot take the request in time: the client should retry after
    ``retry_after_s`` (whole seconds in the Retry-After header, at least 1)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message, headers={"retry-after": str(max(1, math.ceil(retry_after_s)))})


class TooLarge(ServeError):
    """The request is larger than the server will ever take: retrying it cannot help."""

    status = 413


class TimedOut(ServeError):
    """No result within the request's deadline."""

    status = 504
