"""One worker as the registry keeps it, and how it reads to placement."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rma.catalog import BY_NAME, Kind
from rma.placement import SERVING_STATES, WorkerState
from rma.protocol import SERVICE_STATES, Capabilities, MeshState, ServiceStatus


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def worker_kind(capabilities: Capabilities) -> Kind:
    """The declared kind, as the seed's coordinator read it: GPU → Edge → Storage → CPU."""
    declared = capabilities.worker_type
    if declared in ("gpu", "cpu", "storage", "edge"):
        return Kind(declared)
    if capabilities.has_gpu or capabilities.gpus:
        return Kind.GPU
    if capabilities.has_edge or capabilities.has_public_ip:
        return Kind.EDGE
    if capabilities.has_storage:
        return Kind.STORAGE
    return Kind.CPU


@dataclass
class WorkerRecord:
    worker_id: str
    token_hash: str
    kind: Kind
    host: str
    tunnel_url: str | None
    capabilities: Capabilities
    registered_at: float
    last_seen: float
    healthy: bool = True
    assigned: tuple[str, ...] = ()
    holds_data: frozenset[str] = frozenset()
    # What the worker last reported per service; the seed's agent may report nothing.
    services_status: dict[str, ServiceStatus] = field(default_factory=dict)
    failed_at: dict[str, float] = field(default_factory=dict)
    load: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    mesh_state: MeshState | None = None  # as its last heartbeat said, on a pool that runs on the mesh
    status: str = "healthy"
    # What this worker adds to the pool counts now, and the state it was computed from.
    counted: Counter[tuple[str, ...]] = field(default_factory=Counter)
    counted_key: tuple[object, ...] = ()
    # The pool generation this worker's assignment was last planned against.
    planned_generation: int = -1
    # When its watch stream dropped without a goodbye (a killed process closes its sockets).
    suspect_since: float | None = None
    # The heartbeat time last written to the registry's disk.
    persisted_seen: float = 0.0
    # Whether it is up and what it serves (`routable()`), as last written to the store: a change is written once.
    persisted_state: tuple[bool, dict[str, int]] | None = None
    # It beats to this coordinator; False for one another coordinator on a shared store holds (it judges it).
    held_here: bool = True
    # Per service reported on a port other than its assigned (catalogue) one: that port, once it
    # answered the coordinator's own check, as long as the worker keeps reporting it.
    confirmed_ports: dict[str, int] = field(default_factory=dict)
    # Per service reported serving on another port not confirmed yet: the port, awaiting the coordinator's check.
    unchecked_ports: dict[str, int] = field(default_factory=dict)
    # Per unchecked service: (port, why routers do not use it), as the last check found.
    port_refusals: dict[str, tuple[int, str]] = field(default_factory=dict)

    def count_key(self) -> tuple[object, ...]:
        """What the pool counts and the routing index read of this worker: a change means recount."""
        serving = self.serving()
        ports = tuple((s, self.port_of(s)) for s in self.assigned if s in serving)
        return (self.healthy, self.assigned, serving, ports)

    def routable(self) -> dict[str, int]:
        """What routers reach on this worker now: each service it serves → its port (none while it is down)."""
        if not self.healthy:
            return {}
        return {name: port for name in sorted(self.serving()) if (port := self.port_of(name)) is not None}

    def restore_serving(self, serving: dict[str, int]) -> None:
        """Take back what it served when a coordinator kept it, until its next heartbeat says what it serves now:
        a restarted coordinator's routing table is never emptier than what it knew."""
        kept = {name: port for name, port in serving.items() if name in BY_NAME}
        self.services_status = {name: ServiceStatus(state="healthy", port=port) for name, port in kept.items()}
        self.confirmed_ports = {name: port for name, port in kept.items() if port != BY_NAME[name].port}
        self.persisted_state = (self.healthy, kept)

    def port_of(self, service: str) -> int | None:
        """The port routers use: the assigned one, or a reported one the coordinator confirmed; None until then.

        A worker reports where its supervisor runs the service (another port when the assigned
        one was taken), but only its word says what answers there: a port is used once the
        coordinator confirms it, so a heartbeat cannot point the routers at another server on
        the worker's machine. A service that moves again is off the table until its new port
        is confirmed: the old one is no longer its.
        """
        status = self.services_status.get(service)
        assigned = BY_NAME[service].port
        if status is None or not status.port or status.port == assigned:
            return assigned
        return status.port if self.confirmed_ports.get(service) == status.port else None

    def serving(self) -> frozenset[str]:
        """Assigned services reported serving on a routable port; the seed's agent reports none, so its are trusted."""
        statuses = self.services_status
        trust_unreported = self.capabilities.engines is None
        return frozenset(
            name for name in self.assigned
            if (status := statuses.get(name)) is None and trust_unreported
            or status is not None and status.state in SERVING_STATES and self.port_of(name) is not None
        )

    def track_ports(self) -> None:
        """After a report: keep the confirmations it still matches, and note the other reported ports to check.

        Only assigned services reported serving are checked; a confirmation lasts while the
        worker reports that port, so a service back on it after another port is checked again.
        """
        confirmed, unchecked = {}, {}
        for name in self.assigned:
            status = self.services_status.get(name)
            if status is None or not status.port or status.port == BY_NAME[name].port:
                continue
            if self.confirmed_ports.get(name) == status.port:
                confirmed[name] = status.port
            elif status.state in SERVING_STATES:
                unchecked[name] = status.port
        self.confirmed_ports, self.unchecked_ports = confirmed, unchecked
        if self.port_refusals:
            self.port_refusals = {s: r for s, r in self.port_refusals.items() if unchecked.get(s) == r[0]}

    def port_checks(self) -> dict[str, dict[str, object]]:
        """For the operator: each reported port routers do not use (yet), and why."""
        checks: dict[str, dict[str, object]] = {}
        for name, port in self.unchecked_ports.items():
            refused = self.port_refusals.get(name)
            checks[name] = {
                "port": port, "state": "refused" if refused else "checking",
                "reason": refused[1] if refused else
                f"port {port} is not the assigned {BY_NAME[name].port}: waiting for the coordinator's check",
            }
        return checks

    def view(self, now: float, failure_cooldown: float) -> WorkerState:
        caps = self.capabilities
        gpu_memory = caps.gpu_memory_mb
        if gpu_memory is None and caps.gpus:
            gpu_memory = sum(g.free_mb if g.free_mb is not None else g.memory_mb for g in caps.gpus)
        return WorkerState(
            worker_id=self.worker_id,
            kind=self.kind,
            healthy=self.healthy,
            has_gpu=caps.has_gpu or bool(caps.gpus),
            gpu_memory_mb=gpu_memory,
            ram_mb=caps.ram_mb,
            engines=None if caps.engines is None else frozenset(caps.engines),
            assigned=self.assigned,
            serving=self.serving(),
            failed=frozenset(s for s, t in self.failed_at.items() if now - t < failure_cooldown),
            holds_data=self.holds_data,
        )


def url_host(url: str | None) -> str | None:
    if not url:
        return None
    return urlsplit(url).hostname


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def seed_state(state: str) -> str:
    """The seed's agent reports free-form strings; anything but a known state reads as running."""
    return state if state in SERVICE_STATES else "running"
