"""The routers' fast path: a plain request forwarded from socket to socket in event-loop callbacks.

Profiled under wrk, most of a proxied request's cost was the machinery around the forwarding:
a task per request, ASGI messages, futures and timers per wait. The common request (a body-less
request that is safe to repeat, for a service with a replica and an idle pooled connection to it,
that the gateway admits without anything to add) needs none of it: the head goes to the replica
in one write, and the answer is written to the client as llhttp parses it, chunk by chunk, with
back-pressure both ways. Everything else, and any attempt that fails before a byte of the answer
reached the client, goes to the ASGI router, which retries on another replica.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import Message

from rma.routing.gateway import Gateway
from rma.routing.proxy import HOP_BY_HOP, Body, outgoing, retry_safe, timeout_for
from rma.routing.router import RouteError, ServiceRouter, resolve
from rma.routing.server import Request
from rma.routing.upstream import Connection, Exchange, UpstreamError

log = logging.getLogger("rma.routing")


async def _no_receive() -> Message:
    raise RuntimeError("a fast-path request has no body to read")


NO_BODY = Body(_no_receive, b"")


class FastPath:
    """Called by the server with each parsed request; True when it took the request."""

    def __init__(self, router: ServiceRouter, gateway: Gateway | None = None) -> None:
        self.router = router
        self.gateway = gateway
        self.loop: asyncio.AbstractEventLoop | None = None  # looked up once: each lookup is a getpid() on 3.11

    def __call__(self, request: Request) -> bool:
        scope = request.scope
        if not scope["raw_path"].startswith(b"/service/") or request.expect_continue:
            return False
        if any(k == b"content-length" and v != b"0" or k == b"transfer-encoding" for k, v in scope["headers"]):
            return False
        router = self.router
        try:
            name, rest = router.split(scope)
            service = resolve(name, router.aliases)
        except RouteError:
            return False
        endpoints = router.source.current().endpoints(service)
        if not endpoints or not retry_safe(service, scope["method"]):
            return False
        now = router.clock()
        endpoint = router.balancer.choose(endpoints, (), now)
        conn = router.forwarder.pool.reused(endpoint.url) if endpoint is not None else None
        if conn is None or endpoint is None:
            return False  # the ASGI path connects, and leaves the connection in the pool for next time
        if self.gateway is not None and not self.gateway.admits(scope):
            router.forwarder.pool.put(conn)
            return False
        router.budget.request(now)
        router.balancer.begin(endpoint.url)
        head = outgoing(scope, rest, router.strip_headers).head(endpoint.url, NO_BODY)
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        Relay(conn, router, request, endpoint.url, timeout_for(service), self.loop).send_head(head)
        return True


class Relay(Exchange):
    """One forwarded exchange whose answer goes straight to the client as the parser yields it."""

    def __init__(self, conn: Connection, router: ServiceRouter, request: Request, url: str, timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(conn, router.forwarder.pool, request.head_only, timeout)
        self.router = router
        self.request = request
        self.url = url
        self.loop = loop
        self.active_at = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False

    def send_head(self, head: bytes) -> None:
        self.request.cancel = self.close
        assert self.conn.transport is not None
        self.conn.transport.write(head)
        self.timer = self.loop.call_later(self.read_timeout, self._check_timeout)

    def feed(self, data: bytes) -> None:
        self.active_at = self.loop.time()
        super().feed(data)

    def _check_timeout(self) -> None:
        idle = self.loop.time() - self.active_at
        if idle < self.read_timeout:
            self.timer = self.loop.call_later(self.read_timeout - idle, self._check_timeout)
            return
        self.timer = None
        self._fail(UpstreamError(f"the replica sent nothing for {self.read_timeout:g}s"))
        self.conn.abort()

    # llhttp callbacks: the answer goes out as it comes
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if not self.headers_done:
            return  # an interim 1xx answer
        self.router.balancer.answered(self.url, self.status, self.router.clock())
        self.request.start_response(self.status, [(k, v) for k, v in self.headers if k not in HOP_BY_HOP])
        if self.complete:
            self._end()

    def on_body(self, body: bytes) -> None:
        if self.ended:
            return
        self.request.write_body(body, True)
        client = self.request.conn
        if client.writable is not None and self.conn.transport is not None and client.on_writable is None:
            self.conn.transport.pause_reading()  # the client reads slower than the replica writes
            client.on_writable = self._resume

    def _resume(self) -> None:
        if not self.ended and self.conn.transport is not None:
            self.conn.transport.resume_reading()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.complete:
            self._end()

    def lost(self, exc: Exception | None) -> None:
        super().lost(exc)
        if self.complete:
            self._end()

    def _fail(self, error: UpstreamError) -> None:
        super()._fail(error)
        if self.ended:
            return
        self._close_out()
        request, now = self.request, self.router.clock()
        if request.conn.lost:
            return  # the client left (and cancelled this): nobody to answer, no fault of the replica
        if request.started:
            # Bytes went out already: all that is left is to cut the client's connection.
            self.router.balancer.unreachable(self.url, now, f"failed mid-answer: {error}")
            log.warning("%s failed mid-answer (%s); closing the client connection", self.url, error)
            request.finished, request.keep_alive = True, False
            request.conn.done(request)
        else:
            self.router.balancer.unreachable(self.url, now, f"connection lost: {error}")
            request.conn.run_app(request)  # the router retries, on another replica if there is one

    def _end(self) -> None:
        if not self.ended:
            self._close_out()
            self.request.write_body(b"", False)

    def _close_out(self) -> None:
        """Once per exchange: stop the timer, count the request done, return or drop the connection."""
        self.ended = True
        self.request.cancel = None
        if self.timer is not None:
            self.timer.cancel()
        self.router.balancer.end(self.url)
        self.release()
