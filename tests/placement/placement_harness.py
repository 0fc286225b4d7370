"""Named hardware fixtures and a scheduler harness that records every plan (Nomad style).

The harness stands in for the coordinator: it keeps each worker's view, calls `desire` on a
heartbeat, applies the plan and, unless told otherwise, lets assigned services serve at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rma.catalog import BY_NAME, Kind
from rma.placement import Plan, Pool, WorkerState, desire

FIXTURES = Path(__file__).parent.parent / "fixtures" / "workers"
FIXTURE_NAMES = tuple(sorted(p.stem for p in FIXTURES.glob("*.json")))


def capabilities(name: str) -> dict[str, Any]:
    """The fixture's raw capabilities, shaped like the register request's `capabilities`."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def machine(name: str, worker_id: str | None = None, **changes: Any) -> WorkerState:
    """A `WorkerState` for the named hardware fixture; `changes` override any field."""
    caps = capabilities(name)
    gpu_memory = caps.get("gpu_memory_mb")
    if gpu_memory is None and caps.get("gpus"):
        gpu_memory = sum(gpu["memory_mb"] for gpu in caps["gpus"])
    engines = caps.get("engines")
    worker = WorkerState(
        worker_id=worker_id or name,
        kind=Kind(caps["worker_type"]),
        has_gpu=caps.get("has_gpu", False),
        gpu_memory_mb=gpu_memory,
        ram_mb=caps.get("ram_mb"),
        engines=None if engines is None else frozenset(engines),
    )
    return replace(worker, **changes)


class Harness:
    """A pool of workers driven by heartbeats until nothing changes."""

    def __init__(self, workers: Iterable[WorkerState] = (), replicated: frozenset[str] = frozenset()) -> None:
        self.replicated = replicated  # the stores replicated on this pool (postgres on a shared store)
        self.workers: dict[str, WorkerState] = {}
        self.plans: list[Plan] = []
        for worker in workers:
            self.workers[worker.worker_id] = worker

    def pool(self) -> Pool:
        return Pool(Pool.of(self.workers.values()).counts, replicated=self.replicated)

    def beat(self, worker_id: str, *, serve: bool = True) -> Plan:
        """One heartbeat: the worker gets its plan and runs it; new services serve if `serve`."""
        worker = self.workers[worker_id]
        plan = desire(worker, self.pool())
        self.plans.append(plan)
        if not worker.healthy:
            return plan
        services = frozenset(plan.services)
        serving = services - worker.failed if serve else worker.serving & services
        stateful = {name for name in serving if BY_NAME[name].stateful}
        self.workers[worker_id] = replace(
            worker, assigned=plan.services, serving=serving, holds_data=worker.holds_data | stateful
        )
        return plan

    def join(self, worker: WorkerState, *, settle: bool = True) -> Plan:
        """A worker registers (its first plan) and, by default, the pool then settles."""
        self.workers[worker.worker_id] = worker
        plan = self.beat(worker.worker_id)
        if settle:
            self.settle()
        return plan

    def down(self, worker_id: str) -> None:
        """The coordinator's health timer marks the worker down: its services become gaps."""
        self.workers[worker_id] = replace(self.workers[worker_id], healthy=False, serving=frozenset())

    def up(self, worker_id: str) -> None:
        """The worker comes back, freshly started: it runs nothing yet but keeps its data."""
        self.workers[worker_id] = replace(self.workers[worker_id], healthy=True, assigned=())

    def away_and_back(self, worker_id: str) -> None:
        """The worker goes down, the pool settles without it, and it comes back (with its data)."""
        self.down(worker_id)
        self.settle()
        self.up(worker_id)
        self.settle()

    def round(self, *, serve: bool = True) -> bool:
        """Every worker beats once, in join order; True when some worker's state changed."""
        changed = False
        for worker_id, worker in list(self.workers.items()):
            if worker.healthy:
                self.beat(worker_id, serve=serve)
                changed |= self.workers[worker_id] != worker
        return changed

    def settle(self, max_rounds: int = 10) -> int:
        """Beat until a full round changes nothing; the number of rounds it took."""
        for rounds in range(1, max_rounds + 1):
            if not self.round():
                return rounds
        raise AssertionError(f"no fixed point after {max_rounds} rounds: {self.assignments()}")

    def services(self, worker_id: str) -> set[str]:
        return set(self.workers[worker_id].assigned)

    def replicas(self, service: str) -> list[str]:
        """Healthy workers assigned `service`."""
        return [w.worker_id for w in self.workers.values() if w.healthy and service in w.assigned]

    def covered(self) -> set[str]:
        return {name for w in self.workers.values() if w.healthy for name in w.assigned}

    def assignments(self) -> dict[str, tuple[str, ...]]:
        return {w.worker_id: w.assigned for w in self.workers.values() if w.healthy}
