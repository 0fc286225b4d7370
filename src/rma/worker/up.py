"""`rma up`: a whole pool on one machine — a coordinator and one auto-detected worker.

The coordinator runs as a supervised child (restarted if it dies); the worker runs in this
process. The data folder is persistent by construction (a second `rma up` reuses it), so the
worker declares it so: a machine without GPU or public address becomes a storage worker.
Ctrl-C stops the worker's services, unregisters, then stops the coordinator.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import typer

from rma.catalog import BY_NAME, Kind
from rma.protocol import Assignment
from rma.services.coordinator import Coordinator
from rma.worker.agent import Agent
from rma.worker.client import CoordinatorClient
from rma.worker.commands import LOG_FORMAT
from rma.worker.config import WorkerConfig, service_env
from rma.worker.probe import Probe
from rma.worker.profile import build_profile
from rma.worker.supervisor import Placement, State, Supervisor

COORDINATOR_START_TIMEOUT_S = 60.0


def up(
    data_dir: Path = typer.Option(Path(".rma"), envvar="DATA_DIR", help="Folder for all data; reused."),
    host: str = typer.Option("127.0.0.1", envvar="ADVERTISE_HOST", help="Address the coordinator and services use."),
    port: int = typer.Option(8080, envvar="COORDINATOR_PORT", help="Coordinator port (a free one if taken)."),
    heartbeat_interval: float = typer.Option(5.0, envvar="HEARTBEAT_INTERVAL", min=0.1, help="Seconds between beats."),
    worker_type: str = typer.Option("auto", envvar="WORKER_TYPE", help="auto, gpu, cpu, storage or edge."),
) -> None:
    """Start a coordinator and one auto-detected worker here; Ctrl-C stops both."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    try:
        raise SystemExit(asyncio.run(run_up(data_dir.resolve(), host, port, heartbeat_interval, worker_type.lower())))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


async def run_up(data_dir: Path, host: str, port: int, heartbeat_interval: float, worker_type: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    env = service_env(os.environ, None)
    log_path = data_dir / "logs" / "coordinator.log"
    coordinator = Supervisor(Coordinator(), Placement(host, port, data_dir / "coordinator", log_path,
                                                      heartbeat_interval=heartbeat_interval, env=env))
    async with asyncio.TaskGroup() as group:
        group.create_task(coordinator.run())
        try:
            if not await _until_healthy(coordinator, stop):
                typer.echo(f"coordinator did not start: {coordinator.status.message} "
                           f"(see {log_path})", err=True)
                return 1
            url = f"http://{host}:{coordinator.status.port}"
            typer.echo(f"Coordinator: {url}  (data in {data_dir})")
            typer.echo(f"Dashboard:   {url}/")
            typer.echo(f"Services:    {url}/service/<name>/<path>  (the pool: rma status --coordinator {url})")
            worker_config = WorkerConfig((url,), worker_type, None, None, data_dir, host, None, True, env)
            profile, lines = build_profile(worker_config, Probe.system())
            for line in lines:
                typer.echo(line)
            agent = Agent(worker_config, profile, CoordinatorClient((url,)), on_assignment=_print_assignment)
            group.create_task(_announce(agent, stop))
            try:
                await agent.run(stop)
            finally:
                await agent.client.aclose()
            typer.echo("Worker stopped; stopping the coordinator")
        finally:
            stop.set()
            coordinator.stop()
    return 0


async def _until_healthy(sup: Supervisor, stop: asyncio.Event) -> bool:
    deadline = asyncio.get_running_loop().time() + COORDINATOR_START_TIMEOUT_S
    while sup.status.state != State.HEALTHY:
        if stop.is_set() or sup.status.state == State.FAILED or asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _print_assignment(answer: Assignment) -> None:
    names = ", ".join(answer.assigned_services) or "nothing (see `rma status` for the gaps)"
    typer.echo(f"Assigned to {answer.worker_id}: {names}")


async def _announce(agent: Agent, stop: asyncio.Event) -> None:
    """Print each service's address once it first turns healthy; edge services as URLs."""
    shown: set[tuple[str, int | None]] = set()
    while not stop.is_set():
        for name, status in agent.statuses().items():
            if status.state != State.HEALTHY.value or (name, status.port) in shown:
                continue
            shown.add((name, status.port))
            address = f"{agent.config.host}:{status.port}"
            url = f"http://{address}" if BY_NAME[name].kind == Kind.EDGE else address
            label = "Edge proxy" if name == "edge-proxy" else name
            typer.echo(f"{label}: healthy at {url}")
        await asyncio.sleep(0.5)
