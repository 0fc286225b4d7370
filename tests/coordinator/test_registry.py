"""The registry with a hand-driven clock: health timers, self-healing, persistence, placement on every beat."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rma.coordinator.registry import Registry
from rma.coordinator.sqlite_store import SqliteStore
from rma.protocol import Conflict, HeartbeatRequest, NotFound, RegisterRequest, ServiceStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: Clock, interval: float = 1.0) -> Registry:
    return Registry(SqliteStore(tmp_path / "registry.sqlite3"), interval, grace_intervals=3, failure_cooldown=60,
                    clock=clock)


def join(registry: Registry, worker_id: str, kind: str, engines: list[str] | None = None,
         **caps: object) -> str:
    request = RegisterRequest.model_validate(
        {"worker_id": worker_id, "capabilities": {"worker_type": kind, "engines": engines, **caps}})
    _, token = registry.register(request, "127.0.0.1", None)
    return token


def serve_all(registry: Registry, worker_id: str, **states: str) -> tuple[str, ...]:
    """One heartbeat reporting every assigned service healthy (or the given states); returns the new assignment."""
    record = registry.get(worker_id)
    status = {s: {"state": states.get(s.replace("-", "_"), "healthy")} for s in record.assigned}
    registry.heartbeat(HeartbeatRequest.model_validate({"worker_id": worker_id, "services_status": status}))
    return registry.get(worker_id).assigned


def test_silent_worker_goes_down_after_grace_and_survivor_takes_its_gap(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    join(registry, "s1", "storage", ["redis-server"])
    join(registry, "s2", "storage", ["redis-server"])
    assert registry.get("s1").assigned == ("redis",)
    assert serve_all(registry, "s2") == ()  # a store is not replicated onto a second worker
    serve_all(registry, "s1")

    clock.now += 2.9
    serve_all(registry, "s2")
    assert registry.sweep() == []  # s1 is silent for 2.9 s: inside the 3-interval grace
    clock.now += 0.2
    assert registry.sweep() == ["s1"]
    assert registry.pool().serving("redis") == 0
    # The survivor takes the gap on its very next beat.
    assert serve_all(registry, "s2") == ("redis",)
    kinds = [e.kind for e in registry.events]
    assert "down" in kinds and kinds[-1] == "assigned"


def test_returning_store_holder_gets_its_data_back_and_keeps_it(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    join(registry, "s1", "storage", ["redis-server"])
    serve_all(registry, "s1")
    join(registry, "s2", "storage", ["redis-server"])
    clock.now += 10
    serve_all(registry, "s2")
    registry.sweep()
    assert serve_all(registry, "s2") == ("redis",)
    # s1 comes back (its agent restarted with the same id and data dir): it gets its store back,
    # and s2's store is not moved off a healthy worker.
    assert serve_all(registry, "s1") == ("redis",)
    assert serve_all(registry, "s2") == ("redis",)


def test_crash_looping_service_is_placed_elsewhere(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    join(registry, "c1", "cpu", ["spacy"])
    join(registry, "c2", "cpu", ["spacy"])
    assert registry.get("c1").assigned == ("ner-extraction",)
    serve_all(registry, "c2")
    assert registry.get("c2").assigned == ("ner-extraction",)  # redundancy: target is 2 replicas
    registry.heartbeat(HeartbeatRequest(worker_id="c1", services_status={
        "ner-extraction": ServiceStatus(state="failed", message="exit 1 five times")}))
    assert registry.get("c1").assigned == ()
    assert any(e.kind == "service-failed" for e in registry.events)
    clock.now += 61  # after the cooldown the worker may try again
    serve_all(registry, "c2")
    registry.heartbeat(HeartbeatRequest(worker_id="c1"))
    assert registry.get("c1").assigned == ("ner-extraction",)


def test_heartbeats_are_flushed_in_batches_not_per_beat(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    for i in range(3):
        join(registry, f"c{i}", "cpu", ["spacy"])
    clock.now += 0.5
    for i in range(3):
        registry.heartbeat(HeartbeatRequest(worker_id=f"c{i}"))
    assert registry.flush() == 0  # registration wrote the time; nothing new enough to write yet
    clock.now += 30
    for _ in range(5):
        for i in range(3):
            registry.heartbeat(HeartbeatRequest(worker_id=f"c{i}"))
    assert {w.last_seen for w in registry.store.load()} == {1_000.0}  # nothing written by the beats themselves
    assert registry.flush() == 3
    assert {w.last_seen for w in registry.store.load()} == {1_030.5}
    assert registry.flush() == 0


def test_restart_brings_back_workers_that_were_down_as_down(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    join(registry, "gone", "storage", ["redis-server"])
    join(registry, "alive", "storage", ["redis-server"])
    for _ in range(48):  # "alive" beats for 2 minutes; "gone" died at the start
        clock.now += 2.5
        serve_all(registry, "alive")
        registry.sweep()
        registry.flush()
    assert registry.get("alive").assigned == ("redis",)
    registry.store.close()

    clock.now += 60
    restarted = make(tmp_path, clock)
    assert restarted.get("alive").healthy and not restarted.get("gone").healthy
    assert restarted.pool().assigned("redis") == 1


def test_restart_restores_workers_tokens_and_assignments_without_churn(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    token = join(registry, "c1", "cpu", ["spacy", "pdf-docx"])
    serve_all(registry, "c1")
    before = registry.get("c1").assigned
    registry.store.close()

    clock.now += 30  # the coordinator was down for 10 grace periods
    restarted = make(tmp_path, clock)
    record = restarted.get("c1")
    assert record.assigned == before and record.healthy
    assert restarted.token_matches("c1", token)
    assert restarted.sweep() == []  # a fresh grace: workers are not declared dead for our own outage
    assert serve_all(restarted, "c1") == before


def test_unknown_worker_and_id_conflicts(tmp_path: Path) -> None:
    registry = make(tmp_path, Clock())
    with pytest.raises(NotFound):
        registry.heartbeat(HeartbeatRequest(worker_id="ghost"))
    token = join(registry, "c1", "cpu")
    with pytest.raises(Conflict):
        registry.register(RegisterRequest(worker_id="c1"), "127.0.0.1", "not-the-token")
    record, _ = registry.register(RegisterRequest(worker_id="c1"), "127.0.0.1", token)
    assert record.worker_id == "c1"
    assert len(registry.workers) == 1


def test_generated_ids_are_unique(tmp_path: Path) -> None:
    registry = make(tmp_path, Clock())
    ids = {registry.register(RegisterRequest(), "127.0.0.1", None)[0].worker_id for _ in range(20)}
    assert len(ids) == 20


def test_counts_match_a_full_recount_after_many_changes(tmp_path: Path) -> None:
    """The incrementally kept pool counts never drift from a recount over all workers."""
    from rma.placement import Pool

    clock = Clock()
    registry = make(tmp_path, clock)
    for i in range(6):
        join(registry, f"w{i}", ["cpu", "storage", "edge"][i % 3],
             ["spacy", "pdf-docx", "redis-server", "rma-edge-proxy", "rma-coordinator"])
    for step in range(30):
        clock.now += 0.7
        for i in range(6):
            if (i + step) % 4:
                serve_all(registry, f"w{i}")
        registry.sweep()
        recount = Pool.of(registry.views())
        assert +registry.counts == +recount.counts


def test_dropped_watch_means_down_after_one_interval_and_survivors_hear_at_once(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    pushed: list[tuple[str, tuple[str, ...]]] = []
    registry.listeners.append(lambda record: pushed.append((record.worker_id, record.assigned)))
    join(registry, "s1", "storage", ["redis-server"])
    join(registry, "s2", "storage", ["redis-server"])
    serve_all(registry, "s1")
    serve_all(registry, "s2")
    registry.watch_opened("s1")
    pushed.clear()

    registry.watch_lost("s1")  # its process died: the kernel closed the stream
    clock.now += 0.9
    assert registry.sweep() == []
    clock.now += 0.2
    assert registry.sweep() == ["s1"]  # one interval after the drop, not the 3-interval grace
    # s2 was replanned by the sweep itself and its new assignment pushed, before its next beat.
    assert ("s2", ("redis",)) in pushed
    assert registry.get("s2").assigned == ("redis",)


def test_a_heartbeat_or_reconnect_clears_suspicion(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    join(registry, "c1", "cpu", ["spacy"])
    registry.watch_lost("c1")
    clock.now += 0.5
    serve_all(registry, "c1")  # a network blip: the worker is alive and still beating
    clock.now += 1.0
    assert registry.sweep() == []
    registry.watch_lost("c1")
    registry.watch_opened("c1")
    clock.now += 1.5
    serve_all(registry, "c1")
    assert registry.sweep() == []


def test_healing_is_bounded_when_nobody_can_take_the_orphans(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    join(registry, "s1", "storage", ["redis-server"])
    for i in range(200):
        join(registry, f"c{i}", "cpu", ["spacy"])
    serve_all(registry, "s1")
    clock.now += 3.5
    for i in range(200):
        serve_all(registry, f"c{i}")
    started = time.perf_counter()
    assert registry.sweep() == ["s1"]
    assert time.perf_counter() - started < 1.0  # no CPU worker can run redis: cheap filter, no replans
    assert registry.pool().assigned("redis") == 0


def test_the_routing_table_says_where_each_replica_is_checked_by_its_engine(tmp_path: Path) -> None:
    """SeaweedFS in the minio slot refuses the unsigned /minio/health/live: routers check its /healthz."""
    registry = make(tmp_path, Clock())
    join(registry, "s1", "storage", ["seaweedfs", "redis-server"], has_storage=True, ram_mb=8000, disk_free_mb=50_000)
    assert "minio" in serve_all(registry, "s1")
    table = registry.routing_table()
    assert [r["health_path"] for r in table["minio"]] == ["/healthz"]
