"""The routers' fast path: a plain request forwarded from socket to socket in event-loop callbacks.

Profiled under wrk, most of a proxied request's cost was the machinery around the forwarding:
a task per request, ASGI messages, futures, a timer per request, a Python call per header. The
common request (a body-less request that is safe to repeat, for a service with a replica and an
idle pooled connection to it, that the gateway admits without anything to add) needs none of it.
Its head goes to the replica in one write; the answer's bytes go to the client as they arrive,
with llhttp only finding where the answer ends and the hop-by-hop header lines cut from its head.
An answer that needs more (an interim 1xx, framing by the end of the connection, a client that
asked to close, a `Connection` header naming other headers) is re-framed by `ParsedRelay`.
Everything else, and any attempt that fails before a byte of the answer reached the client, goes
to the ASGI router, which retries on another replica. One timer per router watches every
forward for a silent replica.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import NamedTuple, TypeVar

import httptools
from starlette.types import Message

from rma.routing.balancer import ReplicaHealth
from rma.routing.gateway import Gateway
from rma.routing.heads import plain_head
from rma.routing.proxy import IDEMPOTENT, Body, answer_headers, forwarded, pure, timeout_for
from rma.routing.router import RouteError, ServiceRouter
from rma.routing.server import Request
from rma.routing.traffic import ServiceCounts
from rma.routing.upstream import NO_BODY_STATUSES, Connection, Exchange, UpstreamError, parse

log = logging.getLogger("rma.routing")

PREFIX = b"/service/"
PREFIX_LENGTH = len(PREFIX)
SWEEP_S = 1.0  # how often silent replicas are looked for: read timeouts are minutes, seconds at least
REMEMBERED = 256  # entries per memo (routes, upstream head tails, plain answer heads)
Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


def remember(memo: dict[Key, Value], key: Key, value: Value) -> Value:
    """`memo[key] = value`, in a memo whose keys come from clients or replicas: past REMEMBERED entries
    it starts afresh, so a stream of distinct ones cannot grow it."""
    if len(memo) >= REMEMBERED:
        memo.clear()
    memo[key] = value
    return value


# A remembered upstream head's key: url, method, client address, scheme, the client's headers.
TailKey = tuple[str, str, str | None, str, tuple[tuple[bytes, bytes], ...]]


class FastPath:
    """Called by the server with each parsed request; True when it took the request."""

    def __init__(self, router: ServiceRouter, gateway: Gateway | None = None) -> None:
        self.router = router
        self.gateway = gateway if gateway is not None and gateway.checks_headers else None  # else it admits all
        self.routes: dict[bytes, Route | None] = {}  # the path's name segment → its route (None: not routable)
        self.relays: set[Forwarding] = set()  # forwards in flight, for the sweep
        self.sweeper: asyncio.TimerHandle | None = None
        self.heads: tuple[dict[bytes, bytes | None], dict[bytes, bytes | None]] = ({}, {})  # by `complete`
        self.tails: dict[TailKey, bytes] = {}
        self.source, self.balancer, self.pool = router.source, router.balancer, router.forwarder.pool

    def __call__(self, request: Request) -> bool:
        raw = request.raw_path
        if request.has_body or request.expect_continue or not raw.startswith(PREFIX):
            return False
        name, _, rest = raw[PREFIX_LENGTH:].partition(b"/")
        route = self.routes.get(name, UNSEEN)
        if route is UNSEEN:
            route = self.route(name)
        if route is None or not (route.pure or request.method in IDEMPOTENT):
            return False
        fence = self.router.fence
        if fence is not None and not fence.admits(route.service, request.client):
            return False  # the ASGI router answers the refusal
        endpoints = self.source.current().endpoints(route.service)
        now = self.router.clock()
        endpoint = self.balancer.choose(endpoints, (), now) if endpoints else None
        if endpoint is None:
            return False
        url = endpoint.url
        conn = self.pool.reused(url)
        if conn is None:
            return False  # the ASGI path connects, and leaves the connection in the pool for next time
        if self.gateway is not None and not self.gateway.admits(request.scope):
            self.pool.put(conn)
            return False
        self.router.budget.request()
        query = request.query
        target = b"/" + rest + b"?" + query if query else b"/" + rest
        relay = conn.kept
        if not isinstance(relay, Relay):
            relay = conn.kept = Relay(self, conn)
        relay.serve(request, url, route, self.balancer.begin(url), now)
        assert conn.transport is not None
        conn.transport.write(request.method.encode() + b" " + target + self.tail(request, url))
        return True

    def route(self, name: bytes) -> Route | None:
        """What a path segment routes to, remembered (the catalogue does not change)."""
        try:
            service = self.router.resolve(name.decode("latin-1")) if name else None
        except RouteError:
            service = None  # the ASGI router answers it (404, 400)
        route = None if service is None else Route(service, pure(service), timeout_for(service),
                                                   self.router.traffic.of(service))
        return remember(self.routes, name, route)

    def tail(self, request: Request, url: str) -> bytes:
        """The upstream head after its target (`Outgoing.tail`), remembered: a client repeats its headers."""
        client = request.client
        key = (url, request.method, client[0] if client else None, request.scheme, tuple(request.headers))
        tail = self.tails.get(key)
        if tail is None:
            outgoing = forwarded(request.method, b"", b"", request.headers, key[2], request.scheme,
                                 self.router.skip_headers,
                                 self.router.trust_forwarded)
            tail = remember(self.tails, key, outgoing.tail(url, NO_BODY))
        return tail

    def plain_head(self, head: bytes, complete: bool) -> bytes | None:
        """`plain_head`, remembered: a replica's answers repeat their heads (the Date changes each second)."""
        known = self.heads[complete]
        if head in known:
            return known[head]
        return remember(known, head, plain_head(head, complete))

    def watch(self, relay: Forwarding) -> None:
        self.relays.add(relay)
        if self.sweeper is None:
            self.sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Fail each forward whose replica has sent nothing for its read timeout; one timer for all."""
        self.sweeper = None
        for relay in list(self.relays):
            relay.idle = 0.0 if relay.fed else relay.idle + SWEEP_S
            relay.fed = False
            if relay.idle >= relay.read_timeout:
                relay.timed_out()
        if self.relays:
            self.sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)


class Route(NamedTuple):
    """Where a path's service name leads, and what the fast path needs to know of that service."""

    service: str
    pure: bool  # the catalogue marks it a pure function: retry-safe whatever the method
    read_timeout: float
    counts: ServiceCounts  # the router's traffic counts of the service


