"""The lean front-end server with a small ASGI app: framing, HEAD, keep-alive, pipelining, 100-continue."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from starlette.types import Receive, Scope, Send

from rma.routing.server import serve_forever


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """`/len` answers with a length, `/stream` without one (chunked), `/echo` the body it read."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-q", scope["query_string"])]})
        for part in (b"one", b"two"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    data = body if scope["path"] == "/echo" else b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(data))]})
    await send({"type": "http.response.body", "body": data})


def with_server(test: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        task = asyncio.create_task(serve_forever(app, "127.0.0.1", port, stop))
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await asyncio.wait_for(test(reader, writer), 5)
        finally:
            writer.close()
            stop.set()
            await task
    asyncio.run(main())


async def answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head:
        return head, await reader.readuntil(b"0\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length")), 0)
    return head, await reader.readexactly(length)


def test_length_chunked_and_head_answers_on_one_kept_alive_connection() -> None:
    async def test(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /len HTTP/1.1\r\nhost: x\r\n\r\n")
        head, body = await answer(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hello"
        writer.write(b"GET /stream?a=1 HTTP/1.1\r\nhost: x\r\n\r\n")
        head, body = await answer(reader)
        assert b"x-q: a=1" in head and body == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
        writer.write(b"HEAD /len HTTP/1.1\r\nhost: x\r\n\r\nGET /len HTTP/1.1\r\nhost: x\r\n\r\n")  # pipelined
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"content-length: 5" in head
        head, body = await answer(reader)  # the HEAD answer had no body: the next answer follows at once
        assert head.startswith(b"HTTP/1.1 200") and body == b"hello"
    with_server(test)


def test_request_bodies_expect_continue_and_connection_close() -> None:
    async def test(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert (await answer(reader))[1] == b"abcde"
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"xyz")
        assert (await answer(reader))[1] == b"xyz"
        writer.write(b"GET /len HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head, _ = await answer(reader)
        assert b"connection: close" in head and await reader.read() == b""
    with_server(test)


def test_malformed_request_gets_400_and_close() -> None:
    async def test(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400")
    with_server(test)
