"""One worker as the registry keeps it, and how it reads to placement."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rma.catalog import BY_NAME, Kind
from rma.placement import SERVING_STATES, WorkerState
from rma.protocol import SERVICE_STATES, Capabilities, ServiceStatus


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

    def count_key(self) -> tuple[object, ...]:
        """What the pool counts and the routing index read of this worker: a change means recount."""
        serving = self.serving()
        ports = tuple((s, self.port_of(s)) for s in self.assigned if s in serving)
        return (self.healthy, self.assigned, serving, ports)

    def port_of(self, service: str) -> int:
        """The port the worker reports the service on, else the catalogue's."""
        status = self.services_status.get(service)
        return status.port if status is not None and status.port else BY_NAME[service].port

    def serving(self) -> frozenset[str]:
        """Assigned services reported serving; the seed's agent reports none, so its are trusted."""
        statuses = self.services_status
        trust_unreported = self.capabilities.engines is None
        return frozenset(
            name for name in self.assigned
            if (status := statuses.get(name)) is None and trust_unreported
            or status is not None and status.state in SERVING_STATES
        )

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