UNSEEN = Route("", False, 0.0, ServiceCounts())  # what the routes give a path segment not yet resolved


async def _no_receive() -> Message:
    raise RuntimeError("a fast-path request has no body to read")


NO_BODY = Body(_no_receive, b"")


class Forwarding(ABC):
    """What both relays share: failure handling, flow control towards the client, the sweep's fields."""

    conn: Connection
    complete: bool
    status: int
    request: Request
    url: str
    route: Route
    replica: ReplicaHealth
    read_timeout: float
    started: float  # when the router took the request, on its clock

    def __init__(self, fast: FastPath, conn: Connection) -> None:
        self.fast = fast
        self.router = fast.router
        self.conn = conn
        self.fed = False  # bytes came since the last sweep
        self.idle = 0.0
        self.ended = False

    def serve(self, request: Request, url: str, route: Route, replica: ReplicaHealth, started: float) -> None:
        """Forward `request`'s answer from `url`, whose balancer state is `replica`."""
        self.request = request
        self.url = url
        self.route = route
        self.read_timeout = route.read_timeout
        self.replica = replica
        self.started = started
        self.fed = False
        self.idle = 0.0
        self.ended = False
        self.conn.exchange = self
        request.cancel = self.close
        self.fast.watch(self)

    @abstractmethod
    def feed(self, data: bytes) -> None:
        """Answer bytes from the replica."""

    @abstractmethod
    def lost(self, exc: Exception | None) -> None:
        """The replica's connection closed."""

    @abstractmethod
    def release(self) -> None:
        """Return the replica's connection to the pool after a complete answer, else close it."""

    def close(self) -> None:
        """The client left: drop the replica's connection (it may still be generating)."""
        self.conn.abort()
        self._fail(UpstreamError("closed"))

    def timed_out(self) -> None:
        self._fail(UpstreamError(f"the replica sent nothing for {self.read_timeout:g}s"))
        self.conn.abort()

    def _answered(self) -> None:
        """The answer's head goes to the client: the replica answered, and the request is counted."""
        status, now = self.status, self.router.clock()
        self.replica.answered(status, now)
        self.route.counts.record(status, now - self.started)

    def _throttle(self) -> None:
        """Stop reading the replica while the client reads slower than it writes."""
        client = self.request.conn
        if client.writable is not None and client.on_writable is None and self.conn.transport is not None:
            self.conn.transport.pause_reading()
            client.on_writable = self._resume

    def _resume(self) -> None:
        if not self.ended and self.conn.transport is not None:
            self.conn.transport.resume_reading()

    def _fail(self, error: UpstreamError) -> None:
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
        """Once per exchange: stop watching, count the request done, return or drop the connection."""
        self._stop_watching()
        self.replica.end()
        self.release()

    def _stop_watching(self) -> None:
        self.ended = True
        self.request.cancel = None
        self.fast.relays.discard(self)


