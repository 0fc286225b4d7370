"""The two front ends as ASGI apps, and the factory the coordinator uses for its own `/service` route.

Both apps are raw ASGI rather than a framework router: the request path is the hot path, and
there are only three routes (`/health`, `/service/...`, and a JSON 404 for the rest).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import uvloop
from starlette.types import ASGIApp, Receive, Scope, Send

from rma import catalog
from rma.front import FrontSettings
from rma.routing.fastpath import FastPath
from rma.routing.fence import CallerFence
from rma.routing.gateway import API_KEY_HEADER, Gateway, GatewaySettings
from rma.routing.report import TrafficReporter
from rma.routing.router import ServiceRouter, answer
from rma.routing.server import serve_forever
from rma.routing.table import REFRESH_S, CallableSource, HttpTableSource, TableSource


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8090
    coordinator_urls: tuple[str, ...] = ("http://127.0.0.1:8080",)
    admin_token: str | None = None  # reads the gap report (why a service has no replica), posts traffic reports
    refresh_s: float = REFRESH_S
    fence_callers: bool = False  # the load balancer on the mesh: only a service's callers call it (routing.fence)


class RoutingApp:
    """`GET /health`, `/service/...` through `front`, JSON 404 elsewhere; `serve` runs the router's loops."""

    def __init__(self, name: str, router: ServiceRouter, front: ASGIApp, show_replicas: bool = False) -> None:
        self.name = name
        self.router = router
        self.front = front
        self.show_replicas = show_replicas  # `GET /routing`: internal addresses, so not on the public gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if path.startswith("/service/"):
            await self.front(scope, receive, send)
        elif scope["type"] == "http" and path == "/health":
            await self.health(send)
        elif scope["type"] == "http" and path == "/routing" and self.show_replicas:
            await answer(send, 200, {"services": self.router.view()})
        elif scope["type"] == "http":
            await answer(send, 404, {"error": f"no route {path!r}: use /service/{{name}}/{{path}} or /health"})
        else:
            await send({"type": "websocket.close", "code": 1003})

    async def health(self, send: Send) -> None:
        """200 once a routing table is loaded (stale or not: the data plane outlives the control plane)."""
        table = self.router.source.current()
        body: dict[str, Any] = {
            "status": "healthy" if table.loaded else "starting", "service": self.name,
            "services_routable": sum(1 for endpoints in table.services.values() if endpoints),
        }
        if table.problem:
            body["problem"] = table.problem
        await answer(send, 200 if table.loaded else 503, body)


def _source(settings: RouterSettings) -> HttpTableSource:
    return HttpTableSource(settings.coordinator_urls, settings.admin_token, settings.refresh_s)


def _reporter(settings: RouterSettings) -> TrafficReporter:
    return TrafficReporter(settings.coordinator_urls, settings.admin_token)


def create_load_balancer(settings: RouterSettings) -> RoutingApp:
    """Internal traffic: the routing engine alone (plus `GET /routing`, the replicas as it sees them).

    It routes every service, and keeps the X-Forwarded-* its callers (the pool's own services) send; with
    `settings.fence_callers`, only to the callers the catalogue names.
    """
    source = _source(settings)
    router = ServiceRouter(source, aliases=catalog.ALIASES, reporter=_reporter(settings),
                           fence=CallerFence(source) if settings.fence_callers else None)
    return RoutingApp("load-balancer", router, router, show_replicas=True)


def create_edge_proxy(settings: RouterSettings, gateway: GatewaySettings,
                      services: frozenset[str] = catalog.PUBLIC) -> RoutingApp:
    """The public gateway: keys, CORS, body cap and rate limit in front of the same engine, for `services` only
    (any other name is unknown here), with X-Forwarded-* set by the edge alone.

    The client's API key is for this gateway only and is not passed on to the services.
    """
    router = ServiceRouter(_source(settings), aliases=catalog.ALIASES, strip_headers=frozenset({API_KEY_HEADER}),
                           reporter=_reporter(settings), exposed=services, trust_forwarded=False)
    return RoutingApp("edge-proxy", router, Gateway(router, gateway))


def coordinator_service(table: Callable[[], Any], gateway: GatewaySettings,
                        reasons: Callable[[], Mapping[str, str]] | None = None,
                        version: Callable[[], int] | None = None) -> tuple[ServiceRouter, ASGIApp]:
    """The engine over an in-process table (the coordinator's registry), and the app for its `Mount("/service",
    ...)`: the engine behind the edge proxy's gateway, since this too is a public way to the services.

    `table()` returns `{service: [replica dicts]}` as `Registry.routing_table()` does; the app
    that mounts it runs `router.running()` in its lifespan (active checks, pooled client), and
    reads `router.traffic` itself. It routes every service the load balancer does. `version()` (the
    registry's generation) changes whenever a replica joins or leaves: the table is rebuilt at once then.
    """
    source: TableSource = CallableSource(table, reasons, version=version)
    router = ServiceRouter(source, prefix="", aliases=catalog.ALIASES, strip_headers=frozenset({API_KEY_HEADER}),
                           trust_forwarded=False)
    return router, Gateway(router, gateway)


def serve(app: RoutingApp, host: str, port: int, front: FrontSettings | None = None) -> None:
    """Run `app` on the lean server (uvloop) with the router's loops, until SIGINT or SIGTERM;
    behind the front door (HAProxy or Caddy) where `front` says the listener needs it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    front = front or FrontSettings()
    logging.getLogger("rma.routing").info("%s on %s://%s:%d", app.name, front.scheme(), host, port)

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        gateway = app.front if isinstance(app.front, Gateway) else None
        async with app.router.running():
            await serve_forever(app, host, port, stop, FastPath(app.router, gateway), front)

    uvloop.run(main())
