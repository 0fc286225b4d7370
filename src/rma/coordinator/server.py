"""Run the coordinator app on the routers' lean HTTP/1.1 server (uvloop + httptools).

uvicorn's generic per-request ASGI work was about half of a heartbeat's cost; the lean
server (rma.routing.server, shared with the edge proxy) does what the coordinator needs:
keep-alive, streamed bodies and responses (the watch streams), and disconnect events.
The app's lifespan (health timers, the /service router's loops) wraps the serving.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import uvloop

from rma.coordinator.app import create_app
from rma.coordinator.state import CoordinatorSettings
from rma.front import FrontSettings
from rma.routing.server import serve_forever


def serve(settings: CoordinatorSettings, front: FrontSettings | None = None) -> None:
    """Run the coordinator until SIGINT or SIGTERM; behind the front door (HAProxy or Caddy) where `front` says so."""
    front = front or FrontSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    # The registry holds a few objects per worker for the process's life; the default
    # thresholds rescan them every few hundred requests. Collect young objects less often.
    gc.set_threshold(50_000, 20, 100)
    logging.getLogger("rma.coordinator").info(
        "coordinator on %s://%s:%d (data in %s, heartbeat every %ss)",
        front.scheme(), settings.host, settings.port, settings.data_dir, settings.heartbeat_interval,
    )
    logging.getLogger("rma.coordinator").info(
        "workers register as the address they connect from%s",
        f"; vouched networks (may advertise another): {', '.join(map(str, settings.vouched_networks))}"
        if settings.vouched_networks else " (no vouched networks: RMA_VOUCHED_NETWORKS)",
    )

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with app.router.lifespan_context(app):
            await serve_forever(app, settings.host, settings.port, stop, front=front)

    uvloop.run(main())
