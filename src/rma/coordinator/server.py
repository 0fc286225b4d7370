"""Run the coordinator app under uvicorn."""

from __future__ import annotations

import gc
import logging

import uvicorn

from rma.coordinator.app import create_app
from rma.coordinator.state import CoordinatorSettings


def serve(settings: CoordinatorSettings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    # The registry holds a few objects per worker for the process's life; the default
    # thresholds rescan them every few hundred requests. Collect young objects less often.
    gc.set_threshold(50_000, 20, 100)
    logging.getLogger("rma.coordinator").info(
        "coordinator on http://%s:%d (data in %s, heartbeat every %ss)",
        settings.host, settings.port, settings.data_dir, settings.heartbeat_interval,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning",
                loop="uvloop", http="httptools", proxy_headers=False, server_header=False,
                timeout_graceful_shutdown=5)
