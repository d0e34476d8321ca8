"""`kiln serve` keeps serving through what a hostile or unlucky world does to it: a worker killed
under load, SIGTERM, idle and slow clients, more connections than it takes."""

import concurrent.futures
import os
import selectors
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.serve.server import Backoff
from tests.serve.test_server import TEXTS, post, sample, start_server

INFER = "/v2/models/clf/infer"
BODY = (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
        b'"data": ["where is my parcel"]}]}')


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1")


def status(url: str, path: str = "/v2/health/ready") -> int:
    try:
        with urllib.request.urlopen(f"http://{url}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # e.g. reset: queued for a worker as it was killed
        return 0


def workers(supervisor: int) -> set[str]:
    return set(subprocess.run(["pgrep", "-f", "-P", str(supervisor), "spawn_main"],
                              capture_output=True, text=True).stdout.split())


def test_restart_backoff_doubles_up_to_a_cap_and_starts_over_after_a_healthy_run() -> None:
    backoff = Backoff(first_s=0.5, max_s=10.0, healthy_s=30.0)
    delays, previous = [], None
    for _ in range(7):
        previous = backoff.delay(previous, lived_s=1.0)
        delays.append(previous)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(10.0, lived_s=31.0) == 0.5


@pytest.mark.slow
def test_a_killed_worker_is_replaced_while_the_other_keeps_serving(exported_run: Path) -> None:
    from kiln.bench.load import LoadSettings, run_load

    proc, url = start_server(exported_run, env(), "--workers", "2", "--threads", "1")
    try:
        first = workers(proc.pid)
        assert len(first) == 2
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            load = pool.submit(run_load, url, TEXTS,
                               LoadSettings(model="clf", concurrency=8, duration_s=5.0))
            time.sleep(1.0)
            victim = sorted(first)[0]
            os.kill(int(victim), signal.SIGKILL)
            killed_at, seen = time.monotonic(), set()
            while time.monotonic() - killed_at < 10:  # back, and ready, within 10 s
                seen.add(status(url))
                if seen >= {503} and status(url) == 200 and len(workers(proc.pid)) == 2:
                    break
                time.sleep(0.05)
            back_after = time.monotonic() - killed_at
            report = load.result(timeout=60)
        now = workers(proc.pid)
        assert back_after < 10 and len(now) == 2 and victim not in now and (first - {victim}) < now
        assert 503 in seen  # not ready while a worker was missing
        failed = sum(report["errors"].values())
        assert report["ok"] > 0 and failed <= 0.01 * (report["ok"] + failed), report
        assert sample(url, "kiln_worker_restarts", "kiln_worker_restarts_total") == 1
        # the dead worker's requests in flight left the live sum with it
        assert sample(url, "kiln_inflight_requests", "kiln_inflight_requests") <= 1
        assert post(url, INFER, BODY)[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    logs = "".join(p.read_text() for p in exported_run.parent.glob("serve-*.log"))
    assert f"(pid {victim}) was killed by SIGKILL" in logs and "restarting it in 0.5 s" in logs


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", ["1", "2"])
def test_sigterm_drains_then_exits_0(exported_run: Path, n_workers: str) -> None:
    # a long batching delay keeps the request in flight when SIGTERM arrives
    proc, url = start_server(exported_run, env(), "--workers", n_workers, "--threads", "1",
                             "--max-queue-delay-ms", "1500", "--max-batch-size", "64")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, url, INFER, BODY)
        deadline = time.monotonic() + 30
        while sample(url, "kiln_inflight_requests", "kiln_inflight_requests", model="clf") < 1:
            assert time.monotonic() < deadline and not pending.done(), "request never in flight"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        code, answer = pending.result(timeout=30)
    assert code == 200 and answer["outputs"]
    assert proc.wait(timeout=30) == 0


TIMEOUTS = {"header": 1.0, "body": 1.0, "read": 3.0}
MAX_CONNECTIONS = 300


@pytest.fixture(scope="module")
def strict_server(exported_run: Path) -> Iterator[str]:
    """One worker with short read timeouts and a connection cap, for the slow-client tests."""
    proc, url = start_server(exported_run, env(), "--threads", "1",
                             "--header-timeout", str(TIMEOUTS["header"]),
                             "--body-timeout", str(TIMEOUTS["body"]),
                             "--read-timeout", str(TIMEOUTS["read"]),
                             "--max-connections", str(MAX_CONNECTIONS))
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def connect(url: str, first: bytes = b"") -> socket.socket:
    host, port = url.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(first)
    sock.setblocking(False)
    return sock


def watch_until_closed(socks: list[socket.socket], drip: set[socket.socket],
                       limit_s: float) -> dict[socket.socket, tuple[float, bytes]]:
    """Send one byte every 0.5 s on each socket of ``drip`` and read every socket, until the
    server has closed them all or ``limit_s`` passed: {socket: (seconds until closed, bytes read)}.
    """
    start, received = time.monotonic(), {s: b"" for s in socks}
    closed: dict[socket.socket, tuple[float, bytes]] = {}
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        next_drip = start
        while len(closed) < len(socks) and time.monotonic() - start < limit_s:
            if time.monotonic() >= next_drip:
                for s in drip - closed.keys():
                    try:
                        s.send(b"x")
                    except OSError:
                        pass  # closed: the read below says so
                next_drip += 0.5
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                if data:
                    received[s] += data
                else:
                    closed[s] = (time.monotonic() - start, received[s])
                    sel.unregister(s)
    return closed


@pytest.mark.slow
def test_idle_and_slow_clients_are_cut_off_while_others_are_served(strict_server: str) -> None:
    url = strict_server
    head = f"POST {INFER} HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\n"
    idle = [connect(url) for _ in range(200)]
    slow_header = [connect(url, b"GET /v2/health/live HTTP/1.1\r\nHo") for _ in range(50)]
    stalled_body = [connect(url, f"{head}Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY[:10])
                    for _ in range(10)]
    slow_body = [connect(url, f"{head}Content-Length: 1000\r\n\r\n".encode()) for _ in range(10)]
    everyone = idle + slow_header + stalled_body + slow_body
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            watched = pool.submit(watch_until_closed, everyone, set(slow_header + slow_body), 10.0)
            served = [post(url, INFER, BODY)[0] for _ in range(5)]  # meanwhile, a normal client
            closed = watched.result(timeout=30)
    finally:
        for s in everyone:
            s.close()
    assert served == [200] * 5
    assert len(closed) == len(everyone), f"{len(everyone) - len(closed)} connections still open"
    slack = 1.5  # a busy 2-core machine
    for s in idle:  # closed without a word: the client had not begun a request
        assert closed[s][0] < TIMEOUTS["header"] + slack and closed[s][1] == b""
    for group, limit_s in ((slow_header, TIMEOUTS["header"]), (stalled_body, TIMEOUTS["body"]),
                           (slow_body, TIMEOUTS["read"])):
        for s in group:
            seconds, answer = closed[s]
            assert seconds < limit_s + slack and answer.startswith(b"HTTP/1.1 408 "), answer
    assert all(closed[s][0] > TIMEOUTS["read"] - 0.5 for s in slow_body)  # the drip held them
    assert status(url) == 200


@pytest.mark.slow
def test_connections_beyond_the_cap_get_503(strict_server: str) -> None:
    url = strict_server
    request = f"GET /v2/health/live HTTP/1.1\r\nHost: {url}\r\n\r\n".encode()
    held = [connect(url, request) for _ in range(MAX_CONNECTIONS)]  # answered, then kept alive
    try:
        for s in held:
            s.setblocking(True)
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert status(url, "/v2/health/live") == 503  # one connection more than the cap
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while status(url, "/v2/health/live") != 200:  # served again once they are gone
        assert time.monotonic() < deadline
        time.sleep(0.1)
