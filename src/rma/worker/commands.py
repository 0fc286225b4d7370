"""`rma worker` and `rma up`: every flag is also the environment variable it names."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import typer

from rma.worker.agent import Agent
from rma.worker.client import CoordinatorClient
from rma.worker.config import WorkerConfig, parse_urls, service_env
from rma.worker.probe import Probe
from rma.worker.profile import build_profile

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def worker(
    worker_type: str = typer.Option("auto", envvar="WORKER_TYPE", help="auto, gpu, cpu, storage or edge."),
    coordinator_url: str = typer.Option("http://127.0.0.1:8080", envvar="COORDINATOR_URL",
                                        help="Coordinator URL; several, comma-separated, to fail over."),
    worker_id: str | None = typer.Option(None, envvar="WORKER_ID", show_default=False,
                                         help="This worker's id (generated and kept in the data dir when unset)."),
    join_token: str | None = typer.Option(None, envvar="RMA_JOIN_TOKEN", show_default=False,
                                          help="Token the coordinator asks of joining workers."),
    data_dir: Path = typer.Option(Path(".rma"), envvar="DATA_DIR", help="Identity, service data and logs."),
    advertise_host: str | None = typer.Option(None, envvar="ADVERTISE_HOST", show_default=False,
                                              help="Address others reach this worker's services at."),
    public_url: str | None = typer.Option(None, envvar="PUBLIC_URL", show_default=False,
                                          help="This machine's public URL (makes it an edge candidate)."),
    persistent_data: bool = typer.Option(False, envvar="RMA_PERSISTENT_DATA",
                                         help="The data dir is a persistent volume (makes it a storage candidate)."),
) -> None:
    """Run the universal worker: detect, register, run what the coordinator assigns, heal."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat is noise
    try:
        config = WorkerConfig(parse_urls(coordinator_url), worker_type.lower(), worker_id, join_token or None,
                              data_dir, advertise_host, public_url, persistent_data,
                              service_env(os.environ, join_token))
        profile, lines = build_profile(config, Probe.system())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for line in lines:
        typer.echo(line)
    asyncio.run(run_worker(Agent(config, profile, CoordinatorClient(config.coordinator_urls, config.join_token))))


async def run_worker(agent: Agent) -> None:
    """Run `agent` until SIGTERM or SIGINT, then stop its services and unregister."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    finally:
        await agent.client.aclose()


def register(app: typer.Typer) -> None:
    """Add `worker` and `up` to the `rma` command line."""
    from rma.worker.up import up

    app.command("worker")(worker)
    app.command("up")(up)
