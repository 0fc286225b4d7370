"""edge-proxy: this package's `rma edge-proxy`, the public gateway, on the assigned port.

Gateway settings (RMA_API_KEYS, RMA_CORS_ORIGINS, RMA_MAX_BODY_MB, RMA_RATE_LIMIT, ...) reach it
through the worker's own environment, which every service process inherits.
"""

from __future__ import annotations

import sys

from rma.services.base import Context, Launch, ServiceDriver


def router_argv(command: str, ctx: Context) -> tuple[str, ...]:
    """The command line both routers share: bind, port, and the coordinators to read the table from."""
    argv: tuple[str, ...] = (sys.executable, "-m", "rma", command, "--host", ctx.host, "--port", str(ctx.port))
    if ctx.coordinator_urls:
        argv += ("--coordinator-url", ",".join(ctx.coordinator_urls))
    return argv


class EdgeProxy(ServiceDriver):
    name = "edge-proxy"
    engine = "rma-edge-proxy"

    def launch(self, ctx: Context) -> Launch:
        return Launch(router_argv("edge-proxy", ctx))
