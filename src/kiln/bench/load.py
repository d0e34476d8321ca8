"""A load generator for a running Open Inference Protocol server (`kiln bench --url`).

Closed loop: ``concurrency`` clients each send a request as soon as the previous one is answered.
Open loop: requests start at a fixed mean rate with Poisson (exponential) gaps, whatever the
server's speed, which is how bursty real traffic arrives.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np


@dataclass(frozen=True)
class LoadSettings:
    model: str
    concurrency: int = 32
    rate: float | None = None  # requests/s, Poisson arrivals; None = closed loop
    duration_s: float = 10.0
    texts_per_request: int = 1
    timeout_s: float = 30.0
    seed: int = 0


def run_load(url: str, texts: Sequence[str], settings: LoadSettings) -> dict[str, Any]:
    """Drive the server at ``url`` with ``texts`` and report throughput, latency and errors."""
    if not texts:
        raise ValueError("no texts to send")
    parsed = urlparse(url if "://" in url else f"http://{url}")
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    path = f"/v2/models/{settings.model}/infer"
    rng = random.Random(settings.seed)
    bodies = [_body([rng.choice(texts) for _ in range(settings.texts_per_request)])
              for _ in range(256)]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    local = threading.local()
    connections: list[http.client.HTTPConnection] = []

    def send(i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, port, timeout=settings.timeout_s)
            with lock:
                connections.append(conn)
        start = time.perf_counter()
        try:
            conn.request("POST", path, bodies[i % len(bodies)], {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            status = str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            local.conn = None
            status = type(exc).__name__
        elapsed = time.perf_counter() - start
        with lock:
            statuses[status] += 1
            if status == "200":
                latencies.append(elapsed)

    start = time.perf_counter()
    deadline = start + settings.duration_s
    if settings.rate is None:
        def client(worker: int) -> None:
            i = worker
            while time.perf_counter() < deadline:
                send(i)
                i += settings.concurrency

        with ThreadPoolExecutor(settings.concurrency) as pool:
            list(pool.map(client, range(settings.concurrency)))
    else:
        with ThreadPoolExecutor(settings.concurrency) as pool:
            i, next_at = 0, start
            while next_at < deadline:
                time.sleep(max(0.0, next_at - time.perf_counter()))
                pool.submit(send, i)
                i += 1
                next_at += rng.expovariate(settings.rate)
    elapsed = time.perf_counter() - start
    for conn in connections:
        conn.close()
    ms = 1e3 * np.asarray(latencies) if latencies else np.zeros(1)
    ok = statuses.get("200", 0)
    return {
        "url": url, "model": settings.model, "mode": "closed" if settings.rate is None else "poisson",
        "concurrency": settings.concurrency, "rate": settings.rate, "seconds": elapsed,
        "requests": sum(statuses.values()), "ok": ok,
        "errors": {k: v for k, v in statuses.items() if k != "200"},
        "requests_per_s": ok / elapsed, "texts_per_s": ok * settings.texts_per_request / elapsed,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                       "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())},
    }


def _body(texts: list[str]) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                                   "data": texts}], "outputs": [{"name": "label"}]}).encode()


def format_load_report(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    mode = (f"closed loop, {r['concurrency']} clients" if r["mode"] == "closed"
            else f"Poisson arrivals at {r['rate']:g}/s")
    return (f"{r['url']} model {r['model']}: {mode}, {r['seconds']:.1f} s\n"
            f"  {r['requests_per_s']:.1f} requests/s ({r['texts_per_s']:.1f} texts/s), "
            f"{r['ok']} ok of {r['requests']}, errors {r['errors'] or 'none'}\n"
            f"  latency p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  p99 {lat['p99']:.1f} ms")
