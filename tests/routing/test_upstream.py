"""The replica connection pool against scripted raw-socket replicas: framing, reuse, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from rma.routing.upstream import Exchange, Pool, UpstreamError

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def replica(script: Script) -> tuple[str, list[int], asyncio.Server]:
    """A server running `script` per connection; the list counts connections accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", accepted, server


def answering(*answers: bytes, keep_open: bool = True) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await reader.readuntil(b"\r\n\r\n")
            for part in answer.split(b"|"):  # `|` marks a pause: the answer arrives in pieces
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.01)
        if keep_open:
            await reader.read()
    return script


async def exchange(pool: Pool, url: str, method: str = "GET") -> Exchange:
    conn = pool.reused(url) or await pool.connect(url)
    ex = Exchange(conn, pool, method == "HEAD", read_timeout=2.0)
    await ex.send(f"{method} / HTTP/1.1\r\nhost: x\r\n\r\n".encode(), b"", chunked=False)
    await ex.start()
    return ex


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_content_length_answers_reuse_one_connection() -> None:
    async def test() -> None:
        url, accepted, server = await replica(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhe|llo",
                                                        b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"))
        pool = Pool(1.0)
        first = await exchange(pool, url)
        assert first.status == 200 and (b"x-a", b"1") in first.headers and first.content_length == 5
        assert await first.read() == b"hello"
        first.release()
        second = await exchange(pool, url)
        assert second.status == 201 and await second.read() == b"ok"
        second.release()
        assert len(accepted) == 1
        pool.close()
        server.close()
    run(test)


def test_chunked_answer_streams_piece_by_piece() -> None:
    async def test() -> None:
        url, _, server = await replica(answering(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n|6\r\nsecond\r\n|0\r\n\r\n"))
        pool = Pool(1.0)
        ex = await exchange(pool, url)
        assert ex.content_length is None
        assert [c async for c in ex.chunks()] == [b"first", b"second"]
        ex.release()
        assert pool.reused(url) is not None
        server.close()
    run(test)


@pytest.mark.parametrize("answer", [b"HTTP/1.1 204 No Content\r\n\r\n",
                                    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"])
def test_no_body_statuses_complete_at_the_head(answer: bytes) -> None:
    async def test() -> None:
        url, accepted, server = await replica(answering(answer, b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nz"))
        pool = Pool(1.0)
        ex = await exchange(pool, url)
        assert ex.complete and await ex.read() == b""
        ex.release()
        again = await exchange(pool, url)
        assert await again.read() == b"z" and len(accepted) == 1
        server.close()
    run(test)


def test_a_head_answer_has_no_body_and_its_connection_is_not_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if head.startswith(b"HEAD"):  # a replica that follows its answer to HEAD with a body, a moment later
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"stray")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nz")
            await writer.drain()

    async def test() -> None:
        url, accepted, server = await replica(script)
        pool = Pool(1.0)
        head = await exchange(pool, url, "HEAD")
        assert head.content_length == 5 and await head.read() == b""
        head.release()
        assert await (await exchange(pool, url)).read() == b"z" and len(accepted) == 2
        server.close()
    run(test)


def test_interim_100_continue_is_skipped() -> None:
    async def test() -> None:
        url, _, server = await replica(answering(
            b"HTTP/1.1 100 Continue\r\n\r\n|HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
        ex = await exchange(Pool(1.0), url)
        assert ex.status == 200 and await ex.read() == b"ok"
        server.close()
    run(test)


def test_connection_close_and_close_delimited_answers_are_not_reused() -> None:
    async def test() -> None:
        url, _, server = await replica(answering(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil|-the-end",
                                                 keep_open=False))
        pool = Pool(1.0)
        ex = await exchange(pool, url)
        assert await ex.read() == b"until-the-end"
        ex.release()
        assert pool.reused(url) is None
        server.close()
    run(test)


def test_replica_dying_mid_answer_raises() -> None:
    async def test() -> None:
        url, _, server = await replica(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial",
                                                 keep_open=False))
        ex = await exchange(Pool(1.0), url)
        with pytest.raises(UpstreamError):
            await ex.read()
        server.close()
    run(test)


def test_replica_closing_before_answering_and_refused_connects() -> None:
    async def test() -> None:
        url, _, server = await replica(answering(keep_open=False))
        with pytest.raises(UpstreamError) as lost:
            await exchange(Pool(1.0), url)
        assert not lost.value.connect
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError) as refused:
            await Pool(1.0).connect(url)
        assert refused.value.connect
    run(test)


def test_silent_replica_times_out() -> None:
    async def test() -> None:
        url, _, server = await replica(answering())
        pool = Pool(1.0)
        ex = Exchange(await pool.connect(url), pool, False, read_timeout=0.1)
        await ex.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", b"", chunked=False)
        with pytest.raises(TimeoutError):
            await ex.start()
        ex.close()
        server.close()
    run(test)
