"""`rma up`: a whole pool on one machine — a coordinator and one worker per kind this machine serves.

The coordinator runs as a supervised child (restarted if it dies); the workers (see
`local_pool`) run in this process, each with its own data dir under `DATA_DIR/workers/`, so a
second `rma up` brings back the same workers and their stores' data. One `rma up` at a time
holds a data dir. Ctrl-C stops every worker's services, unregisters them, then stops the
coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import typer

from rma.front import client_context
from rma.front.local_ca import LocalCa, make_local_ca
from rma.front.settings import CA_FILE_VARIABLE
from rma.gap_reasons import short_reason
from rma.protocol import Assignment
from rma.services.coordinator import Coordinator
from rma.worker.agent import Agent
from rma.worker.client import CoordinatorClient
from rma.worker.commands import LOG_FORMAT
from rma.worker.config import service_env
from rma.worker.local_pool import LocalWorker, local_workers
from rma.worker.probe import Probe
from rma.worker.readiness import Progress, WorkerSnapshot, summary
from rma.worker.supervisor import Placement, State, Supervisor

COORDINATOR_START_TIMEOUT_S = 60.0
ANNOUNCE_EVERY_S = 0.5
# A pool that reports nothing left to wait for this many times in a row is ready (assignments settle).
SETTLED_CHECKS = 3


class AlreadyRunning(Exception):
    """Another `rma up` holds this data dir."""


def up(
    data_dir: Path = typer.Option(Path(".rma"), envvar="DATA_DIR", help="Folder for all data; reused."),
    host: str = typer.Option("127.0.0.1", envvar="ADVERTISE_HOST", help="Address the coordinator and services use."),
    port: int = typer.Option(8080, envvar="COORDINATOR_PORT", help="Coordinator port (a free one if taken)."),
    heartbeat_interval: float = typer.Option(5.0, envvar="HEARTBEAT_INTERVAL", min=0.1, help="Seconds between beats."),
    worker_type: str = typer.Option("auto", envvar="WORKER_TYPE",
                                    help="auto: one worker per kind served here; or gpu, cpu, storage, edge."),
    tls: bool = typer.Option(False, "--tls", envvar="RMA_UP_TLS",
                             help="Serve the coordinator, edge proxy and load balancer over HTTPS, with a local CA "
                                  "made in DATA_DIR/tls (clients trust it: RMA_CA_FILE, curl --cacert)."),
) -> None:
    """Start a coordinator and a worker of every kind this machine serves; Ctrl-C stops them all."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    data_dir = data_dir.resolve()
    try:
        with holding(data_dir):
            raise SystemExit(asyncio.run(run_up(data_dir, host, port, heartbeat_interval, worker_type.lower(), tls)))
    except AlreadyRunning as exc:
        typer.echo(str(exc), err=True)
        raise SystemExit(1) from None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@contextlib.contextmanager
def holding(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's lock for as long as this `rma up` runs; the kernel drops it when we die."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "up.pid", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise AlreadyRunning(f"another `rma up` (pid {holder}) is running on {data_dir}: stop it first "
                                 "(Ctrl-C there), or give this one another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


async def run_up(data_dir: Path, host: str, port: int, heartbeat_interval: float, worker_type: str,
                 tls: bool = False) -> int:
    started = time.monotonic()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    env = service_env(os.environ, None)
    if tls:
        env |= _local_tls(data_dir / "tls", host)
    log_path = data_dir / "logs" / "coordinator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    coordinator = Supervisor(Coordinator(), Placement(host, port, data_dir / "coordinator", log_path,
                                                      heartbeat_interval=heartbeat_interval, env=env))
    async with asyncio.TaskGroup() as group:
        group.create_task(coordinator.run())
        try:
            if not await _until_healthy(coordinator, stop):
                typer.echo(f"coordinator did not start: {coordinator.status.message} (see {log_path})", err=True)
                return 1
            url = f"{'https' if tls else 'http'}://{host}:{coordinator.status.port}"
            if coordinator.status.port != port:
                typer.echo(f"Port {port} is taken: the coordinator listens on {coordinator.status.port} instead")
            typer.echo(f"Coordinator: {url}  (data in {data_dir})")
            typer.echo(f"Dashboard:   {url}/")
            typer.echo(f"Status:      rma status --coordinator {url}")
            workers = local_workers(data_dir, url, host, worker_type, env, Probe.system())
            _print_detected(workers)
            agents = [Agent(w.config, w.profile, CoordinatorClient((url,)), on_assignment=_print_assignment)
                      for w in workers]
            group.create_task(_announce(agents, workers, url, host, started, stop))
            try:
                async with asyncio.TaskGroup() as running:
                    for agent in agents:
                        running.create_task(agent.run(stop))
            finally:
                for agent in agents:
                    await agent.client.aclose()
            typer.echo("Workers stopped; stopping the coordinator")
        finally:
            stop.set()
            coordinator.stop()
    return 0


