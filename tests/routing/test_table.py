"""The routing table: parsing the coordinator's answer, keeping the last table while it is away."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from rma.routing.table import CallableSource, HttpTableSource, parse_reasons, parse_table

TABLE = {"services": {
    "ner-extraction": [{"worker_id": "w1", "host": "10.0.0.1", "port": 8108, "url": "http://10.0.0.1:8108",
                        "load": 0.5, "state": "healthy", "last_heartbeat": 1.0}],
    "llm-inference": [],
}}
GAPS = {"gaps": [{"service": "llm-inference", "status": "critical", "reason": "no GPU worker"},
                 {"service": "ner-extraction", "status": "ok", "reason": ""}]}


def test_parse_table_and_reasons() -> None:
    table = parse_table(TABLE)
    assert table["ner-extraction"][0].url == "http://10.0.0.1:8108"
    assert table["ner-extraction"][0].load == 0.5
    assert table["llm-inference"] == ()
    assert parse_reasons(GAPS) == {"llm-inference": "no GPU worker"}
    with pytest.raises(ValueError):
        parse_table({"services": {"ner-extraction": "nope"}})


def test_http_source_keeps_the_last_table_while_the_coordinator_is_down() -> None:
    up = {"value": True}

    def coordinator(request: httpx.Request) -> httpx.Response:
        if not up["value"]:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=TABLE if request.url.path.endswith("/table") else GAPS)

    source = HttpTableSource(("http://coordinator:8080",))

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(coordinator)) as client:
            assert not source.current().loaded
            await source.refresh(client)
            first = source.current()
            assert first.loaded and not first.problem
            assert first.reasons == {"llm-inference": "no GPU worker"}
            up["value"] = False
            await source.refresh(client)
            stale = source.current()
            assert stale.services == first.services and "unreachable" in stale.problem

    asyncio.run(run())


def test_unreadable_gap_report_still_explains_the_503() -> None:
    def coordinator(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=TABLE) if request.url.path.endswith("/table") else httpx.Response(403)

    source = HttpTableSource(("http://coordinator:8080",))

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(coordinator)) as client:
            await source.refresh(client)

    asyncio.run(run())
    assert "RMA_ADMIN_TOKEN" in source.current().reasons["llm-inference"]


def test_callable_source_rebuilds_at_most_every_ttl() -> None:
    calls = {"n": 0}
    clock = {"t": 0.0}

    def table() -> object:
        calls["n"] += 1
        return TABLE["services"]

    source = CallableSource(table, lambda: {"llm-inference": "why"}, ttl_s=0.5, clock=lambda: clock["t"])
    for _ in range(10):
        source.current()
    clock["t"] = 0.6
    assert source.current().reasons == {"llm-inference": "why"}
    assert calls["n"] == 2


def test_callable_source_rebuilds_at_once_when_its_version_changes() -> None:
    """A replica that joined is routed on the next request, not one TTL later (discover and /service agree)."""
    state = {"version": 1, "services": {}}
    source = CallableSource(lambda: state["services"], ttl_s=60, clock=lambda: 0.0, version=lambda: state["version"])
    assert source.current().endpoints("ner-extraction") == ()
    state["services"] = TABLE["services"]
    assert source.current().endpoints("ner-extraction") == ()  # same version, inside the TTL: the cached table
    state["version"] = 2
    assert source.current().endpoints("ner-extraction")


def test_a_replica_is_checked_where_the_coordinator_says_its_engine_answers() -> None:
    from rma.routing.router import probe_targets
    from rma.routing.table import Table

    table = Table(parse_table({"services": {
        "minio": [{"worker_id": "s1", "url": "http://10.0.0.2:9000", "health_path": "/healthz"}],
        "ner-extraction": [{"worker_id": "w1", "url": "http://10.0.0.1:8108", "health_path": "not-a-path"}],
    }}))
    assert dict(probe_targets(table)) == {"http://10.0.0.2:9000": "/healthz", "http://10.0.0.1:8108": "/health"}


def test_a_router_reads_the_table_from_the_coordinator_replicas_it_lists_once_the_first_goes() -> None:
    replica = {"worker_id": "edge-1", "url": "http://198.18.0.10:8080", "host": "198.18.0.10", "port": 8080,
               "load": 0}
    asked: list[str] = []
    first_up = {"value": True}

    def coordinators(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.host)
        if request.url.host == "first":
            if not first_up["value"]:
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, json={"services": {"coordinator": [replica]}} if
                                  request.url.path.endswith("/table") else GAPS)
        return httpx.Response(200, json={"services": {"coordinator": []}} if
                              request.url.path.endswith("/table") else GAPS)

    source = HttpTableSource(("http://first:8080",))

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(coordinators)) as client:
            await source.refresh(client)
            assert source.urls == ("http://first:8080", "http://198.18.0.10:8080")
            first_up["value"] = False
            await source.refresh(client)
            assert source.current().loaded and not source.current().problem and "198.18.0.10" in asked
            assert source.urls == ("http://first:8080",)  # the replica's table lists no replica now

    asyncio.run(run())
