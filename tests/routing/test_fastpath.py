"""The routers' fast path over real sockets: what it takes, what it hands to the ASGI router, and that
an answer through it is the same answer (headers, streaming, failures) as through the router."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from procs import free_port
from rma.routing import fastpath
from rma.routing import router as router_module
from rma.routing.app import RoutingApp
from rma.routing.fastpath import FastPath
from rma.routing.gateway import Gateway, GatewaySettings
from rma.routing.heads import plain_head
from rma.routing.router import ServiceRouter
from rma.routing.server import Request, serve_forever
from rma.routing.table import CallableSource

ODD_ANSWERS = {
    # an interim answer before the real one
    b"/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    # a Connection header naming a header that must not pass
    b"/private": b"HTTP/1.1 200 OK\r\nconnection: x-private\r\nx-private: secret\r\ncontent-length: 2\r\n\r\nok",
    # bytes past a complete answer: a second answer nobody asked for
    b"/overrun": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
    # a body whatever the method, also after the head of an answer to HEAD
    b"/head-body": b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
}


BIG, CHUNK = 64 << 20, 64 << 10  # more than the sockets on the way can hold (~20 MiB here)


class Backend:
    """A replica on a raw socket: records each request head; the path says how to answer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.heads: list[bytes] = []
        self.closed_by_peer = asyncio.Event()
        self.sent_big = 0
        self.port = free_port()

    async def start(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(self.handle, "127.0.0.1", self.port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ")[1]
                if path.startswith(b"/die-before"):
                    writer.close()
                    return
                if path.startswith(b"/die-mid"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
                    await writer.drain()
                    writer.close()
                    return
                if path in ODD_ANSWERS:
                    writer.write(ODD_ANSWERS[path])
                    await writer.drain()
                    continue
                if path == b"/head-body-later":  # the same, the body a moment after the head
                    writer.write(ODD_ANSWERS[b"/head-body"][:-6])
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"forged")
                    await writer.drain()
                    continue
                if path.startswith(b"/until-close"):  # no length, no chunks: the answer ends with the connection
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
                    await writer.drain()
                    writer.close()
                    return
                if path.startswith(b"/big"):  # written as fast as the proxy takes it
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BIG)
                    for _ in range(BIG // CHUNK):
                        writer.write(b"x" * CHUNK)
                        await writer.drain()
                        self.sent_big += CHUNK
                    continue
                if path.startswith(b"/stall"):
                    await asyncio.sleep(5)
                    writer.close()
                    return
                if path.startswith(b"/events"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                                 b"\r\n9\r\ndata: 1\n\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.5)
                    writer.write(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
                    await writer.drain()
                    continue
                status = b"404 Not Found" if path.startswith(b"/missing") else b"200 OK"
                body = self.name.encode() + b" " + path
                writer.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\nx-custom: kept\r\nkeep-alive: timeout=5\r\n"
                             b"connection: keep-alive\r\n\r\n%s" % (status, len(body), b"" if b"HEAD" in head[:5]
                                                                     else body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_peer.set()
            writer.close()


Test = Callable[[int, list[Backend], list[bool]], Awaitable[None]]


def run(test: Test, replicas: int = 1, gateway: GatewaySettings | None = None) -> None:
    """Serve a router (with the fast path, counting what it takes) over `replicas` backends; run `test`."""
    async def main() -> None:
        backends = [Backend(f"b{i}") for i in range(replicas)]
        servers = [await backend.start() for backend in backends]
        table = {"ner-extraction": [{"worker_id": b.name, "url": f"http://127.0.0.1:{b.port}", "host": "127.0.0.1",
                                     "port": b.port, "load": 0} for b in backends]}
        router = ServiceRouter(CallableSource(lambda: table), aliases={"ner": "ner-extraction"},
                               strip_headers=frozenset({b"x-api-key"}))
        front = Gateway(router, gateway) if gateway else router
        fast = FastPath(router, front if isinstance(front, Gateway) else None)
        taken: list[bool] = []

        def counting(request: Request) -> bool:
            taken.append(fast(request))
            return taken[-1]

        port, stop = free_port(), asyncio.Event()
        task = asyncio.create_task(serve_forever(RoutingApp("edge-proxy", router, front), "127.0.0.1", port, stop,
                                                 counting))
        await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(test(port, backends, taken), 10)
        finally:
            stop.set()
            await task
            await router.forwarder.aclose()
            for server in servers:
                server.close()
    asyncio.run(main())


async def exchange(port: int, requests: bytes, answers: int = 1) -> list[tuple[bytes, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(requests)
    out = []
    for _ in range(answers):
        out.append(await read_answer(reader))
    writer.close()
    return out


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[bytes, bytes]:
    """The next answer's head and body; `head_only`: the answer to a HEAD request, which has no body."""
    head = await reader.readuntil(b"\r\n\r\n")
    if head_only:
        return head, b""
    if b"transfer-encoding: chunked" in head.lower():
        return head, await reader.readuntil(b"0\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length")), 0)
    return head, await reader.readexactly(length)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: edge.example\r\n{extra}\r\n".encode()


def test_a_pooled_connection_carries_plain_requests_on_the_fast_path_unchanged() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        first = await exchange(port, get("/service/ner/kb?x=1"))  # no idle connection yet: the router connects
        again = await exchange(port, get("/service/ner/kb?x=1", "x-forwarded-for: 10.0.0.9\r\n"))
        assert taken == [False, True]
        for head, body in (first[0], again[0]):
            assert head.startswith(b"HTTP/1.1 200") and b"x-custom: kept" in head and body == b"b0 /kb?x=1"
            assert b"keep-alive: timeout" not in head  # hop-by-hop headers stay on their hop
        upstream = backends[0].heads[-1].lower()
        assert upstream.startswith(b"get /kb?x=1 http/1.1") and b"host: 127.0.0.1:%d" % backends[0].port in upstream
        assert b"x-forwarded-for: 10.0.0.9, 127.0.0.1" in upstream and b"x-forwarded-host: edge.example" in upstream
    run(test)


def head(path: str) -> bytes:
    return f"HEAD {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()


async def pipelined(port: int, requests: list[bytes]) -> list[tuple[bytes, bytes]]:
    """`requests` in one write on one connection; their answers, read as the client would (none for HEAD
    has a body), and then nothing more on the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(requests))
    answers = [await read_answer(reader, head_only=r.startswith(b"HEAD ")) for r in requests]
    try:
        extra = await asyncio.wait_for(reader.read(1 << 16), 0.3)
    except TimeoutError:
        extra = None
    assert extra is None, f"after the last answer: {extra!r}"
    writer.close()
    return answers


def test_statuses_head_and_pipelined_requests_pass_through_in_order() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        await exchange(port, get("/service/ner/warm"))
        answers = await pipelined(port, [get("/service/ner/missing"), head("/service/ner/kb"),
                                         get("/service/ner/third")])
        assert taken[1:] == [True, True, False]  # a connection that answered HEAD is not reused: the third connects
        assert answers[0][0].startswith(b"HTTP/1.1 404") and answers[0][1] == b"b0 /missing"
        assert answers[1][0].startswith(b"HTTP/1.1 200") and b"content-length: 6" in answers[1][0]
        assert answers[2][0].startswith(b"HTTP/1.1 200") and answers[2][1] == b"b0 /third"
    run(test)


@pytest.mark.parametrize("path", ["/service/ner/head-body", "/service/ner/head-body-later"])
@pytest.mark.parametrize("warm", [True, False])  # on the fast path (a pooled connection), and through the router
def test_a_body_after_a_head_answer_never_reaches_the_client(path: str, warm: bool) -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        if warm:
            await exchange(port, get("/service/ner/warm"))
        answers = await pipelined(port, [head(path), get("/service/ner/third")])
        assert taken[-2] is warm
        assert answers[0][0].startswith(b"HTTP/1.1 200") and b"content-length: 6" in answers[0][0]
        assert answers[1][0].startswith(b"HTTP/1.1 200") and answers[1][1] == b"b0 /third", answers[1]
        # the connection that carried the stray body was dropped as out of step, none in the pool is
        await asyncio.wait_for(backends[0].closed_by_peer.wait(), 2)
        again = await pipelined(port, [get("/service/ner/kb")])
        assert again[0][1] == b"b0 /kb"
    run(test)


def test_an_event_stream_arrives_event_by_event() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        await exchange(port, get("/service/ner/warm"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/service/ner/events"))
        head = await reader.readuntil(b"\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 0.4)  # before the backend's pause ends
        rest = await reader.readuntil(b"0\r\n\r\n")
        writer.close()
        assert taken[-1] and head.startswith(b"HTTP/1.1 200") and first.endswith(b"data: 1\n\n")
        assert b"data: 2" in rest
    run(test)


def test_a_replica_that_closes_before_answering_is_retried_elsewhere() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        for _ in range(6):  # idle connections to both replicas
            await exchange(port, get("/service/ner/warm"))
        answers = [(await exchange(port, get("/service/ner/die-before")))[0] for _ in range(2)]
        # Every replica dies on this path; the router tries the other and then answers 502: no hang.
        assert all(head.startswith(b"HTTP/1.1 502") for head, _ in answers)
        assert True in taken[6:]
        ok = await exchange(port, get("/service/ner/kb"))
        assert ok[0][0].startswith(b"HTTP/1.1 200")
    run(test, replicas=2)


def test_a_replica_dying_mid_answer_cuts_the_client_connection() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        await exchange(port, get("/service/ner/warm"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/service/ner/die-mid"))
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()  # EOF after what came: never a complete answer of 100 bytes
        writer.close()
        assert taken[-1] and b"content-length: 100" in head and len(body) < 100
    run(test)


def test_a_client_leaving_mid_stream_closes_the_replica_connection() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        await exchange(port, get("/service/ner/warm"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/service/ner/events"))
        await reader.readuntil(b"data: 1\n\n")
        writer.close()
        await asyncio.wait_for(backends[0].closed_by_peer.wait(), 2)
        assert taken[-1]
    run(test)


def test_the_gateway_admits_on_the_fast_path_only_what_needs_no_answer_of_its_own() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        key = "x-api-key: k1\r\n"
        await exchange(port, get("/service/ner/warm", key))
        refused = await exchange(port, get("/service/ner/kb"))
        allowed = await exchange(port, get("/service/ner/kb", key))
        cors = await exchange(port, get("/service/ner/kb", key + "origin: https://app.example\r\n"))
        assert taken[1:] == [False, True, False]
        assert refused[0][0].startswith(b"HTTP/1.1 401") and allowed[0][0].startswith(b"HTTP/1.1 200")
        assert b"access-control-allow-origin: https://app.example" in cors[0][0]
        assert all(b"x-api-key" not in head.lower() for head in backends[0].heads)  # the key stays at the gateway
    run(test, gateway=GatewaySettings(api_keys=("k1",), cors_origins=("https://app.example",), rate_per_s=0))


def test_a_cors_preflight_is_the_gateways_to_answer_even_without_origins_configured() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        await exchange(port, get("/service/ner/warm"))
        preflight = (b"OPTIONS /service/ner/kb HTTP/1.1\r\nhost: x\r\norigin: https://elsewhere.example\r\n"
                     b"access-control-request-method: POST\r\n\r\n")
        answer = await exchange(port, preflight)
        assert taken[-1] is False and answer[0][0].startswith(b"HTTP/1.1 403")
        assert not any(head.startswith(b"OPTIONS") for head in backends[0].heads)
    run(test, gateway=GatewaySettings(rate_per_s=100))


def test_answers_the_pass_through_cannot_carry_are_reframed_on_the_fast_path() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        await exchange(port, get("/service/ner/warm"))
        interim = await exchange(port, get("/service/ner/interim"))
        private = await exchange(port, get("/service/ner/private"))
        await exchange(port, get("/service/ner/warm"))
        until_close = await exchange(port, get("/service/ner/until-close"))
        await exchange(port, get("/service/ner/warm"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # an HTTP/1.0 client
        writer.write(b"GET /service/ner/kb HTTP/1.0\r\nhost: x\r\n\r\n")
        old_client = await reader.read()  # the proxy closes after the answer
        writer.close()
        assert taken[1:] == [True, True, True, True, False, True]  # warming again after the closed one
        assert interim[0][0].startswith(b"HTTP/1.1 200") and interim[0][1] == b"ok" and b"100" not in interim[0][0]
        assert private[0][1] == b"ok" and b"x-private" not in private[0][0]
        assert b"transfer-encoding: chunked" in until_close[0][0] and b"until close" in until_close[0][1]
        assert old_client.endswith(b"b0 /kb") and b"connection: close" in old_client.lower()
    run(test)


@pytest.mark.parametrize("warm", [True, False])  # on the fast path (a pooled connection), and through the router
def test_bytes_past_an_answer_never_reach_the_client(warm: bool) -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        if warm:
            await exchange(port, get("/service/ner/warm"))
        answers = await pipelined(port, [get("/service/ner/overrun"), get("/service/ner/kb")])
        assert taken[-2] is warm
        assert answers[0] == (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"ok") or \
            answers[0][0].startswith(b"HTTP/1.1 502"), answers[0]
        assert answers[1][1] == b"b0 /kb"  # the next answer on the client's connection is its own
        again = await exchange(port, get("/service/ner/kb"))  # and the pool holds no connection out of step
        assert again[0][1] == b"b0 /kb"
    run(test)


def test_a_silent_replica_is_timed_out_by_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "SWEEP_S", 0.1)
    monkeypatch.setattr(fastpath, "timeout_for", lambda service: 0.3)
    monkeypatch.setattr(router_module, "timeout_for", lambda service: 0.3)

    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        await exchange(port, get("/service/ner/warm"))
        started = asyncio.get_running_loop().time()
        answer = await exchange(port, get("/service/ner/stall"))
        waited = asyncio.get_running_loop().time() - started
        # the fast path gave up after ~0.3 s and handed the request on; the router's try timed out too
        assert taken[-1] and answer[0][0].startswith(b"HTTP/1.1 504") and 0.5 < waited < 3
    run(test)


@pytest.mark.parametrize(("head", "complete", "passed"), [
    (b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nContent-Length: 3\r\nKeep-Alive: timeout=5", False,
     b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 3"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close", False,
     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked"),
    (b"HTTP/1.1 204 No Content\r\nX: y", True, b"HTTP/1.1 204 No Content\r\nX: y"),
    (b"HTTP/1.1 200 OK\r\nConnection: close, x-private\r\nContent-Length: 3", False, None),  # names a header
    (b"HTTP/1.1 200 OK\r\nX: y", False, None),  # ends with the connection
    (b"HTTP/1.1 200 OK\r\nX: y\r\n folded\r\nContent-Length: 1", False, None),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked", False, None),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5", False, None),  # ambiguous framing
])
def test_an_answer_head_passes_as_it_is_less_hop_by_hop_lines_only_when_plain(
        head: bytes, complete: bool, passed: bytes | None) -> None:
    assert plain_head(head, complete) == passed


def test_a_client_reading_slowly_holds_back_the_replica_not_the_proxys_memory() -> None:
    async def test(port: int, backends: list[Backend], taken: list[bool]) -> None:
        await exchange(port, get("/service/ner/warm"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=CHUNK)
        writer.write(get("/service/ner/big"))
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1.0)  # the client reads nothing: the replica stops once the sockets on the way are full
        held_back = backends[0].sent_big
        received = 0
        while received < BIG:
            received += len(await reader.read(1 << 20))
        writer.close()
        assert taken[-1] and received == BIG
        assert held_back < BIG // 2, f"the replica wrote {held_back >> 20} MiB while the client read nothing"
    run(test)
