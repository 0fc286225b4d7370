"""A snapshotted store (chromadb) whose holder vanished waits for it a grace, then goes to a survivor, with a
hand-driven clock; and the snapshot age the gap report gives."""

from __future__ import annotations

from pathlib import Path

from coordinator.test_registry import Clock, join, serve_all
from rma.catalog import SNAPSHOTTED
from rma.coordinator.answers import Answers
from rma.coordinator.holder_grace import HolderGrace
from rma.coordinator.registry import Registry
from rma.coordinator.sqlite_store import SqliteStore
from rma.placement import gap_report
from rma.protocol import HeartbeatRequest
from rma.replication import SNAPSHOT_INTERVAL_VARIABLE, SNAPSHOT_KEY_VARIABLE, snapshot_key

GRACE_S = 30.0


def make(tmp_path: Path, clock: Clock) -> Registry:
    return Registry(SqliteStore(tmp_path / "registry.sqlite3"), 1.0, grace_intervals=3, failure_cooldown=60,
                    clock=clock, snapshotted=SNAPSHOTTED, restore_grace=GRACE_S)


def test_chromadb_and_neo4j_are_the_snapshotted_stores() -> None:
    assert {"chromadb", "neo4j"} == SNAPSHOTTED


def test_the_grace_waits_for_the_holder_and_ends_when_it_returns_or_runs_out() -> None:
    grace = HolderGrace(frozenset({"chromadb"}), GRACE_S)
    assert not grace.went("s9", ("redis",), 0.0)  # holds no snapshotted store: nothing to wait for
    assert grace.went("s1", ("chromadb", "redis"), 100.0)
    assert "s1" in grace.withheld(110.0)["chromadb"] and "10 of 30 s" in grace.withheld(110.0)["chromadb"]
    assert grace.expired(129.0) == {}
    assert not grace.returned("s2") and grace.returned("s1") and grace.withheld(130.0) == {}
    grace.went("s1", ("chromadb",), 200.0)
    assert grace.expired(230.0) == {"chromadb": "s1"} and grace.withheld(230.0) == {}


def holder_goes_silent(tmp_path: Path, clock: Clock) -> Registry:
    """Two storage workers; s1 holds chromadb, then goes silent past the heartbeat grace."""
    registry = make(tmp_path, clock)
    join(registry, "s1", "storage", ["chroma"])
    join(registry, "s2", "storage", ["chroma"])
    assert registry.get("s1").assigned == ("chromadb",)
    serve_all(registry, "s1")
    serve_all(registry, "s2")
    clock.now += 3.1
    serve_all(registry, "s2")
    assert registry.sweep() == ["s1"]
    return registry


def pass_time(registry: Registry, clock: Clock, seconds: float, *beating: str) -> None:
    """`seconds` go by, a second at a time, with a beat from each of `beating` and a sweep each second."""
    for _ in range(round(seconds)):
        clock.now += 1
        for worker_id in beating:
            serve_all(registry, worker_id)
        registry.sweep()


def test_a_vanished_chromadb_holder_is_waited_for_and_keeps_its_store_when_back_in_time(tmp_path: Path) -> None:
    clock = Clock()
    registry = holder_goes_silent(tmp_path, clock)
    assert serve_all(registry, "s2") == ()  # not placed elsewhere: its holder may return with every write
    [gap] = [g for g in gap_report(registry.views(), registry.pool()) if g.service == "chromadb"]
    assert gap.status == "critical" and "waiting for its holder s1 to return" in gap.reason
    pass_time(registry, clock, GRACE_S / 2, "s2")
    assert registry.get("s2").assigned == ()
    assert serve_all(registry, "s1") == ("chromadb",)  # back within the grace: its own store again
    pass_time(registry, clock, GRACE_S, "s1", "s2")
    assert registry.get("s2").assigned == () and registry.get("s1").assigned == ("chromadb",)


def test_after_the_grace_a_survivor_is_given_the_store_to_restore(tmp_path: Path) -> None:
    clock = Clock()
    registry = holder_goes_silent(tmp_path, clock)
    pass_time(registry, clock, GRACE_S - 1, "s2")
    assert registry.get("s2").assigned == ()
    clock.now += 1.5
    registry.sweep()  # the grace ran out: the survivor is replanned at once, not at its next beat
    assert registry.get("s2").assigned == ("chromadb",)
    assert any(e.kind == "restore" for e in registry.events)
    serve_all(registry, "s2")
    serve_all(registry, "s1")  # the old holder returns late: clients stay with the restored store
    assert registry.get("s1").assigned == ()  # its copy stays on its disk, serving no one beside the restored one
    assert registry.primary_of("chromadb") == "s2"
    assert [r["worker_id"] for r in registry.replicas("chromadb")] == ["s2"]


def test_the_newest_snapshot_any_worker_reported_is_the_stores(tmp_path: Path) -> None:
    clock = Clock()
    registry = make(tmp_path, clock)
    join(registry, "s1", "storage", ["chroma"])
    assert registry.snapshot_at("chromadb") is None
    registry.heartbeat(HeartbeatRequest.model_validate(
        {"worker_id": "s1", "services_status": {"chromadb": {"state": "healthy", "snapshot_at": 990.5}}}))
    assert registry.snapshot_at("chromadb") == 990.5


def test_only_the_snapshotted_stores_are_given_the_snapshot_key_and_it_is_not_s3s_secret(tmp_path: Path) -> None:
    registry = make(tmp_path, Clock())
    join(registry, "s1", "storage", ["chroma", "arcadedb", "redis-server"])
    serve_all(registry, "s1")
    answer = Answers(registry, 1.0, snapshot_interval=42).assignment(registry.get("s1"))
    envs = {config["name"]: config["env"] for config in answer["service_configs"]}
    s3_secret = registry.secrets.secret_for("minio")
    for store in SNAPSHOTTED:
        assert s3_secret and envs[store][SNAPSHOT_KEY_VARIABLE] == snapshot_key(s3_secret) != s3_secret
        assert envs[store][SNAPSHOT_INTERVAL_VARIABLE] == "42"
    others = [env for name, env in envs.items() if name not in SNAPSHOTTED]
    assert others and all(SNAPSHOT_KEY_VARIABLE not in env for env in others)
