"""One guarded way in: the coordinator's own /service answers as the edge proxy does (keys, body cap,
CORS, rate limit, X-Forwarded-* of its own), and the edge reaches the application services only.

Real processes: a coordinator and an edge proxy with the same gateway settings, and a backend
playing a worker that serves ner-extraction (it echoes what it receives).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from procs import RmaProcess, start_coordinator, wait_until
from routing.pool import start_backend, start_router

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
KEY = "k1"
ORIGIN = "https://app.example"
GATEWAY = {"RMA_API_KEYS": KEY, "RMA_CORS_ORIGINS": ORIGIN, "RMA_MAX_BODY_MB": "1", "RMA_RATE_LIMIT": "1",
           "RMA_RATE_BURST": "40"}
SPOOFED = {"x-forwarded-for": "203.0.113.66", "x-forwarded-host": "bank.example", "forwarded": "for=203.0.113.66"}


@dataclass
class Pool:
    coordinator: str
    edge: str


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    tmp = tmp_path_factory.mktemp("edge-guard")
    started: list[RmaProcess] = []
    try:
        coordinator, url = start_coordinator(tmp, interval=1.0, env=GATEWAY)
        started.append(coordinator)
        start_backend(started, tmp, "b1", url, "ner-extraction")
        edge = start_router(started, tmp, "edge-proxy", url, GATEWAY)
        wait_until(lambda: httpx.get(f"{url}/api/services/discover/ner-extraction", timeout=2).status_code == 200,
                   15, what="a healthy ner-extraction replica")
        wait_until(lambda: httpx.get(f"{edge}/health", timeout=2).json()["services_routable"] > 0, 15,
                   what="the edge's table")
        yield Pool(url, edge)
    finally:
        for proc in reversed(started):
            proc.stop(timeout=5)


def both(pool: Pool) -> list[str]:
    return [pool.coordinator, pool.edge]


def test_no_key_no_service_on_either_way_in(pool: Pool) -> None:
    for base in both(pool):
        refused = httpx.get(f"{base}/service/ner-extraction/x", timeout=5)
        assert refused.status_code == 401, (base, refused.text)
        assert refused.json()["error"].startswith("a valid API key")
        seen = httpx.get(f"{base}/service/ner-extraction/x", headers={"x-api-key": KEY, **SPOOFED}, timeout=5)
        assert seen.status_code == 200, (base, seen.text)
        headers = dict(seen.json()["headers"])
        assert "x-api-key" not in headers  # the key is the gateway's, not the service's
        assert headers["x-forwarded-for"] == "127.0.0.1" and headers["x-forwarded-host"] == base.split("//")[1]
        assert "forwarded" not in headers and "bank.example" not in str(headers)


def test_body_cap_and_cors_on_either_way_in(pool: Pool) -> None:
    def streamed() -> Iterator[bytes]:
        for _ in range(32):
            yield b"x" * (64 << 10)  # 2 MiB, chunked: no Content-Length to refuse it by

    key = {"x-api-key": KEY}
    for base in both(pool):
        upload = f"{base}/service/ner-extraction/upload"
        declared = httpx.post(upload, headers=key, content=b"x" * (2 << 20), timeout=10)
        assert declared.status_code == 413 and "error" in declared.json(), (base, declared.text)
        chunked = httpx.post(upload, headers=key, content=streamed(), timeout=10)
        assert chunked.status_code == 413 and "error" in chunked.json(), (base, chunked.text)
        assert httpx.post(upload, headers=key, content=b"x" * 1000, timeout=10).json()["bytes"] == 1000
        preflight = httpx.options(f"{base}/service/ner-extraction/x", timeout=5,
                                  headers={"origin": ORIGIN, "access-control-request-method": "POST"})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == ORIGIN


def test_the_edge_keeps_the_pools_own_parts_and_stores_to_itself(pool: Pool) -> None:
    key = {"x-api-key": KEY}
    for path in ("coordinator/api/admin/workers", "coordinator/health", "chromadb/api/v2/heartbeat", "redis/x"):
        answer = httpx.get(f"{pool.edge}/service/{path}", headers=key, timeout=5)
        assert answer.status_code == 404 and answer.json()["error"].startswith("unknown service"), (path, answer.text)


def test_rate_limit_on_the_coordinators_own_route(pool: Pool) -> None:
    with httpx.Client(headers={"x-api-key": KEY}, timeout=5) as client:
        codes = [client.get(f"{pool.coordinator}/service/ner-extraction/x").status_code for _ in range(60)]
    assert 429 in codes and codes[0] == 200
    assert httpx.get(f"{pool.coordinator}/health", timeout=5).status_code == 200  # the rest of the API is not counted
