"""edge-proxy: this package's `rma edge-proxy`, the public gateway, on the assigned port.

The gateway's settings reach it from the worker's environment, as `passes` names them; no other
service process gets them (the load balancer takes only the admin token and the refresh interval).
"""

from __future__ import annotations

import sys

from rma.front.settings import FRONT_DOOR_VARIABLES
from rma.services.base import Context, Launch, ServiceDriver

# What `rma edge-proxy` and `rma load-balancer` read from the environment besides their flags.
ROUTER_VARIABLES = ("RMA_ADMIN_TOKEN", "ROUTING_REFRESH_INTERVAL", *FRONT_DOOR_VARIABLES)
GATEWAY_VARIABLES = ("RMA_API_KEYS", "RMA_CORS_ORIGINS", "RMA_MAX_BODY_MB", "RMA_RATE_LIMIT", "RMA_RATE_BURST")


def router_argv(command: str, ctx: Context) -> tuple[str, ...]:
    """The command line both routers share: bind, port, and the coordinators to read the table from."""
    argv: tuple[str, ...] = (sys.executable, "-m", "rma", command, "--host", ctx.host, "--port", str(ctx.port))
    if ctx.coordinator_urls:
        argv += ("--coordinator-url", ",".join(ctx.coordinator_urls))
    return argv


class EdgeProxy(ServiceDriver):
    name = "edge-proxy"
    engine = "rma-edge-proxy"
    passes = (*ROUTER_VARIABLES, *GATEWAY_VARIABLES, "RMA_EDGE_SERVICES")

    def launch(self, ctx: Context) -> Launch:
        return Launch(router_argv("edge-proxy", ctx))
