"""The coordinator client over httpx's MockTransport: typed errors, headers, failover between URLs."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from rma.protocol import HeartbeatRequest, RegisterRequest
from rma.worker.client import CoordinatorClient, IdTaken, Unauthorized, UnknownWorker, Unreachable

ASSIGNMENT = {"worker_id": "w1", "assigned_services": ["redis"], "heartbeat_interval": 1.0,
              "service_configs": [{"name": "redis", "port": 6379, "priority": 2, "tier": 3, "kind": "storage",
                                   "engine": "redis-server"}]}
REGISTERED = {**ASSIGNMENT, "worker_type": "storage", "tier": 3, "worker_token": "tok", "message": "hi"}


def client(handler: httpx.MockTransport, *urls: str, join_token: str | None = None) -> CoordinatorClient:
    return CoordinatorClient(urls or ("http://a:8080",), join_token, transport=handler)


def test_register_sends_both_tokens_and_reads_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=REGISTERED)

    async def go() -> None:
        c = client(httpx.MockTransport(handle), join_token="join")
        answer = await c.register(RegisterRequest(worker_id="w1"), "old-token")
        assert answer.worker_token == "tok" and answer.assigned_services == ["redis"]
        await c.aclose()

    asyncio.run(go())
    assert seen[0].headers["authorization"] == "Bearer join"
    assert seen[0].headers["x-worker-token"] == "old-token"
    assert json.loads(seen[0].content)["worker_id"] == "w1"


@pytest.mark.parametrize(("status", "error"), [(401, Unauthorized), (404, UnknownWorker), (409, IdTaken)])
def test_statuses_become_types(status: int, error: type[Exception]) -> None:
    async def go() -> None:
        c = client(httpx.MockTransport(lambda _: httpx.Response(status, json={"error": "no"})))
        with pytest.raises(error):
            await c.heartbeat(HeartbeatRequest(worker_id="w1"), "tok")

    asyncio.run(go())


def test_fails_over_to_the_next_coordinator_and_stays_there() -> None:
    hosts: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "a":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "b":
            return httpx.Response(503)
        return httpx.Response(200, json=ASSIGNMENT)

    async def go() -> None:
        c = client(httpx.MockTransport(handle), "http://a:1", "http://b:1", "http://c:1")
        await c.heartbeat(HeartbeatRequest(worker_id="w1"), "tok")
        assert c.url == "http://c:1"
        await c.heartbeat(HeartbeatRequest(worker_id="w1"), "tok")

    asyncio.run(go())
    assert hosts == ["a", "b", "c", "c"]


def test_nobody_answering_is_unreachable() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def go() -> None:
        with pytest.raises(Unreachable, match="http://a:1"):
            await client(httpx.MockTransport(handle), "http://a:1", "http://b:1").register(RegisterRequest(), None)

    asyncio.run(go())


def test_a_worker_fails_over_to_the_coordinator_replicas_its_last_answer_named() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={**ASSIGNMENT, "status": "ok"})

    async def go() -> None:
        c = client(httpx.MockTransport(handle), "http://a:8080")
        c.learn(["http://edge-1:8080/", "http://a:8080"])
        assert c.urls == ("http://a:8080", "http://edge-1:8080")
        await c.heartbeat(HeartbeatRequest(worker_id="w1"), "tok")
        assert c.url == "http://edge-1:8080"
        c.learn(["http://edge-2:8080"])  # edge-1's replica went: the answer names another
        assert c.urls == ("http://a:8080", "http://edge-2:8080") and c.url == "http://a:8080"
        await c.aclose()

    asyncio.run(go())
