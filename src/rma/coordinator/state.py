"""Settings and the per-process state the routes share, with the coordinator's own check of reported ports."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rma.catalog import BY_NAME, HealthCheck
from rma.coordinator.answers import Answers
from rma.coordinator.auth import Admission, Network
from rma.coordinator.history import History
from rma.coordinator.mesh import MeshAuthority, MeshSettings
from rma.coordinator.metrics import Metrics
from rma.coordinator.record import WorkerRecord, bracket
from rma.coordinator.registry import Registry
from rma.coordinator.watch import Watchers

# The coordinator's check of a port a worker reports instead of its assigned one (see PortChecks).
CHECK_TIMEOUT_S = 2.0  # to connect and answer, per check: a loaded service answers its health check well within
CHECKS_AT_ONCE = 32  # workers being checked at one time across the pool; the others wait for a later beat
CHECK_SPACING_S = 1.0  # a worker's checks start at most this often, however fast it beats
RETRY_FIRST_S = 2.0  # a port that failed is checked again after this long, then twice as long each time
RETRY_MAX_S = 60.0
CHECKED_PORTS = range(1024, 65536)  # never a privileged port

CheckFn = Callable[[str, int, HealthCheck], Awaitable[str | None]]


@dataclass(frozen=True)
class CoordinatorSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".rma/coordinator")
    # Where the pool is kept (RMA_STORE_URL): None for SQLite in data_dir; etcd://… for a store replicas share.
    store_url: str | None = None
    heartbeat_interval: float = 5.0
    # A worker silent for this many intervals is down and its services become gaps.
    grace_intervals: float = 3.0
    # A service that crash-looped on a worker is placed elsewhere for this long.
    failure_cooldown: float = 300.0
    # Where stores replicate: chromadb's and neo4j's holders copy a snapshot to S3 this often
    # (RMA_SNAPSHOT_INTERVAL_S), and a vanished holder is waited for this long (RMA_RESTORE_GRACE_S) before
    # another worker restores the newest.
    snapshot_interval: float = 300.0
    restore_grace: float = 300.0
    join_token: str | None = None
    admin_token: str | None = None
    # The client keys of the coordinator's own /service route, as the edge proxy's RMA_API_KEYS are its.
    api_keys: tuple[str, ...] = ()
    # Applications presenting one of these as X-API-Key may read stores' credentials in discovery.
    store_keys: tuple[str, ...] = ()
    # Networks whose workers may advertise an address other than the one they connect from (NAT, tunnels).
    vouched_networks: tuple[Network, ...] = ()
    max_body_bytes: int = 64 * 1024
    # Heartbeat times reach the disk this often (seconds), in one batch.
    flush_interval: float = 2.0
    # The pool runs on the mesh (RMA_MESH_NETWORK): workers join it with a certificate this coordinator signs.
    mesh: MeshSettings | None = None


@dataclass
class CoordinatorState:
    settings: CoordinatorSettings
    registry: Registry
    metrics: Metrics
    answers: Answers
    watchers: Watchers
    history: History
    mesh: MeshAuthority | None = None
    admission: Admission = field(init=False)
    port_checks: PortChecks = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.vouched_networks)
        self.port_checks = PortChecks(self.registry, {self.settings.port})


async def health_check(host: str, port: int, health: HealthCheck) -> str | None:
    """None when host:port answers the catalogue's health check within CHECK_TIMEOUT_S, else why not."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            if health.protocol == "tcp":
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                return None
            # No proxies from the environment, no redirects followed, the body never read.
            async with httpx.AsyncClient(trust_env=False, timeout=CHECK_TIMEOUT_S) as client, client.stream(
                    "GET", f"http://{bracket(host)}:{port}{health.path}") as answer:
                return None if 200 <= answer.status_code < 300 else f"GET {health.path} answered {answer.status_code}"
    except TimeoutError:
        return f"no answer to its health check within {CHECK_TIMEOUT_S:g}s"
    except (OSError, httpx.HTTPError) as error:
        return f"its health check could not connect ({error or type(error).__name__})"