class Relay(Forwarding):
    """The answer's bytes go to the client as they come; llhttp (no per-header callbacks) frames them.

    One relay, with its parser, serves its connection's answers one after another: kept on the
    connection (`Connection.kept`) while the parser is in step, between two answers.
    """

    def __init__(self, fast: FastPath, conn: Connection) -> None:
        super().__init__(fast, conn)
        self.parser = httptools.HttpResponseParser(self)
        self.pool = fast.pool
        self.head = b""  # the answer until its head is complete and sent
        self.head_sent = self.interim = self.headers_done = self.complete = self.keep_alive = self.overrun = False
        self.status = 0

    # llhttp callbacks: only these, so llhttp runs in C between them
    def on_message_begin(self) -> None:
        if self.complete:
            self.overrun = True  # bytes past the answer: the connection is out of step

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.interim = True
            return
        self.status = status
        self.headers_done = True
        if self.request.head_only or status in NO_BODY_STATUSES:
            self.complete, self.keep_alive = True, self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        if self.headers_done and not self.complete:
            self.complete, self.keep_alive = True, self.parser.should_keep_alive()

    # the replica's connection
    def feed(self, data: bytes) -> None:
        self.fed = True
        if not parse(self.parser, data, self.complete, self.conn, self._fail):
            return
        if self.overrun:
            self._fail(UpstreamError("the replica sent bytes past its answer"))
            return
        if self.head_sent:
            out = data
        else:
            self.head += data
            if not (self.headers_done or self.interim):
                return
            taken = self._plain_head()
            if taken is None:
                return
            out = taken
        client = self.request.conn
        client.write(out)
        if client.writable is not None:
            self._throttle()
        if self.complete:
            self._end()

    def lost(self, exc: Exception | None) -> None:
        if not self.complete:
            self._fail(UpstreamError(f"the replica closed the connection ({exc or 'EOF'})"))

    def _plain_head(self) -> bytes | None:
        """The head, less its hop-by-hop lines, and what followed it; None when ParsedRelay took over."""
        head = self.head
        end = head.find(b"\r\n\r\n")
        request = self.request
        plain = None
        if not self.interim and request.keep_alive and request.http_version == "1.1":
            plain = self.fast.plain_head(head[:end], self.complete)
        if plain is None:
            self._stop_watching()
            self._drop_parser()
            ParsedRelay(self.fast, self.conn, request, self.url, self.route, self.replica, self.started).feed(head)
            return None
        self._answered()
        self.head_sent = request.started = True
        self.head = b""
        return plain + (b"\r\n\r\n" if request.head_only else head[end:])  # an answer to HEAD has no body

    def release(self) -> None:
        """As `Exchange.release`: kept for the next answer only after a complete one, not to HEAD, in step."""
        reusable = self.complete and self.keep_alive and not (self.overrun or self.request.head_only)
        if reusable:
            self.head_sent = self.interim = self.headers_done = self.complete = self.keep_alive = False
        else:
            self._drop_parser()
        self.pool.release(self.conn, reusable)

    def _drop_parser(self) -> None:
        """The parser is out of step with the connection: neither serves another answer."""
        if self.conn.kept is self:
            self.conn.kept = None
            del self.parser  # it holds this relay: a cycle that only the garbage collector would free


class ParsedRelay(Forwarding, Exchange):
    """The answer parsed and re-framed for the client: what the plain pass-through cannot carry."""

    def __init__(self, fast: FastPath, conn: Connection, request: Request, url: str, route: Route,
                 replica: ReplicaHealth, started: float) -> None:
        Exchange.__init__(self, conn, fast.router.forwarder.pool, request.head_only, route.read_timeout)
        Forwarding.__init__(self, fast, conn)
        self.serve(request, url, route, replica, started)

    def feed(self, data: bytes) -> None:
        self.fed = True
        Exchange.feed(self, data)

    def release(self) -> None:
        Exchange.release(self)

    # llhttp callbacks: the answer goes out as it comes
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if not self.headers_done:
            return  # an interim answer
        self._answered()
        self.request.start_response(self.status, answer_headers(self.headers))
        if self.complete:
            self._end()

    def on_body(self, body: bytes) -> None:
        if self.ended:
            return
        self.request.write_body(body, True)
        self._throttle()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.complete:
            self._end()

    def lost(self, exc: Exception | None) -> None:
        Exchange.lost(self, exc)
        if self.complete:
            self._end()

    def _fail(self, error: UpstreamError) -> None:
        Exchange._fail(self, error)
        Forwarding._fail(self, error)
