"""The edge proxy and the load balancer as their factories build them, over real sockets: what the public may
reach, whose X-Forwarded-* the replica sees, and a streamed body past the cap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable

import pytest
from starlette.types import Receive, Scope, Send

from procs import free_port
from rma.routing.app import RouterSettings, RoutingApp, create_edge_proxy, create_load_balancer
from rma.routing.fastpath import FastPath
from rma.routing.gateway import DEFAULT_MAX_BODY, Gateway, GatewaySettings
from rma.routing.router import answer
from rma.routing.server import serve_forever

CAP = 64 << 10


class Replica:
    """A raw-socket replica: answers each request with that request's head; counts chunked body bytes sent to it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.heads: list[bytes] = []
        self.body_bytes = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                if b"transfer-encoding: chunked" in head.lower():
                    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        self.body_bytes += len(await reader.readexactly(size))
                        await reader.readexactly(2)
                    await reader.readuntil(b"\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(head), head))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def coordinator(services: dict[str, list[dict[str, object]]]) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Just enough of a coordinator for a router: its routing table."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await answer(send, 200, {"services": services})
    return app


Test = Callable[[int, Replica], Awaitable[None]]


def run(test: Test, build: Callable[[RouterSettings], RoutingApp]) -> None:
    """A router from `build`, whose coordinator's table has one replica for five services; run `test`."""
    async def main() -> None:
        replica = Replica()
        backend = await asyncio.start_server(replica.handle, "127.0.0.1", replica.port)
        row = {"worker_id": "w1", "url": f"http://127.0.0.1:{replica.port}", "load": 0}
        table = {name: [row] for name in ("ner-extraction", "notes-coa", "coordinator", "chromadb", "minio")}
        stop, coordinator_port, port = asyncio.Event(), free_port(), free_port()
        tasks = [asyncio.create_task(serve_forever(coordinator(table), "127.0.0.1", coordinator_port, stop))]
        await asyncio.sleep(0.05)
        app = build(RouterSettings("127.0.0.1", port, (f"http://127.0.0.1:{coordinator_port}",)))
        gateway = app.front if isinstance(app.front, Gateway) else None
        try:
            async with app.router.running():
                tasks.append(asyncio.create_task(serve_forever(app, "127.0.0.1", port, stop,
                                                               FastPath(app.router, gateway))))
                await asyncio.sleep(0.05)
                await asyncio.wait_for(test(port, replica), 10)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            backend.close()
    asyncio.run(main())


def edge(max_body_bytes: int = DEFAULT_MAX_BODY) -> Callable[[RouterSettings], RoutingApp]:
    """`create_edge_proxy` with its default services, no rate limit, and this body cap."""
    return lambda settings: create_edge_proxy(settings, GatewaySettings(max_body_bytes=max_body_bytes, rate_per_s=0))


async def request(port: int, data: bytes) -> tuple[bytes, bytes]:
    """One request on its own connection: the answer's head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length"))
    body = await reader.readexactly(length)
    writer.close()
    return head, body


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: edge.example\r\n{extra}\r\n".encode()


def test_the_edge_routes_only_the_application_services() -> None:
    async def test(port: int, replica: Replica) -> None:
        for _ in range(2):  # the first through the router (no idle connection yet), the second on the fast path
            for path in ("/service/ner/allowed", "/service/notes-coa/allowed"):
                head, _ = await request(port, get(path))
                assert head.startswith(b"HTTP/1.1 200"), (path, head)
            for path in ("/service/coordinator/api/admin/workers", "/service/chromadb/api/v2/collections",
                         "/service/minio/bucket"):
                head, body = await request(port, get(path))
                assert head.startswith(b"HTTP/1.1 404"), (path, head)
                refusal = json.loads(body)
                assert refusal["error"].startswith("unknown service")
                assert "coordinator" not in refusal["services"] and "chromadb" not in refusal["services"]
        routed = [head.split(b" ")[1] for head in replica.heads if b"x-forwarded-host: edge.example" in head.lower()]
        assert set(routed) == {b"/allowed"}
    run(test, edge())


def test_the_load_balancer_still_routes_every_service_it_routed() -> None:
    async def test(port: int, replica: Replica) -> None:
        for path in ("/service/ner/x", "/service/coordinator/health", "/service/chromadb/api/v2/heartbeat"):
            head, _ = await request(port, get(path))
            assert head.startswith(b"HTTP/1.1 200"), (path, head)
    run(test, create_load_balancer)


SPOOFED = ("x-forwarded-for: 203.0.113.66\r\nx-forwarded-proto: https\r\nx-forwarded-host: bank.example\r\n"
           "x-forwarded-port: 443\r\nforwarded: for=203.0.113.66;proto=https\r\n")


def forwarding(head: bytes) -> list[bytes]:
    return [line for line in head.lower().split(b"\r\n") if line.startswith((b"x-forwarded-", b"forwarded"))]


def test_the_edge_sets_x_forwarded_itself_and_drops_the_clients() -> None:
    async def test(port: int, replica: Replica) -> None:
        for _ in range(2):  # the router's path, then the fast path
            head, seen = await request(port, get("/service/ner/x", SPOOFED))
            assert head.startswith(b"HTTP/1.1 200")
            assert sorted(forwarding(seen)) == [b"x-forwarded-for: 127.0.0.1", b"x-forwarded-host: edge.example",
                                                b"x-forwarded-proto: http"]
        posted, seen = await request(port, b"POST /service/notes-coa/x HTTP/1.1\r\nhost: edge.example\r\n"
                                           b"content-length: 2\r\n" + SPOOFED.encode() + b"\r\nhi")
        assert posted.startswith(b"HTTP/1.1 200") and b"x-forwarded-for: 127.0.0.1\r\n" in seen.lower()
        assert b"203.0.113.66" not in seen and b"bank.example" not in seen
    run(test, edge())


def test_the_load_balancer_appends_to_x_forwarded_for() -> None:
    async def test(port: int, replica: Replica) -> None:
        _, seen = await request(port, get("/service/ner/x", "x-forwarded-for: 10.1.2.3\r\n"))
        assert b"x-forwarded-for: 10.1.2.3, 127.0.0.1" in seen.lower()
    run(test, create_load_balancer)


async def post_chunked(port: int, path: str, chunks: int, at_once: bool) -> bytes:
    """Send a chunked body of `chunks` 16 KiB chunks, `at_once` (and ended) or one by one (stopping where the
    edge stops reading); all that came back until the edge closed the connection."""
    loop = asyncio.get_running_loop()
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".encode()
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setblocking(False)
        if at_once:
            await loop.sock_sendall(sock, head + chunk * chunks + b"0\r\n\r\n")
        else:
            await loop.sock_sendall(sock, head)
            with contextlib.suppress(ConnectionError):
                for _ in range(chunks):
                    await loop.sock_sendall(sock, chunk)
                    await asyncio.sleep(0.002)
        received = b""
        with contextlib.suppress(ConnectionError):
            try:
                while data := await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 2):
                    received += data
            except TimeoutError:
                raise AssertionError(f"the edge kept the connection open after {received[:60]!r}") from None
        return received


# A body past the cap in one write is read whole before the refusal; sent on and on, the edge stops reading it.
@pytest.mark.parametrize(("chunks", "at_once"), [(8, True), (64, False)])
@pytest.mark.parametrize("service", ["ner", "notes-coa"])  # retry-safe (a replay copy is kept) and not
def test_a_chunked_body_past_the_cap_is_refused_and_never_reaches_the_replica_past_it(
        service: str, chunks: int, at_once: bool) -> None:
    async def test(port: int, replica: Replica) -> None:
        received = await post_chunked(port, f"/service/{service}/upload", chunks, at_once)
        head, _, body = received.partition(b"\r\n\r\n")  # and then EOF: the edge closed the connection
        assert head.startswith(b"HTTP/1.1 413") and b"application/json" in head, received[:200]
        assert b"connection: close" in head.lower() and f"{CAP} bytes" in json.loads(body)["error"]
        await asyncio.sleep(0.1)
        assert replica.body_bytes <= CAP
    run(test, edge(max_body_bytes=CAP))
