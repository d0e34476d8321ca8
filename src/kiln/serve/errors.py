"""Why a request was not answered, in words every transport understands.

Each error carries the status code of the Open Inference Protocol's REST binding (the HTTP status)
and the headers to answer with; the REST adapter sends them as they are, a gRPC adapter maps the
status to its own codes (404 -> NOT_FOUND, 503 -> UNAVAILABLE, ...).
"""

from __future__ import annotations

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
    """The batching queue is full: the client should retry in a second."""

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "1"})


class TimedOut(ServeError):
    """No result within the request's deadline."""

    status = 504
