"""The HTTP protocol's early answers: a request refused from its headers never reaches the app,
and the connection goes on as if the app had answered (keep-alive, pipelining, close, timeouts)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from kiln.serve.asgi import Reply, error_reply
from kiln.serve.http import ReadTimeouts, http_protocol

BODY_TIMEOUT_S = 0.5


class Recorder:
    """An ASGI app that answers 200 with what it saw, after ``delay_s``, and counts its calls."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []  # method, path, body bytes
        self.delay_s = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((scope["method"], scope["path"], len(body)))
        await asyncio.sleep(self.delay_s)
        answer = f"app {scope['method']} {scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


def refuse_busy(method: str, path: str, authorization: str | None) -> Reply | None:
    """Refuses POST /busy (unless the client says ``Authorization: vip``)."""
    if method == "POST" and path == "/busy" and authorization != "vip":
        return error_reply("busy", 503, {"retry-after": "2"})
    return None


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, Recorder]]:
    app = Recorder()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    protocol = http_protocol(ReadTimeouts(header_s=2, body_s=BODY_TIMEOUT_S, request_s=5),
                             refuse_busy)
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, lifespan="off",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield sock.getsockname()[1], app
    server.should_exit = True
    thread.join(timeout=10)


def exchange(port: int, data: bytes, answers: int) -> list[bytes]:
    """Send ``data`` on one connection and read ``answers`` responses (or until it closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return read_answers(sock, answers)


def read_answers(sock: socket.socket, answers: int) -> list[bytes]:
    buffer, found = b"", []
    while len(found) < answers:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buffer[:head_end].decode("latin-1").lower()
            length = int(head.split("content-length: ")[1].split("\r\n")[0])
            end = head_end + 4 + length
            if len(buffer) >= end:
                found.append(buffer[:end])
                buffer = buffer[end:]
                continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return found


def post(path: str, body: bytes, *headers: str, version: str = "1.1") -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (f"POST {path} HTTP/{version}\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def test_a_refused_request_never_reaches_the_app_and_the_connection_stays_usable(
        served: tuple[int, Recorder]) -> None:
    port, app = served
    before = len(app.seen)
    refused, answered = exchange(port, post("/busy", b"x" * 100_000)
                                 + post("/work", b"hello"), answers=2)
    assert refused.startswith(b"HTTP/1.1 503")
    assert b"retry-after: 2" in refused and refused.endswith(b'{"error": "busy"}')
    assert b"connection: close" not in refused  # kept alive: the next request is answered
    assert answered.startswith(b"HTTP/1.1 200") and answered.endswith(b"app POST /work")
    assert app.seen[before:] == [("POST", "/work", 5)]  # its 100,000-byte body was dropped


def test_early_answers_keep_their_order_behind_a_request_being_answered(
        served: tuple[int, Recorder]) -> None:
    port, app = served
    app.delay_s = 0.2
    try:
        answers = exchange(port, post("/work", b"1") + post("/busy", b"2") + post("/busy", b"3",
                           "authorization: vip"), answers=3)
    finally:
        app.delay_s = 0.0
    # pipelined behind /work, the first /busy goes to the app; answers come back in order
    assert [a.split(b"\r\n\r\n")[1] for a in answers] == [b"app POST /work", b"app POST /busy",
                                                          b"app POST /busy"]


def test_an_early_answer_to_http_1_0_closes_the_connection(served: tuple[int, Recorder]) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(post("/busy", b"{}", version="1.0"))
        [answer] = read_answers(sock, 1)
        assert answer.startswith(b"HTTP/1.1 503") and b"connection: close" in answer
        assert sock.recv(1) == b""  # closed by the server


def test_a_refused_request_whose_body_stalls_gets_408(served: tuple[int, Recorder]) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()  # before sending: the server may read them before sendall returns
        sock.sendall(post("/busy", b"x" * 100)[:-90])  # headers and 10 of the 100 bytes
        [answer] = read_answers(sock, 1)
        assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer
        assert BODY_TIMEOUT_S <= time.monotonic() - started < BODY_TIMEOUT_S + 2
