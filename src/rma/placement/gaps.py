"""The gap report: each service's coverage, and why an uncovered service stays uncovered."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from rma.catalog import SERVICES, Service
from rma.placement.feasible import check
from rma.placement.model import Pool, WorkerState
from rma.placement.planner import stand_in_reason

CRITICAL, WARNING, OK = "critical", "warning", "ok"


@dataclass(frozen=True)
class Gap:
    service: str
    required_type: str
    priority: int
    port: int
    current_workers: int  # healthy workers assigned the service
    healthy_replicas: int  # of those, replicas reporting the service healthy
    target_replicas: int  # healthy replicas below this make it a warning (a replicated store's copies)
    status: str
    reason: str


def _status(service: Service, healthy: int, pool: Pool) -> str:
    if healthy == 0:
        return CRITICAL
    if healthy < pool.target(service):
        return WARNING
    return OK


def _why_uncovered(service: Service, workers: list[WorkerState], pool: Pool) -> str:
    if service.name in pool.withheld:
        return pool.withheld[service.name]
    assigned = pool.assigned(service.name)
    if assigned:
        return f"assigned to {assigned} worker(s), none healthy yet"
    healthy = [w for w in workers if w.healthy]
    if not healthy:
        return "no healthy workers"
    reasons: Counter[str] = Counter()
    for worker in healthy:
        others = pool.without(worker)
        verdict = check(service, worker, others, worker.assigned)
        reason = verdict.reason or stand_in_reason(service, worker, others, serving=False)
        reasons[reason or "can run it: placed at its next heartbeat"] += 1
    parts = [f"{count} of {len(healthy)} healthy workers: {why}" for why, count in reasons.most_common()]
    return "; ".join(parts)


def gap_report(workers: Iterable[WorkerState], pool: Pool) -> list[Gap]:
    """One entry per catalogue service, critical first, then by priority."""
    snapshot = list(workers)
    gaps = []
    for service in SERVICES:
        healthy = pool.serving(service.name)
        status = _status(service, healthy, pool)
        reason = _why_uncovered(service, snapshot, pool) if healthy == 0 else ""
        gaps.append(Gap(service.name, service.kind.value, service.priority, service.port,
                        pool.assigned(service.name), healthy, pool.target(service), status, reason))
    order = {CRITICAL: 0, WARNING: 1, OK: 2}
    gaps.sort(key=lambda g: (order[g.status], g.priority, g.service))
    return gaps
