"""The load balancer's caller fence over real sockets: callers told apart by their source address (127.0.0.2
runs notes-coa, 127.0.0.3 runs nothing), on the fast path (a GET) and the ASGI router's (a POST)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from procs import free_port
from rma import catalog
from rma.routing.app import RoutingApp
from rma.routing.fastpath import FastPath
from rma.routing.fence import CallerFence, callers_by_service
from rma.routing.router import ServiceRouter
from rma.routing.server import serve_forever
from rma.routing.table import CallableSource, Table, parse_table
from rma.services.base import Context
from rma.services.load_balancer import LoadBalancer

NOTES_HOST, STRANGER = "127.0.0.2", "127.0.0.3"


def replica(worker: str, host: str, port: int) -> dict[str, Any]:
    return {"worker_id": worker, "url": f"http://{host}:{port}", "host": host, "port": port, "load": 0}


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A replica that answers every request 200 "ok" (reading a declared body first)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def run(test: Callable[[int], Awaitable[None]]) -> None:
    """A fenced load balancer in front of one replica each of llm-inference and ner-extraction."""
    async def main() -> None:
        upstream_port = free_port()
        server = await asyncio.start_server(answer_ok, "127.0.0.1", upstream_port)
        table = {"llm-inference": [replica("gpu1", "127.0.0.1", upstream_port)],
                 "ner-extraction": [replica("cpu1", "127.0.0.1", upstream_port)],
                 "notes-coa": [replica("cpu2", NOTES_HOST, 8100)]}
        source = CallableSource(lambda: table)
        router = ServiceRouter(source, aliases=catalog.ALIASES, fence=CallerFence(source))
        port, stop = free_port(), asyncio.Event()
        task = asyncio.create_task(serve_forever(RoutingApp("load-balancer", router, router), "127.0.0.1", port,
                                                 stop, FastPath(router)))
        await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(test(port), 10)
        finally:
            stop.set()
            await task
            await router.forwarder.aclose()
            server.close()
    asyncio.run(main())


def client_from(address: str, port: int) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5)


def test_the_callers_of_a_service_are_the_addresses_of_the_replicas_of_the_services_that_call_it() -> None:
    table = Table(parse_table({"notes-coa": [replica("a", "198.19.0.5", 8100), replica("b", "198.19.0.6", 8100)],
                               "document-processing": [replica("c", "198.19.0.7", 8103)],
                               "ner-extraction": [replica("d", "198.19.0.8", 8108)]}), loaded=True)
    assert callers_by_service(table) == {"llm-inference": {"198.19.0.5", "198.19.0.6"}, "vision-ocr": {"198.19.0.7"}}


def test_only_a_worker_running_a_services_caller_gets_through_on_either_path() -> None:
    async def test(port: int) -> None:
        async with client_from(NOTES_HOST, port) as notes, client_from(STRANGER, port) as stranger:
            for send in (lambda c, s: c.get(f"/service/{s}/v1/models"),
                         lambda c, s: c.post(f"/service/{s}/v1/completions", content=b"{}")):
                for name in ("llm-inference", "llm"):
                    allowed = await send(notes, name)
                    assert (allowed.status_code, allowed.text) == (200, "ok")
                for caller, service in ((stranger, "llm-inference"), (notes, "ner-extraction"),
                                        (stranger, "ner-extraction"), (stranger, "llm")):
                    refused = await send(caller, service)
                    assert refused.status_code == 403, (service, refused.text)
                    assert refused.json()["service"] in ("llm-inference", "ner-extraction")
                    assert "load balancer" in refused.json()["reason"]
            assert "only the workers running notes-coa" in (await stranger.get("/service/llm/x")).json()["reason"]
            assert (await stranger.get("/health")).status_code == 200  # the fence is for calls, not for health
    run(test)


def test_the_load_balancer_fences_callers_only_on_the_mesh(tmp_path: Any) -> None:
    def argv(on_mesh: bool) -> tuple[str, ...]:
        return LoadBalancer().launch(Context("198.19.0.1", 8090, tmp_path, ("https://c:8080",),
                                             on_mesh=on_mesh)).argv
    assert "--fence-callers" in argv(True)
    assert "--fence-callers" not in argv(False)
