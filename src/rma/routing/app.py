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

from rma.routing.fastpath import FastPath
from rma.routing.gateway import ALIASES, API_KEY_HEADER, Gateway, GatewaySettings
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


def _router(settings: RouterSettings, aliases: Mapping[str, str], strip: frozenset[bytes]) -> ServiceRouter:
    source = HttpTableSource(settings.coordinator_urls, settings.admin_token, settings.refresh_s)
    reporter = TrafficReporter(settings.coordinator_urls, settings.admin_token)
    return ServiceRouter(source, aliases=aliases, strip_headers=strip, reporter=reporter)


def create_load_balancer(settings: RouterSettings) -> RoutingApp:
    """Internal traffic: the routing engine alone (plus `GET /routing`, the replicas as it sees them)."""
    router = _router(settings, ALIASES, frozenset())
    return RoutingApp("load-balancer", router, router, show_replicas=True)


def create_edge_proxy(settings: RouterSettings, gateway: GatewaySettings) -> RoutingApp:
    """The public gateway: keys, CORS, body cap and rate limit in front of the same engine.

    The client's API key is for this gateway only and is not passed on to the services.
    """
    router = _router(settings, ALIASES, frozenset({API_KEY_HEADER}))
    return RoutingApp("edge-proxy", router, Gateway(router, gateway))


def service_router(table: Callable[[], Any], reasons: Callable[[], Mapping[str, str]] | None = None) -> ServiceRouter:
    """The engine over an in-process table (the coordinator's registry), for a `Mount("/service", ...)`.

    `table()` returns `{service: [replica dicts]}` as `Registry.routing_table()` does; the app
    that mounts it runs `router.running()` in its lifespan (active checks, pooled client), and
    reads `router.traffic` itself.
    """
    source: TableSource = CallableSource(table, reasons)
    return ServiceRouter(source, prefix="", aliases=ALIASES)


def serve(app: RoutingApp, host: str, port: int) -> None:
    """Run `app` on the lean server (uvloop) with the router's loops, until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("rma.routing").info("%s on http://%s:%d", app.name, host, port)

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        gateway = app.front if isinstance(app.front, Gateway) else None
        async with app.router.running():
            await serve_forever(app, host, port, stop, FastPath(app.router, gateway))

    uvloop.run(main())
