"""Stores whose engine replicates them: a copy on each of two storage workers, never two on one, and data back
only into a missing copy."""

from __future__ import annotations

from collections.abc import Callable

from placement_harness import Harness

from rma.catalog import REPLICATED, SERVICES, Kind
from rma.placement import WorkerState, gap_report

Machine = Callable[..., WorkerState]
SINGLE_STORES = {s.name for s in SERVICES if s.kind == Kind.STORAGE} - REPLICATED


def test_postgres_redis_and_s3_are_the_replicated_stores() -> None:
    assert {"postgres", "redis", "minio"} == REPLICATED


def test_a_replicated_store_gets_a_copy_on_two_storage_workers_and_the_others_one(machine: Machine) -> None:
    harness = Harness(replicated=REPLICATED)
    for name in ("s1", "s2", "s3"):
        harness.join(machine("storage_full", name))
    assert len(harness.replicas("postgres")) == 2
    for store in SINGLE_STORES:
        assert len(harness.replicas(store)) == 1, store
    report = {g.service: g for g in gap_report(harness.workers.values(), harness.pool())}
    assert report["postgres"].status == "ok" and report["postgres"].target_replicas == 2


def test_without_replication_postgres_stays_one_database(machine: Machine) -> None:
    harness = Harness()
    for name in ("s1", "s2"):
        harness.join(machine("storage_full", name))
    assert len(harness.replicas("postgres")) == 1


def test_a_lone_copy_is_a_warning_and_a_third_worker_makes_the_missing_one(machine: Machine) -> None:
    harness = Harness(replicated=REPLICATED)
    harness.join(machine("storage_full", "s1"))
    harness.join(machine("storage_full", "s2"))
    holders = harness.replicas("postgres")
    harness.down(holders[0])
    harness.settle()
    report = {g.service: g for g in gap_report(harness.workers.values(), harness.pool())}
    assert report["postgres"].status == "warning" and report["postgres"].healthy_replicas == 1
    harness.join(machine("storage_full", "s3"))
    assert set(harness.replicas("postgres")) == {holders[1], "s3"}
    # The first holder returns with its data: two copies serve, so it never becomes a third (or a second primary).
    harness.up(holders[0])
    harness.settle()
    assert holders[0] not in harness.replicas("postgres")
    assert len(harness.replicas("postgres")) == 2


def test_a_returning_holder_takes_back_the_missing_copy(machine: Machine) -> None:
    harness = Harness(replicated=REPLICATED)
    harness.join(machine("storage_full", "s1"))
    harness.join(machine("storage_full", "s2"))
    harness.away_and_back("s2")
    assert set(harness.replicas("postgres")) == {"s1", "s2"}
    for store in SINGLE_STORES:  # a single store stays with the survivor that took it
        assert harness.replicas(store) == ["s1"], store
