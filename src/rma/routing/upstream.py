"""Pooled keep-alive HTTP/1.1 connections to the replicas, parsed by httptools (llhttp, in C).

aiohttp's client spent ~60% of the proxy's CPU per request here (URL and multidict building,
timers, payload registry, cookie handling); a request to a replica needs none of it. One
`Exchange` is one request/response on one connection: the head goes out in one write, the
body streams (raw with a Content-Length, chunked without), and the answer streams back chunk
by chunk with flow control both ways. Connections are reused only after a complete answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

BUFFER_HIGH = 256 << 10  # pause reading a replica once this much of its answer waits for the client
MAX_IDLE_PER_REPLICA = 256
IDLE_TIMEOUT_S = 30.0
NO_BODY_STATUSES = frozenset({204, 304})


class UpstreamError(Exception):
    """The replica failed this exchange; `connect` says whether it was never reached."""

    def __init__(self, message: str, connect: bool = False) -> None:
        super().__init__(message)
        self.connect = connect


class Receiver(Protocol):
    """What reads a connection's answer: an Exchange, or the fast path's relays."""

    def feed(self, data: bytes) -> None: ...

    def lost(self, exc: Exception | None) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive connection; one answer at a time is read by its `exchange`."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._writable: asyncio.Future[None] | None = None
        self.exchange: Receiver | None = None
        self.kept: Receiver | None = None  # a reader kept for the next exchange (the fast path's, with its parser)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, only alike

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        self.exchange.feed(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.lost(exc)
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(UpstreamError("connection lost while sending the body"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    async def drain(self) -> None:
        if self._writable is not None:
            await self._writable

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def parse(parser: httptools.HttpResponseParser, data: bytes, complete: bool, conn: Connection,
          fail: Callable[[UpstreamError], None]) -> bool:
    """Feed answer bytes to their parser; False, with the connection dropped, for bytes past a complete
    answer (the connection is out of step, not safe to reuse) or a malformed answer, or one a parser
    callback refused (`fail` is told)."""
    if complete:
        conn.abort()
        return False
    try:
        parser.feed_data(data)
    except httptools.HttpParserError as error:
        fail(UpstreamError(f"bad answer from the replica: {error.__context__ or error}"))
        conn.abort()
        return False
    return True


class Exchange:
    """One request on a connection and its streamed answer (status, raw headers, body chunks)."""

    def __init__(self, conn: Connection, pool: Pool, head_only: bool, read_timeout: float) -> None:
        self.conn = conn
        self.pool = pool
        self.head_only = head_only
        self.read_timeout = read_timeout
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.received = False  # any answer byte arrived (a reused connection failing before is retried)
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: UpstreamError | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        conn.exchange = self

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self.headers_done:
            raise UpstreamError("the replica sent a second answer")  # parse() drops the connection
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue): the real one follows
        self.status = status
        self.headers_done = True
        self.content_length = next((int(v) for k, v in self.headers if k == b"content-length" and v.isdigit()), None)
        if self.head_only or status in NO_BODY_STATUSES:
            self._finish(self.parser.should_keep_alive())
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise UpstreamError("the replica sent a body after a HEAD answer")  # parse() drops the connection
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > BUFFER_HIGH and not self._paused and self.conn.transport is not None:
            self._paused = True
            self.conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.headers_done and not self.complete:
            self._finish(self.parser.should_keep_alive())
            self._wake()

    # protocol events
    def feed(self, data: bytes) -> None:
        self.received = True
        parse(self.parser, data, self.complete, self.conn, self._fail)

    def lost(self, exc: Exception | None) -> None:
        delimited = self.content_length is not None or any(k == b"transfer-encoding" for k, _ in self.headers)
        if self.headers_done and not self.complete and exc is None and not delimited:
            self._finish(False)  # an answer delimited by the end of the connection
            self._wake()
        elif not self.complete:
            self._fail(UpstreamError(f"the replica closed the connection ({exc or 'EOF'})"))

    def _finish(self, keep_alive: bool) -> None:
        self.complete = True
        self.keep_alive = keep_alive

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(self.read_timeout, self._timed_out, self._waiter)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None

    @staticmethod
    def _timed_out(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("the replica sent nothing within the read timeout"))

    # the caller's side
    async def send(self, head: bytes, body: bytes | AsyncIterator[bytes], chunked: bool) -> None:
        """Write the request; a streamed body goes raw (Content-Length given) or chunked."""
        transport = self.conn.transport
        assert transport is not None
        if isinstance(body, bytes):
            transport.write(head + body)
            return
        transport.write(head)
        async for chunk in body:
            if self.conn.closed:
                raise self.error or UpstreamError("the replica closed the connection while reading the body")
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await self.conn.drain()
        if chunked:
            transport.write(b"0\r\n\r\n")

    async def start(self) -> None:
        """Wait for the answer's status and headers."""
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError if the replica dies before the end."""
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < BUFFER_HIGH // 2 and self.conn.transport is not None:
                    self._paused = False
                    self.conn.transport.resume_reading()
                yield chunk
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            await self._wait()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Back to the pool after a complete keep-alive answer; otherwise the connection is closed. So is one
        that answered HEAD: a replica may follow that answer with a body, and nothing says when it stops."""
        del self.parser  # it holds this exchange: a cycle that only the garbage collector would free
        self.pool.release(self.conn, self.complete and self.keep_alive and not (self._chunks or self.head_only))

    def close(self) -> None:
        self.conn.abort()
        self._fail(UpstreamError("closed"))


class Pool:
    """Idle connections per replica URL (`http://host:port`), newest first.

    Idle times come from time.monotonic(): on Python 3.11 every asyncio.get_running_loop() is a
    getpid() system call, and the fast path takes and returns a connection on every request.
    """

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.idle: dict[str, deque[Connection]] = {}

    def put(self, conn: Connection) -> None:
        idle = self.idle.get(conn.key)
        if idle is None:
            idle = self.idle[conn.key] = deque()
        conn.idle_since = time.monotonic()
        idle.append(conn)
        while len(idle) > MAX_IDLE_PER_REPLICA:
            idle.popleft().abort()

    def release(self, conn: Connection, reusable: bool) -> None:
        """The end of an exchange on `conn`: kept for the next one when `reusable` (a complete keep-alive
        answer, fully read) and still open, else closed."""
        conn.exchange = None
        if reusable and not conn.closed:
            self.put(conn)
        else:
            conn.abort()

    def reused(self, url: str) -> Connection | None:
        idle = self.idle.get(url)
        expired = time.monotonic() - IDLE_TIMEOUT_S
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > expired:
                return conn
            conn.abort()
        return None

    async def connect(self, url: str) -> Connection:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: Connection(url), parts.hostname or "", parts.port or 80)
        except (OSError, TimeoutError) as error:
            raise UpstreamError(f"connect failed: {type(error).__name__}", connect=True) from error
        return conn

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.abort()
        self.idle.clear()
