"""load-balancer: this package's `rma load-balancer`, routing internal traffic, on the assigned port."""

from __future__ import annotations

from rma.services.base import Context, Launch, ServiceDriver
from rma.services.edge_proxy import ROUTER_VARIABLES, router_argv


class LoadBalancer(ServiceDriver):
    name = "load-balancer"
    engine = "rma-load-balancer"
    passes = ROUTER_VARIABLES

    def launch(self, ctx: Context) -> Launch:
        """On the mesh it fences callers (rma.routing.fence): there a caller's address proves who calls."""
        return Launch(router_argv("load-balancer", ctx) + (("--fence-callers",) if ctx.on_mesh else ()))