class PortChecks:
    """The coordinator's own check of a port a worker reports instead of its assigned one.

    A worker's supervisor moves a service off an assigned port that is taken, so another port
    can be honest, but a heartbeat is only the worker's word. Routers use a reported port once
    it answers the service's catalogue health check, asked by the coordinator itself, only ever
    at the worker's admitted host and at a port in 1024-65535 that is not the coordinator's own.
    Checks run as tasks beside the heartbeat, never in it: a worker has one check under way at
    a time and a new one at most every CHECK_SPACING_S, a port that failed waits RETRY_FIRST_S
    and then twice as long each time, and at most CHECKS_AT_ONCE workers are checked at once.
    """

    def __init__(self, registry: Registry, own_ports: Collection[int], check: CheckFn = health_check,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.own_ports = frozenset(own_ports)
        self.check = check
        self.clock = clock
        self._running: dict[str, asyncio.Task[None]] = {}
        self._started: dict[str, float] = {}  # worker → when its last check began
        # worker → (service, port) → (failed checks in a row, when the next may start)
        self._failures: dict[str, dict[tuple[str, int], tuple[int, float]]] = {}

    def after_beat(self, record: WorkerRecord) -> None:
        """Start checking the worker's reported ports, if any is due and its turn has come; never waits."""
        if not record.unchecked_ports:
            return
        due = self._due(record)
        worker_id = record.worker_id
        now = self.clock()
        if (not due or worker_id in self._running or len(self._running) >= CHECKS_AT_ONCE
                or now - self._started.get(worker_id, -math.inf) < CHECK_SPACING_S):
            return
        if len(self._started) > 2 * len(self.registry.workers) + CHECKS_AT_ONCE:
            self._forget_gone()
        self._started[worker_id] = now
        task = asyncio.get_running_loop().create_task(self._check_all(worker_id, record.host, due))
        self._running[worker_id] = task
        task.add_done_callback(lambda _: self._running.pop(worker_id, None))

    def never_checked(self, port: int) -> str | None:
        """Why the coordinator will not connect to this port at all; None when it may."""
        if port not in CHECKED_PORTS:
            return f"port {port} is outside 1024-65535"
        if port in self.own_ports:
            return f"port {port} is the coordinator's own port"
        return None

    def _due(self, record: WorkerRecord) -> list[tuple[str, int, HealthCheck]]:
        """The ports to check now; one the coordinator never checks is refused here, with no connection."""
        now = self.clock()
        failures = {k: v for k, v in self._failures.pop(record.worker_id, {}).items()
                    if record.unchecked_ports.get(k[0]) == k[1]}
        if failures:
            self._failures[record.worker_id] = failures
        due = []
        for service, port in record.unchecked_ports.items():
            why = self.never_checked(port)
            if why is not None:
                self.registry.refuse_port(record.worker_id, record.host, service, port, why)
            elif now >= failures.get((service, port), (0, -math.inf))[1]:
                engine = self.registry.engine_of(service, record.worker_id)
                due.append((service, port, BY_NAME[service].health_of(engine)))
        return due

    async def _check_all(self, worker_id: str, host: str, due: list[tuple[str, int, HealthCheck]]) -> None:
        for service, port, health in due:
            problem = await self.check(host, port, health)
            failures = self._failures.setdefault(worker_id, {})
            if problem is None:
                failures.pop((service, port), None)
                self.registry.confirm_port(worker_id, host, service, port)
                continue
            count = failures.get((service, port), (0, 0.0))[0] + 1
            failures[(service, port)] = (count, self.clock() + min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (count - 1)))
            self.registry.refuse_port(worker_id, host, service, port,
                                      f"{problem} (the coordinator's check of {bracket(host)}:{port})")

    def _forget_gone(self) -> None:
        """Drop what is kept for workers that left or have not needed a check for a while."""
        now = self.clock()
        self._started = {w: t for w, t in self._started.items()
                         if w in self.registry.workers and now - t < RETRY_MAX_S}
        self._failures = {w: f for w, f in self._failures.items() if w in self._started}
