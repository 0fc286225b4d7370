"""What placement sees: frozen views of workers and the pool's replica counts.

The registry keeps one `Pool` up to date by adding and subtracting each worker's
`contribution`, so a decision for one worker costs the same with 10 or 10,000 workers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rma.catalog import Kind, Service

# Copies of a replicated store: a primary and a standby, on different machines.
STORE_COPIES = 2

# Service states a worker reports that mean "answering requests now".
SERVING_STATES = frozenset({"healthy", "running"})


@dataclass(frozen=True)
class WorkerState:
    """One worker as placement sees it."""

    worker_id: str
    kind: Kind
    healthy: bool = True
    has_gpu: bool = False
    # Total GPU memory; None when the worker did not say (trusted, no memory check).
    gpu_memory_mb: int | None = None
    # Total RAM; None when unknown (no RAM check).
    ram_mb: int | None = None
    # Engines the worker can start; None means "trusted for every service of its kind"
    # (the seed's own agent reports no engine list).
    engines: frozenset[str] | None = None
    assigned: tuple[str, ...] = ()
    serving: frozenset[str] = frozenset()
    # Services that crash-looped here recently: placed elsewhere for a while.
    failed: frozenset[str] = frozenset()
    # Stateful services whose data lives on this worker.
    holds_data: frozenset[str] = frozenset()


def contribution(worker: WorkerState) -> Counter[tuple[str, ...]]:
    """The counts one worker adds to the pool: nothing unless it is healthy."""
    counts: Counter[tuple[str, ...]] = Counter()
    if not worker.healthy:
        return counts
    counts[("workers", worker.kind)] += 1
    for name in worker.assigned:
        counts[("assigned", name)] += 1
        counts[("assigned", name, worker.kind)] += 1
        if name in worker.serving:
            counts[("serving", name)] += 1
            counts[("serving", name, worker.kind)] += 1
    return counts


@dataclass(frozen=True)
class Pool:
    """Replica counts over the healthy workers, and the services the pool does not offer at all."""

    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)
    withheld: Mapping[str, str] = field(default_factory=dict)  # service → why no worker is given it
    # Stores whose engine keeps copies on several workers here (postgres under Patroni on a shared store).
    replicated: frozenset[str] = frozenset()

    @classmethod
    def of(cls, workers: Iterable[WorkerState]) -> Pool:
        total: Counter[tuple[str, ...]] = Counter()
        for worker in workers:
            total.update(contribution(worker))
        return cls(total)

    def without(self, worker: WorkerState) -> Pool:
        counts = Counter(self.counts)
        counts.subtract(contribution(worker))
        return Pool(counts, self.withheld, self.replicated)

    def target(self, service: Service) -> int:
        """Healthy replicas the service should have: a replicated store's copies, else its catalogue target."""
        return STORE_COPIES if service.name in self.replicated else service.target_replicas

    def workers(self, kind: Kind) -> int:
        return self.counts[("workers", kind)]

    def assigned(self, service: str, on: Kind | None = None) -> int:
        key = ("assigned", service) if on is None else ("assigned", service, on)
        return self.counts[key]

    def serving(self, service: str, on: Kind | None = None) -> int:
        key = ("serving", service) if on is None else ("serving", service, on)
        return self.counts[key]
