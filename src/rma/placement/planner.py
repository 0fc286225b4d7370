"""Which services should one worker run? Pure: worker and pool counts in, a plan out.

Called on every registration and every heartbeat, so survivors take a dead worker's
services on their next beat. The rules, in order:

1. keep what the worker runs while it may still run it (stability beats optimality), except
   a stand-in that the rightful kind now serves (CPU services on a GPU worker, tier-1
   services on a CPU engine) and redundant replicas past the worker's multitask limit;
2. a stateful service whose data lives here comes back here, unless another worker runs it;
3. take every uncovered service the worker can run, whatever its limit: coverage first
   (for a worker of the service's own kind, a stand-in replica does not cover it);
4. then add redundancy, up to the multitask limit, to services below their target.
"""

from __future__ import annotations

from dataclasses import dataclass

from rma.catalog import SERVICES, Kind, Service
from rma.catalog import get as service_named
from rma.placement.feasible import check
from rma.placement.model import Pool, WorkerState

# How many services a worker runs when it is not covering a gap.
# GPU workers specialise (model loads are costly); edge workers pair coordinator + proxy.
GPU_LIMIT = 1
EDGE_LIMIT = 2
STORAGE_LIMIT = 5
KIND_SERVICE_COUNT = {kind: sum(1 for s in SERVICES if s.kind == kind) for kind in Kind}


@dataclass(frozen=True)
class Plan:
    worker_id: str
    services: tuple[str, ...]
    added: tuple[str, ...]
    shed: tuple[tuple[str, str], ...]  # (service, why)


def multitask_limit(worker: WorkerState, others: Pool) -> int:
    """CPU workers multitask 3 → 2 → 1 as their tier fills; the others have fixed limits."""
    if worker.kind == Kind.GPU:
        return GPU_LIMIT
    if worker.kind == Kind.EDGE:
        return EDGE_LIMIT
    if worker.kind == Kind.STORAGE:
        return STORAGE_LIMIT
    peers = others.workers(Kind.CPU) + 1
    services = KIND_SERVICE_COUNT[Kind.CPU]
    if peers >= services:
        return 1
    if 2 * peers >= services:
        return 2
    return 3


def stand_in_reason(service: Service, worker: WorkerState, others: Pool, *, serving: bool) -> str:
    """Why a stand-in replica should make way for the rightful kind; empty when it should not.

    On the add side any assigned rightful replica is enough (`serving=False`); on the keep
    side the rightful replica must already be serving, so a hand-over never opens a gap.
    """
    count = others.serving if serving else others.assigned
    if worker.kind == Kind.GPU and service.kind == Kind.CPU and count(service.name, Kind.CPU):
        return "a CPU worker serves it"
    if worker.kind == Kind.CPU and service.kind == Kind.GPU and count(service.name, Kind.GPU):
        return "a GPU worker serves it"
    return ""


def _may_add_redundancy(service: Service, worker: WorkerState, others: Pool) -> bool:
    # A store is one database unless its engine replicates it here (a second copy would split the data); a
    # stand-in of another kind (CPU services on a GPU worker, tier-1 services on a CPU engine) only fills a
    # gap, so slots go to the own tier.
    # A replicated store's standby is added only beside a serving copy, which it starts from.
    replicates = service.name in others.replicated and others.serving(service.name) > 0
    return (not service.stateful or replicates) and service.kind == worker.kind


def _copies(service: Service, others: Pool) -> int:
    """How many workers may hold a store's data at once: one, or a replicated store's copies."""
    return others.target(service) if service.name in others.replicated else 1


def _replicas(service: Service, worker: WorkerState, others: Pool) -> int:
    """Replicas elsewhere; a worker of the service's own kind does not count stand-ins, so it takes them over."""
    if worker.kind == service.kind:
        return others.assigned(service.name, service.kind)
    return others.assigned(service.name)


def _gap_order(service: Service, worker: WorkerState, others: Pool) -> tuple[bool, int, int, str]:
    replicas = _replicas(service, worker, others)
    return (replicas > 0, service.priority, replicas, service.name)


def desire(worker: WorkerState, pool: Pool) -> Plan:
    """The services `worker` should run now. `pool` counts every healthy worker, this one too."""
    if not worker.healthy:
        return Plan(worker.worker_id, (), (), tuple((s, "worker is down") for s in worker.assigned))
    others = pool.without(worker)
    keep: list[str] = []
    shed: list[tuple[str, str]] = []
    for name in worker.assigned:
        service = service_named(name)
        verdict = check(service, worker, others, keep)
        why = verdict.reason or stand_in_reason(service, worker, others, serving=True)
        if why and not (service.stateful and verdict.ok):
            shed.append((name, why))
        else:
            keep.append(name)
    keep = _shed_past_limit(keep, worker, others, shed)

    added: list[str] = []
    # Only into a gap: a store another healthy worker runs stays there (two copies would split the data), and
    # a replicated one takes its data back only while it lacks a copy (the engine makes it a standby).
    for name in sorted(worker.holds_data - set(keep)):
        service = service_named(name)
        if others.assigned(name) < _copies(service, others) and check(service, worker, others, keep).ok:
            keep.append(name)
            added.append(name)

    limit = multitask_limit(worker, others)
    for service in sorted(SERVICES, key=lambda s: _gap_order(s, worker, others)):
        if service.name in keep or stand_in_reason(service, worker, others, serving=False):
            continue
        replicas = _replicas(service, worker, others)
        wanted = replicas == 0 or (
            _may_add_redundancy(service, worker, others)
            and replicas < others.target(service)
            and len(keep) < limit
        )
        if wanted and check(service, worker, others, keep).ok:
            keep.append(service.name)
            added.append(service.name)

    if not keep:
        _take_least_replicated(worker, others, keep, added)
    return Plan(worker.worker_id, tuple(keep), tuple(added), tuple(shed))


def _shed_past_limit(keep: list[str], worker: WorkerState, others: Pool,
                     shed: list[tuple[str, str]]) -> list[str]:
    """Drop redundant replicas past the multitask limit, least important first.

    Only a replica whose service keeps its target without this worker goes (hysteresis:
    the pool never drops below target to make a worker's load lighter).
    """
    limit = multitask_limit(worker, others)
    result = list(keep)
    for name in sorted(keep, key=lambda n: (-service_named(n).priority, n)):
        if len(result) <= limit:
            break
        service = service_named(name)
        if service.stateful or others.serving(name) < others.target(service):
            continue
        result.remove(name)
        shed.append((name, f"over the multitask limit of {limit}; others serve it"))
    return result


def _take_least_replicated(worker: WorkerState, others: Pool, keep: list[str], added: list[str]) -> None:
    """A worker with nothing to do adds a replica where it helps most (scenario 3 of the seed)."""
    candidates = [
        s for s in SERVICES
        if _may_add_redundancy(s, worker, others) and not stand_in_reason(s, worker, others, serving=False)
        and not (s.stateful and others.assigned(s.name) >= _copies(s, others))  # a store has its copies
    ]
    for service in sorted(candidates, key=lambda s: (others.assigned(s.name), s.priority, s.name)):
        if check(service, worker, others, keep).ok:
            keep.append(service.name)
            added.append(service.name)
            return
