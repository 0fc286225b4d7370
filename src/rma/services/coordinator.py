"""coordinator: a coordinator replica, this package's own `rma coordinator`, on the assigned port."""

from __future__ import annotations

import sys

from rma.front.settings import FRONT_DOOR_VARIABLES
from rma.replication import RESTORE_GRACE_VARIABLE, SNAPSHOT_INTERVAL_VARIABLE
from rma.services.base import Context, Launch, ServiceDriver
from rma.services.edge_proxy import GATEWAY_VARIABLES


class Coordinator(ServiceDriver):
    name = "coordinator"
    engine = "rma-coordinator"
    # The worker's settings of `rma coordinator`, so the replica admits the same workers, operators and clients
    # and guards its own /service as the edge proxy does.
    # RMA_STORE_URL comes in its service config: the pool's shared store, where it finds the pool as it is.
    passes = ("RMA_JOIN_TOKEN", "RMA_ADMIN_TOKEN", "RMA_STORE_KEYS", "RMA_VOUCHED_NETWORKS",
              "HEARTBEAT_GRACE_INTERVALS", "RMA_STORE_URL", SNAPSHOT_INTERVAL_VARIABLE, RESTORE_GRACE_VARIABLE,
              *GATEWAY_VARIABLES, *FRONT_DOOR_VARIABLES)

    def launch(self, ctx: Context) -> Launch:
        argv: tuple[str, ...] = (
            sys.executable, "-m", "rma", "coordinator",
            "--host", ctx.host,
            "--port", str(ctx.port),
            "--data-dir", str(ctx.data_dir),
        )
        if ctx.heartbeat_interval:
            argv += ("--heartbeat-interval", f"{ctx.heartbeat_interval:g}")
        return Launch(argv)
