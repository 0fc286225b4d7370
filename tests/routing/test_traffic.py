"""What a router counts per service (on the fast path and the ASGI path alike) and how it reports it."""

from __future__ import annotations

import asyncio
import json

import httpx

from procs import free_port
from rma.coordinator.router_report import ReportBody
from rma.routing.app import RoutingApp
from rma.routing.fastpath import FastPath
from rma.routing.report import REPORT_PATH, TrafficReporter
from rma.routing.router import ServiceRouter
from rma.routing.server import Request, serve_forever
from rma.routing.table import CallableSource
from rma.routing.traffic import Traffic
from rma.traffic_report import BUCKETS, LATENCY_BOUNDS_S

SLOW_BUCKET = next(i for i, bound in enumerate(LATENCY_BOUNDS_S) if bound > 0.03) - 1  # holds 30 ms


async def replica(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """/fail answers 500, /slow after 30 ms, anything else 200 at once; keep-alive, bodies read."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                           if line.startswith(b"content-length")), 0)
            await reader.readexactly(length)
            path = head.split(b" ")[1]
            if path == b"/slow":
                await asyncio.sleep(0.03)
            status = b"500 Internal Server Error" if path == b"/fail" else b"200 OK"
            writer.write(b"HTTP/1.1 %s\r\ncontent-length: 2\r\n\r\nok" % status)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def exchange(port: int, *requests: bytes) -> list[bytes]:
    """Send each request on one kept-alive connection; the status line of each answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []
    for request in requests:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length"))
        await reader.readexactly(length)
        statuses.append(head.split(b"\r\n")[0])
    writer.close()
    return statuses


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: lb\r\n\r\n".encode()


def test_the_router_counts_each_answer_once_whichever_path_it_took() -> None:
    async def main() -> tuple[ServiceRouter, list[bool], list[bytes]]:
        backend_port = free_port()
        backend = await asyncio.start_server(replica, "127.0.0.1", backend_port)
        url = f"http://127.0.0.1:{backend_port}"
        table = {"ner-extraction": [{"worker_id": "w1", "url": url}], "rag-embeddings": []}
        router = ServiceRouter(CallableSource(lambda: table), aliases={"ner": "ner-extraction"})
        fast = FastPath(router)
        taken: list[bool] = []

        def counting(request: Request) -> bool:
            taken.append(fast(request))
            return taken[-1]

        port, stop = free_port(), asyncio.Event()
        server = asyncio.create_task(serve_forever(RoutingApp("load-balancer", router, router), "127.0.0.1", port,
                                                   stop, counting))
        await asyncio.sleep(0.05)
        try:
            statuses = await exchange(
                port, get("/service/ner/a"), get("/service/ner/b"), get("/service/ner/slow"),
                get("/service/ner/fail"), b"POST /service/ner/c HTTP/1.1\r\nhost: lb\r\ncontent-length: 2\r\n\r\nhi",
                get("/service/rag-embeddings/x"), get("/service/nonsense/x"))
        finally:
            stop.set()
            await server
            await router.forwarder.aclose()
            backend.close()
        return router, taken, statuses

    router, taken, statuses = asyncio.run(main())
    assert [s.split(b" ")[1] for s in statuses] == [b"200", b"200", b"200", b"500", b"200", b"503", b"404"]
    assert taken[1:4] == [True, True, True] and not taken[4]  # the GETs on a pooled connection, the POST not
    ner = router.traffic.services["ner-extraction"]
    assert sum(ner.latency) == 5 and ner.errors == 1
    assert sum(ner.latency[SLOW_BUCKET:]) >= 1  # the 30 ms answer, timed to its head
    rag = router.traffic.services["rag-embeddings"]
    assert sum(rag.latency) == 1 and rag.errors == 1  # the router's own 503 counts: the client saw it
    assert set(router.traffic.services) == {"ner-extraction", "rag-embeddings"}  # not what cannot be routed


def test_a_report_carries_what_came_since_the_last_one_taken() -> None:
    traffic = Traffic(now=100.0)
    traffic.record("redis", 200, 0.002)
    traffic.record("redis", 503, 0.2)
    report = traffic.report(105.0)
    assert report.interval_s == 5.0 and report.services["redis"].requests == 2
    traffic.record("redis", 200, 0.002)  # while the report is on its way
    traffic.sent(report)
    after = traffic.report(111.0)
    assert after.interval_s == 6.0 and after.services["redis"].requests == 1 and after.services["redis"].errors == 0
    traffic.sent(after)
    assert traffic.report(115.0).services == {}


def test_the_reporter_fails_over_and_keeps_its_counts_while_no_coordinator_takes_them() -> None:
    posted: list[tuple[str, bytes, str | None]] = []
    up = {"second": False}

    def coordinators(request: httpx.Request) -> httpx.Response:
        if request.url.host == "first":
            raise httpx.ConnectError("refused", request=request)
        if not up["second"]:
            return httpx.Response(503)
        posted.append((request.url.path, request.content, request.headers.get("authorization")))
        return httpx.Response(200, json={"status": "ok"})

    traffic = Traffic(now=0.0)
    for _ in range(3):
        traffic.record("ner-extraction", 200, 0.004)
    reporter = TrafficReporter(("http://first:8080", "http://second:8080"), admin_token="adm")

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(coordinators)) as client:
            assert not await reporter.report(client, traffic, 5.0)
            assert "first:8080: refused" in reporter.problem and "second:8080: HTTP 503" in reporter.problem
            traffic.record("ner-extraction", 502, 0.004)
            up["second"] = True
            assert await reporter.report(client, traffic, 10.0)
            assert not reporter.problem

    asyncio.run(run())
    [(path, body, token)] = posted
    assert path == REPORT_PATH and token == "Bearer adm"
    sent = ReportBody.model_validate_json(body).report()  # the coordinator's model reads what routers send
    assert sent.interval_s == 10.0 and sent.services["ner-extraction"].requests == 4
    assert sent.services["ner-extraction"].errors == 1 and len(json.loads(body)["services"]["ner-extraction"][
        "latency"]) == BUCKETS
    assert traffic.report(12.0).services == {}
