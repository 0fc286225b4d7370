"""A lean HTTP/1.1 server for the routers' ASGI app: an asyncio Protocol over httptools (llhttp).

Profiled under wrk, uvicorn's generic ASGI cycle (header validation, per-message checks, one
socket write per message) cost more per proxied request than the forwarding itself. This
server does what the routers need and no more: keep-alive and pipelining (one request at a
time per connection), streamed request bodies with back-pressure, `Expect: 100-continue`,
chunked answers when the app gives no length, HEAD, `http.disconnect`, and an app's
`connection: close` (the connection ends after that answer). The head of a
response is held until its first body message (or the next loop turn) so a small answer goes
out in one write. No lifespan: `serve` runs the router's background loops itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools
from starlette.types import ASGIApp, Message

from rma.front import FrontDoor, FrontSettings
from rma.front.relay import CLOSE_CLIENT_HEADER, RELAYED_HEADER

log = logging.getLogger("rma.routing")

# Takes a parsed request and returns True when it forwards it itself, else the ASGI app runs it.
FastForward = Callable[["Request"], bool]
BODY_HIGH = 256 << 10  # stop reading a client once this much of its body waits for the app
LINGER_BYTES = 4 << 20  # a refused body is read and dropped up to this much after the answer ...
LINGER_S = 2.0  # ... for at most this long, then the connection closes
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
NO_BODY = frozenset({204, 304})
SERVER_ERROR = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
RELAYED = RELAYED_HEADER.lower().encode()
CLOSE_CLIENT_LINE = b"%s: 1\r\n" % CLOSE_CLIENT_HEADER.lower().encode()
FRONT_HEADERS = frozenset({b"x-forwarded-host", b"via"})  # what else Caddy adds (HAProxy adds none)


class Request:
    """One request's ASGI side: its body queue (receive) and its response state (send).

    The ASGI scope is built only when the app runs: the fast path forwards from the parsed fields.
    """

    # Defaults on the class: a request sets only what differs (most of it never changes on the fast path).
    expect_continue = False
    has_body = False  # a Content-Length above 0, or Transfer-Encoding
    _scope: dict[str, Any] | None = None
    buffered = 0
    body_done = False
    waiter: asyncio.Future[None] | None = None
    started = False
    finished = False
    chunked = False
    head = b""  # the response head, written with the first body message
    cancel: Callable[[], None] | None = None  # stops a fast-path forward when the client goes
    scheme = "http"

    def __init__(self, conn: HttpProtocol, method: str, raw_path: bytes, query: bytes,
                 headers: list[tuple[bytes, bytes]], http_version: str, keep_alive: bool) -> None:
        self.conn = conn
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.client = conn.client
        if conn.behind_front:
            self._from_front(headers)
        for name, value in headers:
            if name == b"content-length":
                self.has_body = self.has_body or value != b"0"
            elif name == b"transfer-encoding":
                self.has_body = True
            elif name == b"expect":
                self.expect_continue = value.lower() == b"100-continue"
        self.head_only = method == "HEAD"
        self.body: deque[bytes] = deque()

    def _from_front(self, headers: list[tuple[bytes, bytes]]) -> None:
        """A request relayed by this process's own front door: its client and scheme are what the front door set.

        The front door's forwarding headers are taken off, so the app sees the request as the client sent it;
        an X-Forwarded-For the client itself sent (passed as X-Rma-Relayed) is put back.
        """
        kept = []
        for name, value in headers:
            if name == b"x-forwarded-for":
                self.client = (value.decode("latin-1").rsplit(",", 1)[-1].strip(), 0)
            elif name == b"x-forwarded-proto":
                self.scheme = "https" if value == b"https" else "http"
            elif name == RELAYED:
                if value:
                    kept.append((b"x-forwarded-for", value))
            elif name not in FRONT_HEADERS:
                kept.append((name, value))
        headers[:] = kept

    @property
    def scope(self) -> dict[str, Any]:
        if self._scope is None:
            self._scope = {
                "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": self.http_version, "method": self.method, "scheme": self.scheme,
                "path": _unquote(self.raw_path), "raw_path": self.raw_path, "query_string": self.query,
                "root_path": "", "headers": self.headers, "client": self.client, "server": self.conn.server,
            }
        return self._scope

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> Message:
        while True:
            if self.conn.lost or self.finished:
                return {"type": "http.disconnect"}
            if self.body or self.body_done:
                return self._next_body()
            if self.expect_continue and not self.started:
                self.expect_continue = False
                self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiter = self.conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    def _next_body(self) -> Message:
        data = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        self.buffered = 0
        self.conn.resume()
        more = not self.body_done
        if not more:
            self.body_done = False  # every later receive waits for the disconnect
        return {"type": "http.request", "body": data, "more_body": more}

    async def send(self, message: Message) -> None:
        if self.conn.lost or self.finished:
            return
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            self.start_response(message["status"], message.get("headers", ()))
            self.conn.loop.call_soon(self._flush_head)
        elif kind == "http.response.body" and self.started:
            more: bool = message.get("more_body", False)
            self.write_body(message.get("body", b""), more)
            if more:
                await self.conn.drain()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def start_response(self, status: int, headers: Any) -> None:
        """The head, held back to go out with the first body bytes (one write for a small answer)."""
        self.started = True
        self.head = self._head(status, headers)

    def write_body(self, body: bytes, more: bool) -> None:
        """Frame and write body bytes after `start_response`; the last call (`more` false) ends the answer."""
        if self.head_only:
            body = b""
        elif self.chunked:
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + (b"" if more else b"0\r\n\r\n")
        if self.head or body:
            self.conn.write(self.head + body)
            self.head = b""
        if not more:
            self.finished = True
            self.conn.done(self)

    def _flush_head(self) -> None:
        if self.head and not self.conn.lost:
            self.conn.write(self.head)
            self.head = b""

    def _head(self, status: int, headers: Any) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b""))]
        framed = status in NO_BODY or status < 200
        closing = False  # the app says `connection: close` itself: the connection ends with this answer
        for name, value in headers:
            lines.append(b"%s: %s\r\n" % (name, value))
            low = name.lower()
            framed = framed or low == b"content-length"
            closing = closing or (low == b"connection" and value.lower() == b"close")
        if not framed:
            if self.http_version == "1.1":
                self.chunked = not self.head_only
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 client reads an unframed answer to the close
        if closing:
            self.keep_alive = False
        elif not self.keep_alive:
            lines.append(b"connection: close\r\n")
        if self.conn.behind_front and (closing or self is self.conn.parsing):
            # A body left unread ends the connection here; the front door must end the client's too, or
            # it would read the rest of that body as requests (Connection is hop-by-hop: it stops at the front door).
            lines.append(CLOSE_CLIENT_LINE)
        lines.append(b"\r\n")
        return b"".join(lines)


class HttpProtocol(asyncio.Protocol):
    """One client connection: parses requests, runs the app per request, in order."""

    def __init__(self, app: ASGIApp, loop: asyncio.AbstractEventLoop, fast: FastForward | None = None,
                 behind_front: bool = False) -> None:
        self.app = app
        self.behind_front = behind_front  # on the front door's private socket: it relays every request
        self.fast = fast
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.lost = False
        self.paused = False
        self.writable: asyncio.Future[None] | None = None
        self.on_writable: Callable[[], None] | None = None  # a fast-path forward waiting for the client
        self.queue: deque[Request] = deque()  # parsed, waiting (pipelined) or running at the head
        self.parsing: Request | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.lingering = 0  # after an answer to a request whose body was left unread: bytes still to discard

    # transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, only alike
        peer, sock = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.lingering -= min(len(data), self.lingering)
            if not self.lingering:
                self._abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here (h2c, websocket): the request is answered in HTTP/1.1 as if no Upgrade
            # were asked for, and the connection ends with that answer (the parser stops at an upgrade).
            if self.queue:
                self.queue[-1].keep_alive = False
            else:
                self._refuse()
        except httptools.HttpParserError:
            self._refuse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for request in self.queue:
            request.wake()
            if request.cancel is not None:
                request.cancel()
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def pause_writing(self) -> None:
        self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None
        if self.on_writable is not None:
            resume, self.on_writable = self.on_writable, None
            resume()

    # llhttp callbacks (no on_message_begin: on_headers_complete starts the next request's url and headers)
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        url = self.url
        if url.startswith(b"/") and b"#" not in url:  # origin form, the usual: no parser needed
            path, _, query = url.partition(b"?")
        else:
            parsed = httptools.parse_url(url)
            path, query = parsed.path or b"/", parsed.query or b""
        parser = self.parser
        request = Request(self, parser.get_method().decode("ascii"), path, query, self.headers,
                          parser.get_http_version(), parser.should_keep_alive())
        self.url, self.headers = b"", []
        self.parsing = request
        queue = self.queue
        queue.append(request)
        if len(queue) == 1 and (self.fast is None or not self.fast(request)):
            self.run_app(request)

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        if request is None or request.finished:
            return
        request.body.append(body)
        request.buffered += len(body)
        if request.buffered > BODY_HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        request.wake()

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.body_done = True
            self.parsing.wake()
            self.parsing = None

    # the requests' side
    def _start(self, request: Request) -> None:
        if self.fast is None or not self.fast(request):
            self.run_app(request)

    def run_app(self, request: Request) -> None:
        """The request through the ASGI app; also where the fast path hands what it does not handle."""
        task = self.loop.create_task(self._run(request))
        task.add_done_callback(lambda t: self._ended(request, t))

    async def _run(self, request: Request) -> None:
        await self.app(request.scope, request.receive, request.send)

    def _ended(self, request: Request, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("the app failed on %s %s", request.method, request.raw_path.decode("latin-1"),
                      exc_info=error)
        if not request.finished:
            if not request.started and not self.lost:
                self.write(SERVER_ERROR)
            request.finished = True
            request.keep_alive = False
            self.done(request)

    def done(self, request: Request) -> None:
        """The answer is complete: the next pipelined request runs, or the connection closes."""
        if self.queue and self.queue[0] is request:
            self.queue.popleft()
        if not request.keep_alive or request is self.parsing or self.lost:
            self._close()  # an unread body cannot be skipped safely
            return
        self.resume()
        if self.queue:
            self._start(self.queue[0])

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.writable is not None:
            await self.writable

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def _refuse(self) -> None:
        if not self.queue:
            self.write(BAD_REQUEST)
        self._close()

    def _close(self) -> None:
        """End the connection; with a request body still arriving, a lingering close: the answer is sent and
        our side shut, and what the client still sends is read and dropped for a while (up to LINGER_BYTES,
        LINGER_S), so that its unread bytes do not reset the connection before it read the answer."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.parsing is None or self.lost or not transport.can_write_eof():
            transport.close()
            return
        self.parsing = None
        self.lingering = LINGER_BYTES
        self.resume()
        transport.write_eof()
        self.loop.call_later(LINGER_S, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _unquote(path: bytes) -> str:
    return unquote_to_bytes(path).decode("utf-8", "replace") if b"%" in path else path.decode("latin-1")


async def serve_forever(app: ASGIApp, host: str, port: int, stop: asyncio.Event,
                        fast: FastForward | None = None, front: FrontSettings | None = None) -> None:
    """Listen until `stop` is set; then stop accepting and close open connections.

    `fast`, where given, sees each request first and takes those it can forward itself. Where
    `front` says the listener needs it (TLS, or an address other than loopback), the front door (HAProxy
    or Caddy) listens on host:port and this server on its private socket; should it stop, so does this
    (exit 1).
    """
    loop = asyncio.get_running_loop()
    front = front or FrontSettings()
    if not front.needed(host):
        plain: Callable[[], asyncio.Protocol] = lambda: HttpProtocol(app, loop, fast)  # noqa: E731
        server = await loop.create_server(plain, host, port, backlog=4096, reuse_address=True)
        async with server:
            await stop.wait()
        return
    door = FrontDoor(front, host, port)
    relayed: Callable[[], asyncio.Protocol] = lambda: HttpProtocol(app, loop, fast, behind_front=True)  # noqa: E731
    server = await loop.create_unix_server(relayed, str(door.upstream), backlog=4096)
    async with server, door:
        assert door.exited is not None
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopping, door.exited], return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            stopping.cancel()
            log.error("the front door (%s) stopped: %s", door.engine, door.errors() or "no error logged")
            raise SystemExit(1)
