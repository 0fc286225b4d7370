"""Properties of placement over random pools: eligibility, coverage, convergence, determinism."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from placement_harness import FIXTURE_NAMES, Harness, machine

from rma.catalog import ENGINE_NAMES, REPLICATED, SERVICES, Kind
from rma.placement import Pool, WorkerState, check, desire

# Rounds of heartbeats a pool may need to settle: register, hand over stand-ins, shed.
MAX_ROUNDS = 6
PROFILE = settings(max_examples=60, deadline=None)
GPU_MEMORY = [None, 2048, 4096, 8192, 16384, 24576, 81920]
RAM = [None, 1024, 4096, 8192, 32768]


@st.composite
def workers(draw: st.DrawFn, worker_id: str) -> WorkerState:
    """Half named fixtures (realistic machines), half random hardware and engine lists."""
    failed = draw(st.frozensets(st.sampled_from([s.name for s in SERVICES]), max_size=2))
    if draw(st.booleans()):
        return machine(draw(st.sampled_from(FIXTURE_NAMES)), worker_id, failed=failed)
    kind = draw(st.sampled_from(list(Kind)))
    has_gpu = kind == Kind.GPU and draw(st.booleans())
    engines = draw(st.none() | st.frozensets(st.sampled_from(sorted(ENGINE_NAMES))))
    return WorkerState(
        worker_id=worker_id,
        kind=kind,
        has_gpu=has_gpu,
        gpu_memory_mb=draw(st.sampled_from(GPU_MEMORY)) if has_gpu else None,
        ram_mb=draw(st.sampled_from(RAM)),
        engines=engines,
        failed=failed,
    )


@dataclass(frozen=True)
class Event:
    action: str  # "join", "down" or "up"
    worker: WorkerState | None = None
    index: int = 0


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    events = []
    for step in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["join", "join", "down", "up"])) if step else "join"
        worker = draw(workers(f"w{step}")) if action == "join" else None
        events.append(Event(action, worker, draw(st.integers(0, 7))))
    return events


def apply(harness: Harness, event: Event) -> None:
    if event.worker is not None:
        harness.join(event.worker, settle=False)
    else:
        ids = list(harness.workers)
        worker_id = ids[event.index % len(ids)]
        (harness.down if event.action == "down" else harness.up)(worker_id)
    harness.settle(MAX_ROUNDS)


def fillable_gaps(harness: Harness) -> set[str]:
    """Uncovered services that some healthy worker could run beside what it runs now."""
    pool = harness.pool()
    return {
        service.name
        for service in SERVICES
        if service.name not in harness.covered()
        for worker in harness.workers.values()
        if worker.healthy and check(service, worker, pool.without(worker), worker.assigned).ok
    }


def assert_settled_pool_is_sound(harness: Harness) -> None:
    pool = harness.pool()
    for worker in harness.workers.values():
        if not worker.healthy:
            continue
        others = pool.without(worker)
        for name in worker.assigned:
            rest = [n for n in worker.assigned if n != name]
            verdict = check(next(s for s in SERVICES if s.name == name), worker, others, rest)
            assert verdict.ok, f"{worker.worker_id} runs {name}: {verdict.reason}"
    assert not fillable_gaps(harness)
    for service in SERVICES:
        if service.stateful:
            copies = pool.target(service) if service.name in harness.replicated else 1
            assert len(harness.replicas(service.name)) <= copies, f"too many copies of {service.name}"


@PROFILE
@given(histories(), st.booleans())
def test_settled_pools_are_eligible_filled_and_converge(history: list[Event], shared_store: bool) -> None:
    harness = Harness(replicated=REPLICATED if shared_store else frozenset())
    for event in history:
        before = harness.covered()
        apply(harness, event)  # settle() fails the test if no fixed point within MAX_ROUNDS
        if event.action == "join":
            assert before <= harness.covered(), "a join lowered coverage"
        assert_settled_pool_is_sound(harness)


@PROFILE
@given(histories())
def test_placement_is_deterministic(history: list[Event]) -> None:
    first, second = Harness(), Harness()
    for event in history:
        apply(first, event)
        apply(second, event)
    assert first.plans == second.plans
    pool = first.pool()
    for worker in first.workers.values():
        assert desire(worker, pool) == desire(worker, pool)
        assert Pool.of(reversed(list(first.workers.values()))).counts == pool.counts
