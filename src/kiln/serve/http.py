"""uvicorn's httptools protocol with the read timeouts it lacks, so slow clients cannot hold sockets.

uvicorn (0.54) times out only a kept-alive connection idle after a response (``timeout_keep_alive``).
A connection that never sends a byte, or sends its headers or body a byte a second, stays open for
as long as the client likes (slowloris), and counts against the connection cap all that time. This
protocol gives each stage of reading a request a deadline:

| stage | deadline | on expiry |
|---|---|---|
| connection open, no byte yet | header timeout from the opening | closed, nothing sent |
| request line and headers | header timeout from the opening, or from the request's first byte | 408, closed |
| body | body timeout between two pieces; read timeout from the request's first byte | 408, closed |

A 408 goes only to a client that has begun a request and not been answered: one that sent nothing
may be about to send a request, and would read the 408 as its answer. (A body still arriving after
the app answered without reading it is cut off without a word.) Once the request is in, the app's
own timeouts apply, then the keep-alive. While the server has stopped reading (a pipelined request
waits, or the app has not read a large body yet), the client is not to blame: the deadline waits.

Under overload most inference requests are refused (503, the model's queue is full), so a refusal
must cost next to nothing: with a thousand busy connections on one event loop, what each answer
costs is what every client waits. The protocol asks ``early`` (the REST adapter's `early_reply`)
once a request's headers are in; a request it answers never reaches the ASGI app (no request
cycle, no task, no body kept): the body is parsed and dropped in C, and the answer written when the
request is complete. Requests pipelined behind one still being answered, and ones that expect
``100-continue``, always go through the app.

One timer per connection, moved lazily: a stage only writes its deadline, and the timer, if it
fires early, re-arms itself for what is left (no cancel and re-arm at every stage of every request).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from kiln.serve.asgi import Reply, error_reply


@dataclass(frozen=True)
class ReadTimeouts:
    header_s: float = 10.0
    body_s: float = 10.0  # longest pause between two pieces of a body
    request_s: float = 60.0  # the whole request, from its first byte


class Stage(Enum):
    OPENED = "no request yet"  # a new connection
    HEADERS = "request headers"
    BODY = "request body"
    DONE = "request read"  # the app's timeouts, then uvicorn's keep-alive, apply


# (method, path, the Authorization header) -> the answer to send at once, or None: to the app
EarlyAnswer = Callable[[str, str, str | None], Reply | None]


def http_protocol(timeouts: ReadTimeouts,
                  early: EarlyAnswer | None = None) -> type[asyncio.Protocol]:
    """The protocol class to pass to ``uvicorn.Config(http=...)``."""
    return type("TimedHttpToolsProtocol", (TimedHttpToolsProtocol,),
                {"timeouts": timeouts, "early": staticmethod(early) if early else None})


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines in this module's table."""

    timeouts = ReadTimeouts()
    early: EarlyAnswer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered: Reply | None = None  # early: to send once this request's body is in
        self.stage = Stage.OPENED
        self.deadline = 0.0  # loop time at which the current stage expires
        self.request_deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expire_at(self.loop.time() + self.timeouts.header_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.stage is Stage.DONE:  # the next request's first bytes (or junk: timed all the same)
            self._request_begins()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.stage is not Stage.HEADERS:  # pipelined requests begin without a read of their own
            self._request_begins()

    def on_headers_complete(self) -> None:
        self.stage = Stage.BODY
        self._body_progress()
        self.answered = self._early_answer()
        if self.answered is None:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_progress()
        if self.answered is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.stage = Stage.DONE
        if self.answered is None:
            super().on_message_complete()
            return
        reply, self.answered = self.answered, None
        keep_alive = self.parser.should_keep_alive() and self.parser.get_http_version() == "1.1"
        self._write(reply, keep_alive)
        if not keep_alive:
            self.transport.close()
        else:  # as uvicorn after a response: count it, read on, start the keep-alive timer
            self.on_response_complete()

    def _early_answer(self) -> Reply | None:
        """``early``'s answer to the request whose headers are in, if it may skip the app."""
        if self.early is None or self.expect_100_continue or self.parser.should_upgrade():
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a request being answered: answers go out in order
        path = httptools.parse_url(self.url).path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        authorization = next((v.decode("latin-1") for k, v in self.headers
                              if k == b"authorization"), None)
        return self.early(self.parser.get_method().decode("ascii"), path, authorization)

    def _request_begins(self) -> None:
        now = self.loop.time()
        self.request_deadline = now + self.timeouts.request_s
        header_deadline = now + self.timeouts.header_s
        if self.stage is Stage.OPENED:  # the first request: counted from the connection's opening
            header_deadline = min(header_deadline, self.deadline)
        self.stage = Stage.HEADERS
        self._expire_at(header_deadline)

    def _body_progress(self) -> None:
        self._expire_at(min(self.loop.time() + self.timeouts.body_s, self.request_deadline))

    def _expire_at(self, deadline: float) -> None:
        self.deadline = deadline
        if self.timer is not None and self.timer.when() <= deadline:
            return  # it fires first and re-arms itself for the rest
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self.timer = None
        if self.stage is Stage.DONE or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the server is not reading: not the client's fault
            self._expire_at(self.loop.time() + self.timeouts.body_s)
        elif self.loop.time() < self.deadline:
            self._expire_at(self.deadline)
        else:
            self._time_out()

    def _time_out(self) -> None:
        # the latest request whose headers went to the app (None before the first)
        cycle: RequestResponseCycle | None = self.cycle
        if self.answered is not None:  # answered early, but its body is too slow: a 408 instead
            answer, cycle = True, None
        elif self.stage is Stage.BODY:  # this request's: answer it, unless the app already has
            answer = cycle is not None and not cycle.response_started
        else:  # a 408 for a request begun, not when pipelined behind one still being answered
            answer = self.stage is Stage.HEADERS and (cycle is None or cycle.response_complete)
        if not answer:
            self.transport.close()  # nothing asked yet, or an answer under way: only stop reading
            return
        if self.stage is Stage.BODY and cycle is not None:  # the app reads http.disconnect
            cycle.disconnected = True  # and what it sends is dropped
            cycle.message_event.set()
        t = self.timeouts
        self._answer_and_close(408, f"request headers not complete within {t.header_s:g} s"
                               if self.stage is Stage.HEADERS else "request body too slow (at most "
                               f"{t.body_s:g} s between two pieces, {t.request_s:g} s in all)")

    def _answer_and_close(self, status: int, message: str) -> None:
        self._write(error_reply(message, status), keep_alive=False)
        self.transport.close()

    def _write(self, reply: Reply, keep_alive: bool) -> None:
        head = [STATUS_LINE[reply.status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in reply.headers.items()]
        head.append(b"content-length: %d\r\n" % len(reply.body))
        head.append(b"\r\n" if keep_alive else b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + reply.body)
