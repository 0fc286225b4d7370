"""`/service/{name}/{path}` as an ASGI app: resolve the service, choose a replica, forward, retry.

One engine for the edge proxy, the load balancer and the coordinator's own `/service` route;
each hands it a `TableSource`. Retries go to another replica, only while no byte of the answer
has reached the client, only for requests safe to repeat, and only within the retry budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx
from starlette.types import Receive, Scope, Send

from rma import catalog
from rma.front import client_context
from rma.routing.balancer import Balancer, RetryBudget
from rma.routing.fence import CallerFence
from rma.routing.proxy import (
    HOP_BY_HOP,
    Body,
    BodyTooLarge,
    Forwarder,
    Outgoing,
    UpstreamBodyLost,
    outgoing,
    retry_safe,
    timeout_for,
)
from rma.routing.report import TrafficReporter
from rma.routing.table import Endpoint, Table, TableSource
from rma.routing.traffic import ServiceCounts, Traffic
from rma.routing.upstream import UpstreamError

log = logging.getLogger("rma.routing")

RETRY_STATUSES = frozenset({502, 503, 504})  # the replica (or its own upstream) failed, not the request
ROUTERS = frozenset({"edge-proxy", "load-balancer"})  # routing to a router would only loop
HEALTH_EVERY_S = 2.0
PROBE_TIMEOUT_S = 1.0
CLOSE = (b"connection", b"close")


class RouteError(Exception):
    """A request the router answers itself, with a status and a JSON body."""

    def __init__(self, status: int, error: str, **detail: str) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, **detail}


async def answer(send: Send, status: int, body: Mapping[str, object],
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


@dataclass(frozen=True)
class Failure:
    """An attempt that sent nothing to the client: retry elsewhere, or answer `status` with `error`."""

    status: int
    error: str
    retry: bool


def resolve(name: str, aliases: Mapping[str, str], exposed: frozenset[str] | None = None) -> str:
    """The catalogue name for `name` (or its alias); RouteError for what cannot be routed over HTTP, and
    a 404 as for an unknown name for a service outside `exposed` (None: every service)."""
    service = aliases.get(name, name)
    known = catalog.BY_NAME.get(service)
    if known is None or (exposed is not None and service not in exposed):
        choices = ", ".join(n for n in [*catalog.BY_NAME, *aliases] if exposed is None or aliases.get(n, n) in exposed)
        raise RouteError(404, f"unknown service {name!r}", services=choices)
    if service in ROUTERS:
        raise RouteError(400, f"{service} is a router itself; call the service you want through it")
    if known.health.protocol != "http":
        raise RouteError(400, f"{service} speaks its own protocol, not HTTP: find its address at "
                              f"/api/services/discover/{service} on the coordinator")
    return service


def edge_services(names: Sequence[str]) -> frozenset[str]:
    """What an edge proxy routes: `names` (catalogue names or aliases), or every public service when there
    are none. ValueError for a name the catalogue does not mark public: the stores and the pool's own parts
    stay off the public way in (the coordinator, for one, trusts loopback callers, as an edge proxy on its
    machine is)."""
    services = frozenset(catalog.ALIASES.get(name, name) for name in names) or catalog.PUBLIC
    if services - catalog.PUBLIC:
        raise ValueError(f"not public services: {', '.join(sorted(services - catalog.PUBLIC))} "
                         f"(the edge may route {', '.join(sorted(catalog.PUBLIC))})")
    return services


def probe_targets(table: Table, exposed: frozenset[str] | None = None) -> list[tuple[str, str]]:
    """(replica URL, health path) for each HTTP replica in the table (of the `exposed` services, if given):
    what the active checks visit."""
    targets = {}
    for name, endpoints in table.services.items():
        service = catalog.BY_NAME.get(name)
        if service is None or service.health.protocol != "http" or name in ROUTERS or \
                (exposed is not None and name not in exposed):
            continue
        for endpoint in endpoints:
            targets[endpoint.url] = endpoint.health_path or service.health.path
    return sorted(targets.items())


class ServiceRouter:
    """ASGI app for paths `{prefix}/{name}/{rest}`: mount with prefix "" below a `/service` Mount.

    `exposed` limits what it routes (None: every service); `trust_forwarded` keeps the client's
    X-Forwarded-* and appends to them, for internal traffic only: a public front end sets its own.
    """

    def __init__(self, source: TableSource, prefix: str = "/service", aliases: Mapping[str, str] | None = None,
                 strip_headers: frozenset[bytes] = frozenset(), rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, health_every_s: float = HEALTH_EVERY_S,
                 reporter: TrafficReporter | None = None, exposed: frozenset[str] | None = None,
                 trust_forwarded: bool = True, fence: CallerFence | None = None) -> None:
        self.source = source
        self.fence = fence
        self.prefix = prefix.rstrip("/")
        self.aliases = dict(aliases or {})
        self.exposed = exposed
        self.trust_forwarded = trust_forwarded
        self.skip_headers = HOP_BY_HOP | strip_headers  # never forwarded: hop-by-hop, and the gateway's own
        self.rng = rng or random.Random()
        self.balancer = Balancer(self.rng)
        self.budget = RetryBudget()
        self.forwarder = Forwarder()
        self.clock = clock
        self.health_every_s = health_every_s
        self.traffic = Traffic(clock())
        self.reporter = reporter  # None: the app that holds the router reads `traffic` itself
        self._skip = self.prefix.count("/") + 1  # path segments before the service's own path

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Background loops (table refresh if the source has one, active checks, traffic reports if a
        reporter was given) for the app's lifetime."""
        control = httpx.AsyncClient(trust_env=False, timeout=PROBE_TIMEOUT_S, verify=client_context())
        tasks = [asyncio.create_task(self.check_health(control))]
        if self.reporter is not None:
            tasks.append(asyncio.create_task(self.reporter.run(control, self.traffic, self.clock)))
        refresh = getattr(self.source, "refresh", None)
        run = getattr(self.source, "run", None)
        if refresh is not None and run is not None:
            await refresh(control)  # serve from a loaded table from the first request when we can
            tasks.append(asyncio.create_task(run(control)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await control.aclose()
            await self.forwarder.aclose()

    async def check_health(self, client: httpx.AsyncClient) -> None:
        """Snapshot the table → probe each replica → apply verdicts → sleep with jitter."""
        while True:
            table = self.source.current()
            targets = probe_targets(table, self.exposed)
            verdicts = await asyncio.gather(*(self._probe(client, url, path) for url, path in targets))
            now = self.clock()
            for (url, _), (ok, reason) in zip(targets, verdicts, strict=True):
                self.balancer.probed(url, ok, now, reason)
            self.balancer.forget_except(e.url for endpoints in table.services.values() for e in endpoints)
            await asyncio.sleep(self.health_every_s * self.rng.uniform(0.8, 1.2))

    @staticmethod
    async def _probe(client: httpx.AsyncClient, url: str, path: str) -> tuple[bool, str]:
        try:
            response = await client.get(url + path)
        except httpx.HTTPError as error:
            return False, f"health check: {type(error).__name__}"
        return response.is_success, f"health check answered {response.status_code}"

    def view(self) -> dict[str, list[dict[str, object]]]:
        """Each service's replicas as this router sees them: the operator's answer to "why not X?"."""
        now = self.clock()
        view: dict[str, list[dict[str, object]]] = {}
        for name, endpoints in self.source.current().services.items():
            rows: list[dict[str, object]] = []
            for endpoint in endpoints:
                state = self.balancer.health(endpoint.url)
                rows.append({"worker_id": endpoint.worker_id, "url": endpoint.url, "admitted": state.admitted(now),
                             "outstanding": state.outstanding, "sent": state.sent, "reason": state.reason})
            view[name] = rows
        return view

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        counts: ServiceCounts | None = None
        started = self.clock()
        try:
            name, rest = self.split(scope)
            service = self.resolve(name)
            if self.fence is not None and not self.fence.admits(service, scope.get("client")):
                raise RouteError(403, f"this caller may not call {service} here", service=service,
                                 reason=self.fence.refusal(service))
            counts = self.traffic.of(service)
            table = self.source.current()
            endpoints = table.endpoints(service)
            if not endpoints:
                reason = table.reasons.get(service) or table.problem or "no worker reports it healthy"
                raise RouteError(503, f"no healthy replica of {service}", service=service, reason=reason)
            await self.forward(scope, receive, send, service, endpoints, rest, counts, started)
        except RouteError as error:
            # A refused body may still be arriving: the connection closes after the answer.
            headers = [(b"retry-after", b"5")] if error.status == 503 else [CLOSE] if error.status == 413 else []
            if counts is not None:
                counts.record(error.status, self.clock() - started)
            await answer(send, error.status, error.body, headers)

    def resolve(self, name: str) -> str:
        """The catalogue name `name` routes to here (`resolve` with this router's aliases and exposure)."""
        return resolve(name, self.aliases, self.exposed)

    def split(self, scope: Scope) -> tuple[str, str]:
        """The service name and the raw (still percent-encoded) path below it."""
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1")
        root = scope.get("root_path", "")
        skip = self._skip + root.rstrip("/").count("/")
        parts = path.split("/", skip + 1)
        if len(parts) <= skip or not parts[skip]:
            raise RouteError(404, "use /service/{name}/{path}")
        return parts[skip], "/" + parts[skip + 1] if len(parts) > skip + 1 else "/"

    async def forward(self, scope: Scope, receive: Receive, send: Send, service: str,
                      endpoints: Sequence[Endpoint], rest: str, counts: ServiceCounts, started: float) -> None:
        """Try replicas in turn; the answer that reaches the client is counted in `counts`, timed from `started`."""
        safe = retry_safe(service, scope["method"])
        try:
            body = await Body.read(scope, receive, keep=safe)
        except BodyTooLarge as error:
            raise RouteError(413, str(error)) from None
        except UpstreamBodyLost:
            return
        request = outgoing(scope, rest, self.skip_headers, self.trust_forwarded)
        timeout = timeout_for(service)
        self.budget.request()
        tried: list[str] = []
        relaying = lambda status, now: counts.record(status, now - started)
        while True:
            endpoint = self.balancer.choose(endpoints, tried, self.clock())
            if endpoint is None:
                raise RouteError(502, f"no replica of {service} left to try", service=service)
            tried.append(endpoint.url)
            more = len(tried) < len(endpoints)
            self.balancer.begin(endpoint.url)
            try:
                failure = await self._attempt(endpoint, request, body, timeout, send, receive, safe and more,
                                              relaying)
            finally:
                self.balancer.end(endpoint.url)
            if failure is None:
                return
            if not (failure.retry and more and self.budget.try_retry(self.clock())):
                raise RouteError(failure.status, failure.error, service=service, replica=endpoint.worker_id)
            log.info("retrying %s %s on another replica: %s", scope["method"], service, failure.error)

    async def _attempt(self, endpoint: Endpoint, request: Outgoing, body: Body, timeout: float, send: Send,
                       receive: Receive, may_retry: bool, relaying: Callable[[int, float], None]) -> Failure | None:
        """One replica's try; `relaying(status, now)` is told when its answer goes to the client."""
        url = endpoint.url
        try:
            response = await self.forwarder.open(url, request, body, timeout)
        except (UpstreamError, TimeoutError, BodyTooLarge, UpstreamBodyLost) as error:
            return self._failed(endpoint, body, error, may_retry)
        status, now = response.status, self.clock()
        self.balancer.answered(url, status, now)
        if status in RETRY_STATUSES and may_retry and body.replayable and self.budget.allows(now):
            response.close()
            return Failure(status, f"replica {endpoint.worker_id} answered {status}", True)
        relaying(status, now)
        try:
            await self.forwarder.relay(response, send, receive)
        except (UpstreamError, TimeoutError) as error:
            # Bytes went out already: all that is left is to cut the client's connection.
            self.balancer.unreachable(url, self.clock(), f"failed mid-answer: {type(error).__name__}")
            log.warning("%s failed mid-answer (%s); closing the client connection", endpoint.worker_id, error)
        return None

    def _failed(self, endpoint: Endpoint, body: Body, error: Exception, may_retry: bool) -> Failure | None:
        """Classify an attempt that failed before any answer byte: the client's fault, or the replica's."""
        cause = body.error or error
        if isinstance(cause, BodyTooLarge):
            raise RouteError(413, str(cause))
        if isinstance(cause, UpstreamBodyLost):
            return None  # the client is gone: nobody to answer
        name, url, now = type(error).__name__, endpoint.url, self.clock()
        if isinstance(error, UpstreamError) and error.connect:
            self.balancer.unreachable(url, now, f"connect failed: {name}")
            return Failure(502, f"replica {endpoint.worker_id} unreachable", body.replayable)
        if isinstance(error, TimeoutError):
            return Failure(504, f"replica {endpoint.worker_id} timed out ({name})", False)
        self.balancer.unreachable(url, now, f"connection lost: {name}")
        return Failure(502, f"replica {endpoint.worker_id} dropped the connection ({name})",
                       may_retry and body.replayable)
