"""The one owner of the pool's mutable state: workers, their assignments and the replica counts.

Every change to a worker goes through `_change`, which takes the worker's old contribution
out of the pool counts and puts the new one in, so placement decisions never rescan the pool.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from rma.catalog import BY_NAME, Kind
from rma.coordinator.store import Store, StoredWorker
from rma.placement import SERVING_STATES, Pool, WorkerState, contribution, desire
from rma.protocol import (
    SERVICE_STATES,
    Capabilities,
    Conflict,
    HeartbeatRequest,
    NotFound,
    RegisterRequest,
    ServiceStatus,
)

log = logging.getLogger("rma.coordinator")

EVENT_RING_SIZE = 500


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

    def count_key(self) -> tuple[object, ...]:
        return (self.healthy, self.assigned, self.serving())

    def serving(self) -> frozenset[str]:
        if self.capabilities.engines is None:
            # The seed's agent reports no per-service health: trust what it was given.
            unreported = {s for s in self.assigned if s not in self.services_status}
        else:
            unreported = set()
        reported = {s for s, st in self.services_status.items() if st.state in SERVING_STATES}
        return frozenset((reported | unreported) & set(self.assigned))

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


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    worker_id: str
    detail: str


class Registry:
    def __init__(self, store: Store, heartbeat_interval: float, grace_intervals: float = 3,
                 failure_cooldown: float = 300, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.heartbeat_interval = heartbeat_interval
        self.grace = heartbeat_interval * grace_intervals
        self.failure_cooldown = failure_cooldown
        self.clock = clock
        self.workers: dict[str, WorkerRecord] = {}
        self.counts: Counter[tuple[str, ...]] = Counter()
        # Bumped whenever the counts change: a worker whose plan saw this generation needs no replan.
        self.generation = 0
        self.events: deque[Event] = deque(maxlen=EVENT_RING_SIZE)
        self.registrations = 0
        self._unflushed: set[str] = set()
        self._load()

    # -- state changes ---------------------------------------------------------------------

    def _load(self) -> None:
        """Bring back every persisted worker with a fresh grace, so a coordinator restart moves nothing."""
        now = self.clock()
        for stored in self.store.load():
            record = WorkerRecord(
                stored.worker_id, stored.token_hash, Kind(stored.kind), stored.host, stored.tunnel_url,
                Capabilities.model_validate_json(stored.capabilities), stored.registered_at, now,
                assigned=stored.assigned, holds_data=stored.holds_data,
            )
            self.workers[record.worker_id] = record
            self._recount(record)
        if self.workers:
            log.info("restored %d workers from the registry", len(self.workers))

    def _recount(self, record: WorkerRecord) -> None:
        """Swap the worker's old contribution to the pool counts for its current one, if it changed."""
        key = record.count_key()
        if key == record.counted_key:
            return
        now = self.clock()
        new = contribution(record.view(now, self.failure_cooldown))
        self.counts.subtract(record.counted)
        self.counts.update(new)
        record.counted, record.counted_key = new, key
        self.generation += 1

    def _event(self, kind: str, worker_id: str, detail: str = "") -> None:
        self.events.append(Event(self.clock(), kind, worker_id, detail))
        log.info("%s %s %s", kind, worker_id, detail)

    def _replan(self, record: WorkerRecord) -> bool:
        """Recompute the worker's desired services; True when they changed (the caller persists).

        Skipped when neither the pool nor the worker changed since its last plan, which is
        every beat of a settled pool: the same inputs would give the same plan.
        """
        if record.planned_generation == self.generation and not record.failed_at:
            return False
        now = self.clock()
        plan = desire(record.view(now, self.failure_cooldown), Pool(self.counts))
        if plan.services != record.assigned:
            record.assigned = plan.services
            record.holds_data = record.holds_data | {s for s in plan.services if BY_NAME[s].stateful}
            self._recount(record)
        record.planned_generation = self.generation
        if plan.added:
            self._event("assigned", record.worker_id, ", ".join(plan.added))
        for service, why in plan.shed:
            self._event("unassigned", record.worker_id, f"{service}: {why}")
        return bool(plan.added or plan.shed)

    def register(self, request: RegisterRequest, client_host: str, presented_token: str | None) -> tuple[
            WorkerRecord, str]:
        """Add or re-add a worker; returns it with its new secret token (only its hash is kept)."""
        now = self.clock()
        worker_id = request.worker_id or f"worker-{secrets.token_hex(6)}"
        existing = self.workers.get(worker_id)
        if existing is not None and not (
            presented_token and hmac.compare_digest(existing.token_hash, hash_token(presented_token))
        ):
            raise Conflict(f"worker id {worker_id!r} is registered already; re-registering it needs that "
                           "worker's token in X-Worker-Token")
        token = secrets.token_urlsafe(32)
        caps = request.capabilities
        host = request.advertise_host or request.vpn_ip or _url_host(request.tunnel_url) or client_host
        record = WorkerRecord(
            worker_id, hash_token(token), worker_kind(caps), host, request.tunnel_url, caps,
            registered_at=existing.registered_at if existing else now, last_seen=now,
            holds_data=frozenset(s for s in caps.data_services if s in BY_NAME and BY_NAME[s].stateful)
            | (existing.holds_data if existing else frozenset()),
            assigned=existing.assigned if existing else (),
        )
        if existing is not None:
            existing.healthy = False
            self._recount(existing)
        self.workers[worker_id] = record
        self._recount(record)
        self._event("rejoined" if existing else "joined", worker_id, f"{record.kind} at {host}")
        self._replan(record)
        self.store.save(self._stored(record))
        self.registrations += 1
        return record, token

    def heartbeat(self, request: HeartbeatRequest) -> WorkerRecord:
        record = self.get(request.worker_id)
        now = self.clock()
        statuses = {
            name: st if isinstance(st, ServiceStatus) else ServiceStatus(state=_seed_state(st), message="")
            for name, st in request.services_status.items()
            if name in BY_NAME
        }
        if not record.healthy:
            self._event("returned", record.worker_id)
        record.healthy = True
        record.last_seen = now
        record.status = request.status
        record.load = request.current_load
        record.metrics = {
            "cpu_percent": request.cpu_percent, "ram_percent": request.ram_percent,
            "gpu_utilization": request.gpu_utilization, "active_requests": request.active_requests,
        }
        for name, st in statuses.items():
            previous = record.services_status.get(name)
            if st.state == "failed" and (previous is None or previous.state != "failed"):
                record.failed_at[name] = now
                self._event("service-failed", record.worker_id, f"{name}: {st.message}")
            elif previous is not None and st.restarts > previous.restarts:
                self._event("service-restarted", record.worker_id, name)
        record.services_status = statuses
        if record.failed_at:
            record.failed_at = {s: t for s, t in record.failed_at.items() if now - t < self.failure_cooldown}
            if not record.failed_at:
                record.planned_generation = -1  # a cooldown ended: the worker may run it again
        self._recount(record)
        self._unflushed.add(record.worker_id)
        if self._replan(record):
            self.store.save_assignment(record.worker_id, record.assigned, record.holds_data)
        return record

    def unregister(self, worker_id: str) -> None:
        record = self.get(worker_id)
        record.healthy = False
        self._recount(record)
        del self.workers[worker_id]
        self.store.delete(worker_id)
        self._event("left", worker_id)

    def sweep(self) -> list[str]:
        """Mark workers silent past the grace as down; their services become gaps for survivors."""
        now = self.clock()
        downed = []
        for record in self.workers.values():
            if record.healthy and now - record.last_seen > self.grace:
                record.healthy = False
                self._recount(record)
                downed.append(record.worker_id)
                self._event("down", record.worker_id, f"silent for {now - record.last_seen:.1f}s")
        return downed

    def flush(self) -> int:
        """Persist the heartbeat times gathered since the last flush, in one transaction."""
        seen = [(self.workers[w].last_seen, w) for w in self._unflushed if w in self.workers]
        self._unflushed.clear()
        if seen:
            self.store.touch_many(seen)
        return len(seen)

    # -- reads -----------------------------------------------------------------------------

    def get(self, worker_id: str) -> WorkerRecord:
        record = self.workers.get(worker_id)
        if record is None:
            raise NotFound(f"unknown worker {worker_id!r}: register first")
        return record

    def token_matches(self, worker_id: str, token: str) -> bool:
        record = self.get(worker_id)
        return hmac.compare_digest(record.token_hash, hash_token(token))

    def pool(self) -> Pool:
        return Pool(Counter(self.counts))

    def views(self) -> list[WorkerState]:
        now = self.clock()
        return [r.view(now, self.failure_cooldown) for r in self.workers.values()]

    def replicas(self, service: str) -> list[dict[str, Any]]:
        """Healthy replicas of a service, least loaded first."""
        return self.routing_table([service])[service]

    def routing_table(self, services: Iterable[str] = BY_NAME) -> dict[str, list[dict[str, Any]]]:
        """Each service's healthy replicas (the worker is up and reports the service serving)."""
        table: dict[str, list[dict[str, Any]]] = {name: [] for name in services}
        for record in self.workers.values():
            if not record.healthy:
                continue
            for service in record.serving():
                if service not in table:
                    continue
                status = record.services_status.get(service)
                port = status.port if status is not None and status.port else BY_NAME[service].port
                table[service].append({
                    "worker_id": record.worker_id, "host": record.host, "port": port,
                    "url": f"http://{_bracket(record.host)}:{port}", "load": record.load,
                    "state": status.state if status is not None else "running",
                    "last_heartbeat": record.last_seen,
                })
        for replicas in table.values():
            replicas.sort(key=lambda r: (r["load"], r["worker_id"]))
        return table

    def _stored(self, record: WorkerRecord) -> StoredWorker:
        return StoredWorker(
            record.worker_id, record.token_hash, record.kind.value, record.host, record.tunnel_url,
            record.capabilities.model_dump_json(), record.assigned, record.holds_data,
            record.registered_at, record.last_seen,
        )


def _url_host(url: str | None) -> str | None:
    if not url:
        return None
    return urlsplit(url).hostname


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _seed_state(state: str) -> str:
    """The seed's agent reports free-form strings; anything but a known state reads as running."""
    return state if state in SERVICE_STATES else "running"
