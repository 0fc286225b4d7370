"""coordinator: a coordinator replica, this package's own `rma coordinator`, on the assigned port."""

from __future__ import annotations

import sys

from rma.services.base import Context, Launch, ServiceDriver

# Passed through to the replica so it admits the same workers and operators.
INHERITED = ("RMA_JOIN_TOKEN", "RMA_ADMIN_TOKEN", "RMA_DATABASE_URL")


class Coordinator(ServiceDriver):
    name = "coordinator"
    engine = "rma-coordinator"

    def launch(self, ctx: Context) -> Launch:
        argv: tuple[str, ...] = (
            sys.executable, "-m", "rma", "coordinator",
            "--host", ctx.host,
            "--port", str(ctx.port),
            "--data-dir", str(ctx.data_dir),
        )
        if ctx.heartbeat_interval:
            argv += ("--heartbeat-interval", f"{ctx.heartbeat_interval:g}")
        return Launch(argv, env={k: ctx.env[k] for k in INHERITED if k in ctx.env})
