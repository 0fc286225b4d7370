"""The one owner of the pool's mutable state: workers, their assignments and the replica counts.

Every change to a worker ends with `_recount`, which takes the worker's old contribution out
of the pool counts and puts the new one in, so placement decisions never rescan the pool.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rma.catalog import BY_NAME, Kind
from rma.coordinator.directory import Directory
from rma.coordinator.holder_grace import HolderGrace
from rma.coordinator.record import WorkerRecord, hash_token, seed_state, worker_kind
from rma.coordinator.secrets import NamedStores, SecretBook
from rma.coordinator.store import Change, Store, StoredWorker
from rma.placement import Pool, WorkerState, contribution, desire, engine_for
from rma.protocol import (
    Capabilities,
    Conflict,
    HeartbeatRequest,
    NotFound,
    RegisterRequest,
    ServiceStatus,
)

log = logging.getLogger("rma.coordinator")

EVENT_RING_SIZE = 500
# A down worker's services are offered to at most this many survivors straight away, found
# among at most HEAL_LOOKED_AT workers; the rest of the pool picks up anything left at its
# next heartbeat (the down worker changed the counts, so every worker replans then).
HEAL_CANDIDATES = 64
HEAL_LOOKED_AT = 1024
# A worker's heartbeat time reaches the disk at most this often: enough to tell, after a
# coordinator crash, which workers were alive, at 1/SEEN_RESOLUTION_S writes per worker-second.
SEEN_RESOLUTION_S = 30.0
# A worker another coordinator on a shared store holds is judged down here only this much past the grace:
# its heartbeat times arrive one write resolution apart, and its own coordinator judges it first.
REMOTE_GRACE_S = SEEN_RESOLUTION_S + 5.0


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    worker_id: str
    detail: str


class Registry(Directory):
    def __init__(self, store: Store, heartbeat_interval: float, grace_intervals: float = 3,
                 failure_cooldown: float = 300, clock: Callable[[], float] = time.time,
                 withheld: Mapping[str, str] | None = None, replicated: frozenset[str] = frozenset(),
                 snapshotted: frozenset[str] = frozenset(), restore_grace: float = 300) -> None:
        self.store = store
        self.withheld = dict(withheld or {})  # services this pool offers no worker → why (the gap report's reason)
        self.replicated = replicated  # stores whose engine keeps a copy on several workers here
        self.snapshotted = snapshotted  # stores whose holder copies snapshots to the pool's S3 instead
        self.holder_grace = HolderGrace(snapshotted, restore_grace)
        self.primaries: dict[str, str] = {}  # replicated store → the worker its engine elected primary
        self.heartbeat_interval = heartbeat_interval
        self.grace = heartbeat_interval * grace_intervals
        self.failure_cooldown = failure_cooldown
        self.clock = clock
        self.workers: dict[str, WorkerRecord] = {}
        self.counts: Counter[tuple[str, ...]] = Counter()
        # Bumped whenever the counts change: a worker whose plan saw this generation needs no replan.
        self.generation = 0
        # service → ids of healthy workers serving it: discovery and routing never scan the pool.
        self.serving_index: dict[str, set[str]] = {name: set() for name in BY_NAME}
        self.secrets = SecretBook(store)
        self.named_stores = NamedStores()
        self._store_env: tuple[int, dict[str, str]] = (-1, {})
        self.events: deque[Event] = deque(maxlen=EVENT_RING_SIZE)
        self.registrations = 0
        self.placement_races = 0  # assignments another coordinator on the shared store beat to it
        self._raced: set[str] = set()  # workers whose assignment lost a race since the last batch heard
        # Told of every assignment the coordinator changes, to push it down watch streams.
        self.listeners: list[Callable[[WorkerRecord], None]] = []
        self._unflushed: set[str] = set()
        self._load()

    # -- state changes ---------------------------------------------------------------------

    def _load(self) -> None:
        """Bring back every persisted worker, so a coordinator restart moves nothing.

        Workers alive when the coordinator went away (their last persisted beat is within a
        grace and one write resolution of the newest) get a fresh grace; the others come back
        down, keeping their tokens and data, until they beat again.
        """
        now = self.clock()
        stored_workers = self.store.load()
        newest = max((w.last_seen for w in stored_workers), default=now)
        for stored in stored_workers:
            alive = stored.last_seen >= newest - self.grace - SEEN_RESOLUTION_S
            record = WorkerRecord(
                stored.worker_id, stored.token_hash, Kind(stored.kind), stored.host, stored.tunnel_url,
                Capabilities.model_validate_json(stored.capabilities), stored.registered_at,
                now if alive else stored.last_seen, healthy=alive, assigned=stored.assigned,
                holds_data=stored.holds_data, persisted_seen=stored.last_seen,
            )
            if alive:
                record.restore_serving(dict(stored.serving))
            self.workers[record.worker_id] = record
            self._recount(record)
        if self.workers:
            log.info("restored %d workers from the registry", len(self.workers))

    def _recount(self, record: WorkerRecord, persist: bool = True) -> None:
        """Swap the worker's old contribution to the pool counts for its current one, if it changed; a worker
        held here has its new state written to the store (`persist`: unless the caller writes it)."""
        key = record.count_key()
        if key == record.counted_key:
            return
        now = self.clock()
        new = contribution(record.view(now, self.failure_cooldown))
        self.counts.subtract(record.counted)
        self.counts.update(new)
        was_serving, serving = _serving_in(record.counted_key), _serving_in(key)
        for service in was_serving - serving:
            self.serving_index[service].discard(record.worker_id)
        for service in serving - was_serving:
            replicas = self.serving_index[service]
            replicas.add(record.worker_id)
            self.named_stores.began_serving(service, record.worker_id, replicas)
        record.counted, record.counted_key = new, key
        self.generation += 1
        if persist:
            self._persist_state(record)

    def _persist_state(self, record: WorkerRecord) -> None:
        """Write whether the worker is up and what it serves, if that changed and it beats to this coordinator."""
        state = (record.healthy, record.routable())
        if record.held_here and state != record.persisted_state:
            self.store.save_state(record.worker_id, *state)
            record.persisted_state = state

    def _event(self, kind: str, worker_id: str, detail: str = "") -> None:
        self.events.append(Event(self.clock(), kind, worker_id, detail))
        log.info("%s %s %s", kind, worker_id, detail)

    def _replan(self, record: WorkerRecord, persist: bool = True) -> bool:
        """Recompute the worker's desired services; True when they changed and the store kept them (`persist`:
        written here; else the caller writes them).

        Skipped when neither the pool nor the worker changed since its last plan, which is
        every beat of a settled pool: the same inputs would give the same plan.
        """
        if record.planned_generation == self.generation and not record.failed_at:
            return False
        now = self.clock()
        plan = desire(record.view(now, self.failure_cooldown), Pool(self.counts, self._withheld(now), self.replicated))
        if plan.services != record.assigned:
            before = record.assigned, record.holds_data
            record.assigned = plan.services
            record.holds_data = record.holds_data | {s for s in plan.services if BY_NAME[s].stateful}
            self._recount(record, persist=persist)
            if persist and not self._keep(lambda: self.store.save_assignment(
                    record.worker_id, record.assigned, record.holds_data), record, *before):
                self._lost_race(record, *before)
                return False
        record.planned_generation = self.generation
        if plan.added:
            self._event("assigned", record.worker_id, ", ".join(plan.added))
        for service, why in plan.shed:
            self._event("unassigned", record.worker_id, f"{service}: {why}")
        changed = bool(plan.added or plan.shed)
        if changed:
            for listener in self.listeners:
                listener(record)
        return changed

    def _keep(self, write: Callable[[], bool], record: WorkerRecord, assigned: tuple[str, ...],
              holds_data: frozenset[str]) -> bool:
        """`write()`, the new assignment's; should the store be unreachable, the old assignment is back (the next
        beat plans again) before the error goes on to the caller."""
        try:
            return write()
        except Exception:
            self._revert(record, assigned, holds_data)
            raise

    def _revert(self, record: WorkerRecord, assigned: tuple[str, ...], holds_data: frozenset[str]) -> None:
        """Back to the assignment the store has, planned again at the next chance."""
        record.assigned, record.holds_data, record.planned_generation = assigned, holds_data, -1
        self._recount(record)

    def _forget(self, record: WorkerRecord, existing: WorkerRecord | None, was_healthy: bool) -> None:
        """Undo a registration the store did not keep: the worker as it was before, or not at all."""
        record.healthy = False
        self._recount(record, persist=False)
        if existing is None:
            del self.workers[record.worker_id]
            return
        existing.healthy = was_healthy
        self.workers[record.worker_id] = existing
        self._recount(existing, persist=False)

    def _lost_race(self, record: WorkerRecord, assigned: tuple[str, ...], holds_data: frozenset[str]) -> None:
        """Another coordinator on the shared store placed first: back to the assignment the store has, to be
        planned again once this coordinator has heard what changed (`caught_up`)."""
        self._revert(record, assigned, holds_data)
        self.placement_races += 1
        self._raced.add(record.worker_id)
        log.info("placement for %s raced another coordinator's; planned again once this one has heard",
                 record.worker_id)

    def caught_up(self) -> None:
        """After a batch of the other coordinators' changes: plan again the workers whose assignment lost a race
        (the worker hears of it on its watch stream, not an interval later)."""
        raced, self._raced = self._raced, set()
        for worker_id in raced:
            record = self.workers.get(worker_id)
            if record is not None and record.held_here and record.healthy:
                self._replan(record)

    def admissible_id(self, worker_id: str | None, presented_token: str | None) -> str:
        """The id a registration will have (a new one if none was asked for); Conflict where the id is taken
        and `presented_token` is not that worker's token."""
        if worker_id is None:
            return f"worker-{secrets.token_hex(6)}"
        existing = self.workers.get(worker_id)
        if existing is not None and not (
            presented_token and hmac.compare_digest(existing.token_hash, hash_token(presented_token))
        ):
            raise Conflict(f"worker id {worker_id!r} is registered already; re-registering it needs that "
                           "worker's token in X-Worker-Token")
        return worker_id

    def register(self, request: RegisterRequest, host: str, presented_token: str | None) -> tuple[
            WorkerRecord, str]:
        """Add or re-add a worker at `host` (the address routers will use, admitted by the caller: see
        `auth.Admission`); returns it with its new secret token (only its hash is kept)."""
        now = self.clock()
        worker_id = self.admissible_id(request.worker_id, presented_token)
        existing = self.workers.get(worker_id)
        token = secrets.token_urlsafe(32)
        caps = request.capabilities
        record = WorkerRecord(
            worker_id, hash_token(token), worker_kind(caps), host, request.tunnel_url, caps,
            registered_at=existing.registered_at if existing else now, last_seen=now, persisted_seen=now,
            holds_data=frozenset(s for s in caps.data_services if s in BY_NAME and BY_NAME[s].stateful)
            | (existing.holds_data if existing else frozenset()),
            assigned=existing.assigned if existing else (),
        )
        was_healthy = existing is not None and existing.healthy
        if existing is not None:
            existing.healthy = False
            self._recount(existing, persist=False)
        self.workers[worker_id] = record
        self._recount(record, persist=False)
        self._event("rejoined" if existing else "joined", worker_id, f"{record.kind} at {host}")
        holds_data = record.holds_data
        self._holder_back(worker_id)
        self._replan(record, persist=False)
        try:
            kept = self.store.save(self._stored(record))
        except Exception:  # the store is unreachable: as if this registration never came
            self._forget(record, existing, was_healthy)
            raise
        if not kept:
            self._lost_race(record, existing.assigned if existing else (), holds_data)
        record.persisted_state = (record.healthy, record.routable())
        self.registrations += 1
        return record, token

    def heartbeat(self, request: HeartbeatRequest) -> WorkerRecord:
        record = self.get(request.worker_id)
        now = self.clock()
        statuses = {
            name: st if isinstance(st, ServiceStatus) else ServiceStatus(state=seed_state(st), message="")
            for name, st in request.services_status.items()
            if name in BY_NAME
        }
        if not record.healthy:
            self._event("returned", record.worker_id)
            self._holder_back(record.worker_id)
        if not record.held_here:  # it beat to another coordinator on the store until now (which went away)
            record.held_here, record.persisted_state = True, None
        record.healthy = True
        record.last_seen = now
        record.suspect_since = None
        record.status = request.status
        record.load = request.current_load
        record.metrics = {
            "cpu_percent": request.cpu_percent, "ram_percent": request.ram_percent,
            "gpu_utilization": request.gpu_utilization, "active_requests": request.active_requests,
        }
        record.mesh_state = request.mesh
        for name, st in statuses.items():
            previous = record.services_status.get(name)
            if st.state == "failed" and (previous is None or previous.state != "failed"):
                record.failed_at[name] = now
                self._event("service-failed", record.worker_id, f"{name}: {st.message}")
            elif previous is not None and st.restarts > previous.restarts:
                self._event("service-restarted", record.worker_id, name)
        record.services_status = statuses
        record.track_ports()
        if record.failed_at:
            record.failed_at = {s: t for s, t in record.failed_at.items() if now - t < self.failure_cooldown}
            if not record.failed_at:
                record.planned_generation = -1  # a cooldown ended: the worker may run it again
        self._recount(record)
        self._persist_state(record)
        if now - record.persisted_seen >= SEEN_RESOLUTION_S:
            self._unflushed.add(record.worker_id)
        self._replan(record)
        return record

    def confirm_port(self, worker_id: str, host: str, service: str, port: int) -> None:
        """The coordinator's check found the service answering at host:port: routers may use that port now."""
        record = self._checked(worker_id, host, service, port)
        if record is None:
            return
        record.confirmed_ports[service] = port
        del record.unchecked_ports[service]
        record.port_refusals.pop(service, None)
        self._event("port-confirmed", worker_id, f"{service} answers its health check on port {port}")
        self._recount(record)

    def refuse_port(self, worker_id: str, host: str, service: str, port: int, reason: str) -> None:
        """Routers keep off the reported port; the admin view and one event say why."""
        record = self._checked(worker_id, host, service, port)
        if record is None or record.port_refusals.get(service) == (port, reason):
            return
        first = record.port_refusals.get(service, (None, ""))[0] != port
        record.port_refusals[service] = (port, reason)
        if first:
            self._event("port-refused", worker_id, f"{service} on port {port}: {reason}; routers keep off it")

    def _checked(self, worker_id: str, host: str, service: str, port: int) -> WorkerRecord | None:
        """The worker, if it still is at `host` and still reports `service` on `port` unchecked."""
        record = self.workers.get(worker_id)
        if record is None or record.host != host or record.unchecked_ports.get(service) != port:
            return None
        return record

    def unregister(self, worker_id: str) -> None:
        record = self.get(worker_id)
        record.healthy = False
        self._recount(record)
        self._holder_went(record, self.clock())
        del self.workers[worker_id]
        self.store.delete(worker_id)
        self._event("left", worker_id)

    def apply(self, change: Change) -> None:
        """Take in another coordinator's change to the shared store: a worker that registered there (or left),
        its new assignment, its state (up or down, what it serves) and its heartbeat time. A worker whose
        state another coordinator writes beats to that one now, which judges and plans it."""
        record, value = self.workers.get(change.worker_id), change.value
        if change.kind == "worker":
            self._apply_registration(change.worker_id, record, value if isinstance(value, dict) else None)
            return
        if record is None or not isinstance(value, dict):
            return  # a key of a worker that left
        if change.kind == "seen":
            if not record.held_here:
                record.last_seen = max(record.last_seen, float(value["at"]))
            return
        if change.kind == "assigned":
            record.assigned, record.holds_data = tuple(value["assigned"]), frozenset(value["holds_data"])
        else:
            record.held_here, record.healthy, record.last_seen = False, bool(value["healthy"]), self.clock()
            record.restore_serving(dict(value["serving"]))
        self._recount(record, persist=False)

    def _apply_registration(self, worker_id: str, existing: WorkerRecord | None,
                            value: dict[str, Any] | None) -> None:
        if existing is not None:
            existing.healthy = False
            self._recount(existing, persist=False)
            del self.workers[worker_id]
        if value is None:
            self._event("left", worker_id, "through another coordinator")
            return
        record = WorkerRecord(
            worker_id, value["token_hash"], Kind(value["kind"]), value["host"], value["tunnel_url"],
            Capabilities.model_validate_json(value["capabilities"]), value["registered_at"], self.clock(),
            assigned=existing.assigned if existing else (), holds_data=existing.holds_data if existing else frozenset(),
            held_here=False)
        self.workers[worker_id] = record
        self._recount(record, persist=False)
        self._event("rejoined" if existing else "joined", worker_id, f"{record.kind} at {record.host}, "
                    "through another coordinator")

    def elected(self, service: str, worker_id: str | None) -> None:
        """A replicated store's engine elected `worker_id` its primary (None: it has none, between two): discovery
        and the stores' addresses every service config carries name it from now on."""
        if self.primaries.get(service) == worker_id:
            return
        if worker_id is None:
            self.primaries.pop(service, None)
        else:
            self.primaries[service] = worker_id
        self.generation += 1
        self._event("primary", worker_id or "-", f"{service}: {'elected' if worker_id else 'none while electing'}")

    def watch_opened(self, worker_id: str) -> None:
        self.get(worker_id).suspect_since = None

    def watch_lost(self, worker_id: str) -> None:
        """The worker's watch stream closed: down after one more silent interval, not the full grace."""
        record = self.workers.get(worker_id)
        if record is not None and record.healthy:
            record.suspect_since = self.clock()

    def sweep(self) -> list[str]:
        """Mark silent workers down, then hand their services to survivors at once."""
        now = self.clock()
        downed = []
        for record in self.workers.values():
            if not record.healthy:
                continue
            # Another coordinator judges the workers it holds; this one steps in only if that one went away
            # too (their heartbeat times reach the store every SEEN_RESOLUTION_S at most).
            silent = now - record.last_seen > (self.grace if record.held_here else self.grace + REMOTE_GRACE_S)
            dropped = record.suspect_since is not None and now - record.suspect_since > self.heartbeat_interval
            if silent or dropped:
                record.healthy = False
                self._recount(record)
                downed.append(record)
                why = "its watch stream dropped" if dropped and not silent else "it went silent"
                self._event("down", record.worker_id, f"{why}; last beat {now - record.last_seen:.1f}s ago")
        for record in downed:  # every vanished holder first: no heal may hand another's store on meanwhile
            self._holder_went(record, now)
        for record in downed:
            self._heal(record.assigned)
        if expired := self.holder_grace.expired(now):
            for service, holder in expired.items():
                self._give_up_on(holder, service)
            self._heal(tuple(expired))
        return [r.worker_id for r in downed]

    def _heal(self, services: tuple[str, ...]) -> None:
        """Replan survivors that could run a down worker's services (or stores a grace held back) now, not at
        their next beat.

        Bounded: it stops once every orphaned service is assigned again, and considers at most
        HEAL_CANDIDATES of the first HEAL_LOOKED_AT workers, so however large the pool, and
        whether or not anyone can take the orphans, a death never stalls the coordinator.
        """
        orphaned = {s for s in services if self.counts[("assigned", s)] == 0}
        considered = 0
        now = self.clock()
        for record in itertools.islice(self.workers.values(), HEAL_LOOKED_AT):
            if not orphaned or considered >= HEAL_CANDIDATES:
                return
            if not record.healthy or not record.held_here:  # another coordinator plans the workers it holds
                continue
            view = record.view(now, self.failure_cooldown)
            if not any(engine_for(BY_NAME[s], view).ok for s in orphaned):
                continue
            considered += 1
            self._replan(record)
            orphaned = {s for s in orphaned if self.counts[("assigned", s)] == 0}

    def flush(self) -> int:
        """Persist the heartbeat times gathered since the last flush, in one transaction."""
        records = [self.workers[w] for w in self._unflushed if w in self.workers]
        self._unflushed.clear()
        for record in records:
            record.persisted_seen = record.last_seen
        if records:
            self.store.touch_many((r.last_seen, r.worker_id) for r in records)
        return len(records)

    # -- reads -----------------------------------------------------------------------------

    def get(self, worker_id: str) -> WorkerRecord:
        record = self.workers.get(worker_id)
        if record is None:
            raise NotFound(f"unknown worker {worker_id!r}: register first")
        return record

    def token_matches(self, worker_id: str, token: str) -> bool:
        """The token is this worker's; False for an unknown id too, in the same time, so ids cannot be probed."""
        record = self.workers.get(worker_id)
        matches = hmac.compare_digest(record.token_hash if record else _NO_TOKEN, hash_token(token))
        return matches and record is not None

    def pool(self) -> Pool:
        return Pool(Counter(self.counts), self._withheld(self.clock()), self.replicated)

    def _withheld(self, now: float) -> Mapping[str, str]:
        """What no worker is given: what the pool does not offer, and stores waiting for their holder."""
        waiting = self.holder_grace.withheld(now)
        return self.withheld | waiting if waiting else self.withheld

    def _holder_went(self, record: WorkerRecord, now: float) -> None:
        if self.holder_grace.went(record.worker_id, record.assigned, now):
            self.generation += 1

    def _give_up_on(self, holder: str, service: str) -> None:
        """`holder` stayed away past the grace: `service` is placed elsewhere, and no longer assigned to it (back
        late, its copy would serve beside the restored one)."""
        record = self.workers.get(holder)
        if record is not None:
            record.assigned = tuple(s for s in record.assigned if s != service)
            self._recount(record)
        self.generation += 1
        self._event("restore", holder, f"{service}: its holder stayed away; placed elsewhere, from its snapshot")

    def _holder_back(self, worker_id: str) -> None:
        if self.holder_grace.returned(worker_id):
            self.generation += 1

    def snapshot_at(self, service: str) -> float | None:
        """When the newest snapshot of a snapshotted store was copied off, as any worker last reported it."""
        reported = [status.snapshot_at for record in self.workers.values()
                    if (status := record.services_status.get(service)) is not None and status.snapshot_at]
        return max(reported, default=None)

    def views(self) -> list[WorkerState]:
        now = self.clock()
        return [r.view(now, self.failure_cooldown) for r in self.workers.values()]

    def _stored(self, record: WorkerRecord) -> StoredWorker:
        return StoredWorker(
            record.worker_id, record.token_hash, record.kind.value, record.host, record.tunnel_url,
            record.capabilities.model_dump_json(), record.assigned, record.holds_data,
            record.registered_at, record.last_seen, record.routable(),
        )


# Compared against when a worker id is unknown, so that answer takes as long as a wrong token's.
_NO_TOKEN = hash_token("")


def _serving_in(count_key: tuple[object, ...]) -> frozenset[str]:
    """The services a worker's count key says it serves while healthy."""
    if not count_key or not count_key[0]:
        return frozenset()
    serving = count_key[2]
    assert isinstance(serving, frozenset)
    return serving