def _local_tls(folder: Path, host: str) -> dict[str, str]:
    """The local CA for `rma up --tls`: made once, kept in `folder`; every process of this pool trusts it
    (RMA_CA_FILE), and the coordinator and the routers serve its certificate."""
    ca = LocalCa(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    if not all(path.is_file() for path in (ca.ca_file, ca.cert, ca.key)):
        ca = make_local_ca(folder, list(dict.fromkeys(["localhost", host, "127.0.0.1", "::1"])))
    os.environ[CA_FILE_VARIABLE] = str(ca.ca_file)  # this process's own clients, and the services it starts
    typer.echo(f"TLS: local CA {ca.ca_file} (clients: export RMA_CA_FILE={ca.ca_file} SSL_CERT_FILE={ca.ca_file}; "
               f"curl --cacert {ca.ca_file})")
    return {"RMA_TLS_CERT": str(ca.cert), "RMA_TLS_KEY": str(ca.key)}


async def _until_healthy(sup: Supervisor, stop: asyncio.Event) -> bool:
    deadline = asyncio.get_running_loop().time() + COORDINATOR_START_TIMEOUT_S
    while sup.status.state != State.HEALTHY:
        if stop.is_set() or sup.status.state == State.FAILED or asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _print_detected(workers: list[LocalWorker]) -> None:
    """The machine's findings once (a worker's edge and storage evidence is its requested kind here)."""
    if not workers:
        typer.echo("Detected nothing this machine can run", err=True)
        return
    for line in workers[0].detected:
        if line.startswith(("Detected GPU", "Detected CPU", "Detected engines")):
            typer.echo(line)
    typer.echo("Detected workers to run here: " + ", ".join(f"{w.config.worker_id} ({w.kind})" for w in workers))


def _print_assignment(answer: Assignment) -> None:
    names = ", ".join(answer.assigned_services) or "nothing (see `rma status` for the gaps)"
    typer.echo(f"Assigned to {answer.worker_id}: {names}")


def _snapshots(agents: list[Agent], workers: list[LocalWorker]) -> list[WorkerSnapshot]:
    return [WorkerSnapshot(w.kind, agent.assigned, agent.statuses()) for agent, w in zip(agents, workers, strict=True)]


async def _announce(agents: list[Agent], workers: list[LocalWorker], url: str, host: str, started: float,
                    stop: asyncio.Event) -> None:
    """Print each service once it is healthy, progress while engines load, and the ready line once."""
    progress = Progress(host, urlsplit(url).scheme)
    settled = 0
    while not stop.is_set():
        snapshots = _snapshots(agents, workers)
        elapsed = time.monotonic() - started
        for line in progress.lines(snapshots, elapsed):
            typer.echo(line)
        settled = settled + 1 if not progress.waiting(snapshots) else 0
        if settled >= SETTLED_CHECKS and not progress.ready:
            gaps = await _gaps(url)
            if gaps is not None:
                progress.ready = True
                reasons = {str(g["service"]): short_reason(str(g["reason"])) for g in gaps}
                typer.echo(summary(gaps, elapsed, reasons))
        await asyncio.sleep(ANNOUNCE_EVERY_S)


async def _gaps(url: str) -> list[dict[str, Any]] | None:
    token = os.environ.get("RMA_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=5, verify=client_context()) as client:
            answer = await client.get("/api/admin/gaps")
            answer.raise_for_status()
    except httpx.HTTPError:
        return None
    gaps: list[dict[str, Any]] = answer.json()["gaps"]
    return gaps
