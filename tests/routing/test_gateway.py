"""The gateway in front of a trivial app, over the ASGI transport: keys, CORS, body cap, rate limit."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from rma.routing.gateway import Gateway, GatewaySettings, RateLimiter
from rma.routing.proxy import BodyTooLarge
from rma.routing.router import answer


async def inner(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body the way the router streams it, then echoes what it saw."""
    size = 0
    try:
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
    except BodyTooLarge as error:
        await answer(send, 413, {"error": str(error)})
        return
    await answer(send, 200, {"bytes": size, "headers": [k.decode() for k, _ in scope["headers"]]})


def call(settings: GatewaySettings, method: str = "GET", headers: dict[str, str] | None = None,
         content: bytes | None = None, times: int = 1, clock: float = 0.0) -> list[httpx.Response]:
    app = Gateway(inner, settings, clock=lambda: clock)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return [await client.request(method, "/service/ner/x", headers=headers, content=content)
                    for _ in range(times)]

    return asyncio.run(run())


def test_api_key_required_once_configured() -> None:
    settings = GatewaySettings(api_keys=("k1", "k2"))
    assert call(settings)[0].status_code == 401
    assert call(settings, headers={"x-api-key": "bad"})[0].json()["error"].startswith("a valid API key")
    assert call(settings, headers={"x-api-key": "k2"})[0].status_code == 200
    assert call(GatewaySettings())[0].status_code == 200


def test_cors_preflight_and_response_headers() -> None:
    settings = GatewaySettings(api_keys=("k",), cors_origins=("https://app.example",))
    pre = {"origin": "https://app.example", "access-control-request-method": "POST",
           "access-control-request-headers": "x-api-key, content-type"}
    ok = call(settings, "OPTIONS", pre)[0]
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == "https://app.example"
    assert ok.headers["access-control-allow-headers"] == "x-api-key, content-type"
    denied = call(settings, "OPTIONS", {**pre, "origin": "https://evil.example"})[0]
    assert denied.status_code == 403 and "error" in denied.json()
    normal = call(settings, headers={"origin": "https://app.example", "x-api-key": "k"})[0]
    assert normal.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in call(settings, headers={"origin": "https://evil.example",
                                                                        "x-api-key": "k"})[0].headers


def test_body_cap_declared_and_streamed() -> None:
    settings = GatewaySettings(max_body_bytes=1000)
    assert call(settings, "POST", content=b"x" * 1000)[0].json()["bytes"] == 1000
    declared = call(settings, "POST", content=b"x" * 1001)[0]
    assert declared.status_code == 413 and "1000 bytes" in declared.json()["error"]

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(5):
            yield b"x" * 400

    app = Gateway(inner, settings)

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
            return await client.post("/service/ner/x", content=chunks())

    assert asyncio.run(run()).status_code == 413
    assert call(settings, "POST", headers={"content-length": "abc"}, content=b"")[0].status_code == 400


def test_rate_limit_answers_429_with_retry_after() -> None:
    answers = call(GatewaySettings(rate_per_s=1.0, rate_burst=3.0), times=5)
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    assert answers[-1].headers["retry-after"] == "1" and "rate limit" in json.loads(answers[-1].text)["error"]


def test_rate_limiter_refills_and_stays_bounded() -> None:
    limiter = RateLimiter(rate_per_s=2.0, burst=2.0)
    assert limiter.wait("a", 0.0) == 0 and limiter.wait("a", 0.0) == 0
    assert limiter.wait("a", 0.0) == 0.5
    assert limiter.wait("a", 0.5) == 0
    for i in range(20_000):
        limiter.wait(f"c{i}", 100.0 + i)
    assert len(limiter.buckets) <= 10_000


def test_settings_from_the_edge_proxys_variables() -> None:
    assert GatewaySettings.from_env({}) == GatewaySettings()
    env = {"RMA_API_KEYS": "k1, k2,", "RMA_CORS_ORIGINS": "https://app.example", "RMA_MAX_BODY_MB": "1.5",
           "RMA_RATE_LIMIT": "0", "RMA_RATE_BURST": "3"}
    assert GatewaySettings.from_env(env) == GatewaySettings(("k1", "k2"), ("https://app.example",), 3 << 19, 0, 3)
    for name, value in (("RMA_MAX_BODY_MB", "lots"), ("RMA_RATE_BURST", "0"), ("RMA_RATE_LIMIT", "nan")):
        with pytest.raises(ValueError, match=name):
            GatewaySettings.from_env({name: value})


def test_rate_limit_is_per_api_key_when_one_is_sent() -> None:
    """One address calling for many users with two keys has two buckets; without a key, or with a wrong one,
    the address's own bucket."""
    settings = GatewaySettings(api_keys=("k1", "k2"), rate_per_s=1.0, rate_burst=2.0)
    app = Gateway(inner, settings, clock=lambda: 0.0)

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            statuses = []
            for key in ("k1", "k1", "k1", "k2", "k2", "bad", "bad", "bad", None):
                headers = {"x-api-key": key} if key else {}
                statuses.append((await client.get("/service/ner/x", headers=headers)).status_code)
            return statuses

    assert asyncio.run(run()) == [200, 200, 429, 200, 200, 401, 401, 429, 429]
