"""One forwarding attempt on a pooled keep-alive client: streaming both ways, headers faithful.

The original proxy built a client per request (~27 ms each), buffered whole answers and dropped
query strings, response headers and the right Host. Here one connection pool (`upstream`) lives
as long as the process; request bodies stream from the ASGI receive channel and answers stream
back chunk by chunk as the backend writes them (server-sent events arrive event by event).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from rma import catalog
from rma.routing.upstream import Exchange, Pool, UpstreamError

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-connection",
})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # sent with a Content-Length even when empty
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
REPLAY_LIMIT = 1 << 20  # bodies up to 1 MiB of retry-safe requests are kept so a retry can resend them
CONNECT_TIMEOUT_S = 2.0  # a replica that cannot accept a connection in 2 s is down for our purposes
# Read timeouts per service: an LLM answer may take minutes between bytes; a store should not.
READ_TIMEOUT_S = {"llm-inference": 600.0, "vision-ocr": 300.0, "notes-coa": 600.0, "document-processing": 300.0}
DEFAULT_READ_TIMEOUT_S = 60.0
SMALL_ANSWER = 64 << 10  # answers up to this size with a known length are relayed in one piece


class BodyTooLarge(Exception):
    """The client's body passed the gateway's cap while streaming."""


class UpstreamBodyLost(Exception):
    """The client went away while its body was still being sent."""


def timeout_for(service: str) -> float:
    """Seconds the replica may stay silent while answering."""
    return READ_TIMEOUT_S.get(service, DEFAULT_READ_TIMEOUT_S)


def retry_safe(service: str, method: str) -> bool:
    """Safe to send twice: an idempotent method, or a service the catalogue marks a pure function."""
    return method in IDEMPOTENT or pure(service)


def pure(service: str) -> bool:
    """The catalogue marks `service` a pure function: any call to it is safe to repeat."""
    known = catalog.BY_NAME.get(service)
    return known is not None and known.retry_safe


class Body:
    """The client's request body: replayable bytes when small and retry-safe, else a one-shot stream."""

    def __init__(self, receive: Receive, data: bytes | None) -> None:
        self._receive = receive
        self.data = data
        self.started = False  # a stream that has started cannot be sent again
        self.error: Exception | None = None  # why the stream stopped: the client library may wrap it

    @classmethod
    async def read(cls, scope: Scope, receive: Receive, keep: bool) -> Body:
        length = _content_length(scope)
        chunked = any(k == b"transfer-encoding" for k, _ in scope["headers"])
        if length == 0 or (length is None and not chunked):
            return cls(receive, b"")
        if keep and length is not None and length <= REPLAY_LIMIT:
            parts = [chunk async for chunk in cls(receive, None).stream()]
            return cls(receive, b"".join(parts))
        return cls(receive, None)

    @property
    def replayable(self) -> bool:
        return self.data is not None or not self.started

    def content(self) -> bytes | AsyncIterator[bytes]:
        return self.data if self.data is not None else self.stream()

    async def stream(self) -> AsyncIterator[bytes]:
        self.started = True
        while True:
            try:
                message = await self._receive()
            except BodyTooLarge as error:
                self.error = error
                raise
            if message["type"] == "http.disconnect":
                self.error = UpstreamBodyLost("the client disconnected while sending its body")
                raise self.error
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


@dataclass(slots=True)
class Outgoing:
    """What goes to the backend, built once per client request and reused by retries."""

    method: str
    target: bytes  # /path?query, as the client sent it below /service/{name}
    lines: bytes  # the header lines to forward, each ending in CRLF; Host and framing are added per attempt
    length: int | None = None  # the client's Content-Length: its body goes out raw, else chunked

    def head(self, base_url: str, body: Body) -> bytes:
        """The request line and headers for one replica: Host is the replica's, framing fits the body."""
        return self.method.encode() + b" " + self.target + self.tail(base_url, body)

    def tail(self, base_url: str, body: Body) -> bytes:
        """The head after the target: the same for every request with these headers to this replica."""
        lines = self.lines
        if self.length is None and body.data is None:
            lines += b"transfer-encoding: chunked\r\n"
        elif self.length is None and (body.data or self.method in BODY_METHODS):
            lines += b"content-length: %d\r\n" % len(body.data or b"")
        host = base_url.partition("://")[2].encode()
        return b" HTTP/1.1\r\nhost: " + host + b"\r\n" + lines + b"\r\n"


def answer_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An answer's headers for the client: less hop-by-hop ones and those its `Connection` names."""
    named = {token.strip().lower() for key, value in headers if key == b"connection" for token in value.split(b",")}
    skip = HOP_BY_HOP | named if named else HOP_BY_HOP
    return [(k, v) for k, v in headers if k not in skip]


