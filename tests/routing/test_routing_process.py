"""The real load balancer and edge proxy processes, against a real coordinator and real HTTP backends."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from procs import RmaProcess, start_coordinator
from routing.pool import routed, start_backend, start_router

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
KEY = "test-key"
ORIGIN = "https://app.example"


@dataclass
class Pool:
    lb: str
    edge: str
    lb_pid: int
    coordinator: str


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("routing")
    started: list[RmaProcess] = []
    try:
        coordinator, url = start_coordinator(tmp, interval=1.0)
        started.append(coordinator)
        for name in ("b1", "b2"):
            start_backend(started, tmp, name, url, "ner-extraction")
        lb = start_router(started, tmp, "load-balancer", url)
        edge = start_router(started, tmp, "edge-proxy", url, {"RMA_API_KEYS": KEY, "RMA_CORS_ORIGINS": ORIGIN,
                                                            "RMA_MAX_BODY_MB": "1", "RMA_RATE_LIMIT": "0"})
        routed(lb, "ner-extraction", 2)
        yield Pool(lb, edge, started[-2].pid, url)
    finally:
        for proc in reversed(started):
            proc.stop(timeout=5)


def test_requests_pass_unchanged(pool: Pool) -> None:
    base = f"{pool.lb}/service/ner-extraction"
    got = httpx.post(f"{base}/some/a%2Fb?q=1&x=%20y&q=2", content=b"payload",
                     headers={"x-trace": "t1", "content-type": "text/plain", "connection": "x-hop", "x-hop": "1"})
    seen = got.json()
    assert got.status_code == 200 and got.headers["x-custom"] == "kept"
    assert seen["raw_path"] == "/some/a%2Fb" and seen["query"] == "q=1&x=%20y&q=2" and seen["body"] == "payload"
    headers = dict(seen["headers"])
    assert headers["x-trace"] == "t1" and headers["content-type"] == "text/plain" and "x-hop" not in headers
    assert headers["host"].startswith("127.0.0.1:") and headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == pool.lb.split("//")[1]
    for method in ("PATCH", "DELETE", "PUT", "OPTIONS"):
        assert httpx.request(method, f"{base}/m", content=b"1").json()["method"] == method
    head = httpx.head(f"{base}/kb")
    assert head.status_code == 200 and head.headers["content-length"] == "1024" and head.content == b""
    teapot = httpx.post(f"{base}/status/418")
    assert teapot.status_code == 418 and teapot.text.startswith("status 418")
    assert teapot.headers.get_list("set-cookie") == ["a=1", "b=2"]
    missing = httpx.get(f"{pool.lb}/service/ner/status/404")  # alias, and a backend 404 passes as is
    assert missing.status_code == 404 and missing.text.startswith("status 404")


def test_server_sent_events_arrive_one_by_one(pool: Pool) -> None:
    arrivals = []
    started = time.monotonic()
    with httpx.stream("GET", f"{pool.lb}/service/ner-extraction/events?n=4&gap=0.3", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    assert arrivals[0] < 0.25, arrivals  # the first event is not held back behind the rest
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert all(0.15 < g < 0.6 for g in gaps), gaps


def test_100_mb_upload_streams_with_flat_proxy_memory(pool: Pool) -> None:
    proxy = psutil.Process(pool.lb_pid)
    before = proxy.memory_info().rss
    peak = {"rss": before}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["rss"] = max(peak["rss"], proxy.memory_info().rss)
            time.sleep(0.02)

    chunk = os.urandom(1 << 20)

    def body() -> Iterator[bytes]:
        for _ in range(100):
            yield chunk

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        answer = httpx.post(f"{pool.lb}/service/ner-extraction/upload", content=body(), timeout=60).json()
    finally:
        done.set()
        sampler.join()
    assert answer["bytes"] == 100 << 20
    grew = (peak["rss"] - before) / (1 << 20)
    assert grew < 30, f"proxy RSS grew {grew:.0f} MiB during a 100 MiB upload"


def test_gateway_keys_cors_cap_and_answers(pool: Pool) -> None:
    edge = pool.edge
    assert httpx.get(f"{edge}/service/ner/x").status_code == 401
    seen = httpx.get(f"{edge}/service/ner/x", headers={"x-api-key": KEY, "origin": ORIGIN})
    assert seen.status_code == 200 and seen.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" not in dict(seen.json()["headers"])  # the gateway's key is not passed on
    pre = httpx.options(f"{edge}/service/ner/x", headers={"origin": ORIGIN, "access-control-request-method": "POST"})
    assert pre.status_code == 204
    big = httpx.post(f"{edge}/service/ner/upload", headers={"x-api-key": KEY}, content=b"x" * (2 << 20))
    assert big.status_code == 413 and "error" in big.json()
    unknown = httpx.get(f"{edge}/service/nope/x", headers={"x-api-key": KEY})
    assert unknown.status_code == 404 and "unknown service" in unknown.json()["error"]
    uncovered = httpx.get(f"{edge}/service/llm/v1/models", headers={"x-api-key": KEY})
    assert uncovered.status_code == 503 and uncovered.json()["reason"]  # the coordinator's gap reason
    assert httpx.get(f"{edge}/nowhere").json()["error"].startswith("no route")
    assert httpx.get(f"{edge}/health").json()["status"] == "healthy"


def test_rate_limit_through_a_real_edge_proxy(processes: list[RmaProcess], tmp_path: Path, pool: Pool) -> None:
    edge = start_router(processes, tmp_path, "edge-proxy", pool.coordinator, {"RMA_RATE_LIMIT": "1",
                                                                              "RMA_RATE_BURST": "3"})
    with httpx.Client() as client:
        codes = [client.get(f"{edge}/service/ner/x").status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