def outgoing(scope: Scope, path: str, skip: frozenset[bytes] = HOP_BY_HOP, trust_forwarded: bool = True) -> Outgoing:
    """Copy the client's request less the `skip` headers (hop-by-hop ones at least), with X-Forwarded-*
    (`forwarded`); Host is set per replica."""
    client = scope.get("client")
    return forwarded(scope["method"], path.encode("latin-1"), scope.get("query_string", b""), scope["headers"],
                     client[0] if client else None, scope.get("scheme", "http"), skip, trust_forwarded)


def forwarded(method: str, path: bytes, query: bytes, client_headers: list[tuple[bytes, bytes]],
              client_ip: str | None, scheme: str, skip: frozenset[bytes], trust_forwarded: bool) -> Outgoing:
    """`outgoing` from the request's parts, for the fast path, which has no ASGI scope.

    X-Forwarded-For gets the client's address, X-Forwarded-Proto and -Host the scheme and Host it used.
    Trusted (internal traffic), the client's own X-Forwarded-* pass and the address is appended; else
    every X-Forwarded-* and Forwarded header it sent is dropped: a public client could claim any address.
    """
    named: set[bytes] = set()
    forwarded_for = original_host = b""
    headers: list[tuple[bytes, bytes]] = []
    has_proto = has_host = False
    length = None
    for key, value in client_headers:
        if key in skip:
            if key == b"connection":
                named.update(token.strip() for token in value.lower().split(b","))
        elif key == b"host":
            original_host = value
        elif key.startswith(b"x-forwarded-") or key == b"forwarded":
            if not trust_forwarded:
                continue
            if key == b"x-forwarded-for":
                forwarded_for = value
                continue
            has_proto = has_proto or key == b"x-forwarded-proto"
            has_host = has_host or key == b"x-forwarded-host"
            headers.append((key, value))
        else:
            if key == b"content-length":
                length = int(value) if value.isdigit() else None
            headers.append((key, value))
    if named - skip:
        headers = [(k, v) for k, v in headers if k not in named]
        length = length if b"content-length" not in named else None
    if client_ip:
        ip = client_ip.encode()
        headers.append((b"x-forwarded-for", forwarded_for + b", " + ip if forwarded_for else ip))
    elif forwarded_for:
        headers.append((b"x-forwarded-for", forwarded_for))
    if not has_proto:
        headers.append((b"x-forwarded-proto", scheme.encode()))
    if not has_host and original_host:
        headers.append((b"x-forwarded-host", original_host))
    target = path + b"?" + query if query else path
    return Outgoing(method, target, b"".join([key + b": " + value + b"\r\n" for key, value in headers]), length)


class Forwarder:
    """The connection pool; `open` sends one attempt and waits for its head, `relay` streams the answer."""

    def __init__(self) -> None:
        self.pool = Pool(CONNECT_TIMEOUT_S)

    async def aclose(self) -> None:
        self.pool.close()

    async def open(self, base_url: str, request: Outgoing, body: Body, read_timeout: float) -> Exchange:
        """Send the request; a reused connection that the replica closed before answering is retried once
        on a fresh one (the replica never saw the request) when the body can be sent again."""
        head = request.head(base_url, body)
        conn = self.pool.reused(base_url)
        if conn is not None:
            exchange = Exchange(conn, self.pool, request.method == "HEAD", read_timeout)
            try:
                return await self._send(exchange, request, head, body)
            except UpstreamError:
                if exchange.received or not body.replayable:
                    raise
        exchange = Exchange(await self.pool.connect(base_url), self.pool, request.method == "HEAD", read_timeout)
        return await self._send(exchange, request, head, body)

    @staticmethod
    async def _send(exchange: Exchange, request: Outgoing, head: bytes, body: Body) -> Exchange:
        try:
            await exchange.send(head, body.content(), request.length is None)
            await exchange.start()
        except BaseException:
            exchange.close()
            raise
        return exchange

    @staticmethod
    async def relay(response: Exchange, send: Send, receive: Receive) -> None:
        """Stream the answer as it comes. Once this starts, a failure can only abort the connection.

        An answer of unknown length (an event stream) may run for minutes: a watcher ends it when
        the client goes away, so the backend stops generating for nobody.
        """
        watcher = None
        if response.content_length is None and not response.complete:
            watcher = asyncio.create_task(_close_on_disconnect(receive, response))
        try:
            await send({"type": "http.response.start", "status": response.status,
                        "headers": answer_headers(response.headers)})
            if response.content_length is not None and response.content_length <= SMALL_ANSWER:
                # One write for a small answer of known length: half the ASGI sends on the hot path.
                await send({"type": "http.response.body", "body": await response.read(), "more_body": False})
                return
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
            response.release()


async def _close_on_disconnect(receive: Receive, response: Exchange) -> None:
    while (await receive())["type"] != "http.disconnect":
        continue
    response.close()
