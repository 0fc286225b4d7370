"""What one registration, beat or death costs does not grow with the pool: counted, not timed.

The seed's agent sends no engine list, so its workers are trusted to serve what they are
assigned and a store may have as many serving replicas as storage workers ever held it.
"""

from __future__ import annotations

import json
import random
from _collections_abc import dict_items, dict_keys, dict_values
from collections.abc import Iterator
from pathlib import Path

from rma.coordinator.answers import Answers
from rma.coordinator.record import WorkerRecord
from rma.coordinator.registry import HEAL_LOOKED_AT, Registry
from rma.coordinator.secrets import STORE_VARIABLES, NamedStores
from rma.coordinator.sqlite_store import SqliteStore
from rma.coordinator.store import StoredWorker
from rma.protocol import Capabilities, HeartbeatRequest, RegisterRequest

STORES = tuple(STORE_VARIABLES)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class CountingSet(set[str]):
    """A replica set that counts the members anyone reads by iterating it."""

    def __init__(self, members: set[str]) -> None:
        super().__init__(members)
        self.read = 0

    def __iter__(self) -> Iterator[str]:
        for member in super().__iter__():
            self.read += 1
            yield member


class ScanCountingDict(dict[str, WorkerRecord]):
    """The registry's workers, counting every walk over the whole pool."""

    scans = 0

    def __iter__(self) -> Iterator[str]:
        self.scans += 1
        return super().__iter__()

    def keys(self) -> dict_keys[str, WorkerRecord]:
        self.scans += 1
        return super().keys()

    def values(self) -> dict_values[str, WorkerRecord]:
        self.scans += 1
        return super().values()

    def items(self) -> dict_items[str, WorkerRecord]:
        self.scans += 1
        return super().items()


def restored(tmp_path: Path, clock: Clock, holders: int) -> Registry:
    """A coordinator restarted over `holders` seed-shape storage workers that each run every store."""
    store = SqliteStore(tmp_path / "registry.sqlite3")
    caps = Capabilities(worker_type="storage", ram_mb=16384).model_dump_json()
    for i in range(holders):
        store.save(StoredWorker(f"h{i:04d}", "unused", "storage", f"10.0.{i // 250}.{i % 250 + 1}", None, caps,
                                STORES, frozenset(STORES), clock.now, clock.now))
    store.close()
    return Registry(SqliteStore(tmp_path / "registry.sqlite3"), 1.0, grace_intervals=3, failure_cooldown=60,
                    clock=clock)


def seed_join(registry: Registry, worker_id: str, kind: str) -> WorkerRecord:
    """A registration as the seed's agent sends it: no engine list."""
    caps: dict[str, object] = {"worker_type": kind, "ram_mb": 16384}
    if kind == "gpu":
        caps |= {"has_gpu": True, "gpus": [{"name": "NVIDIA L4", "memory_mb": 24576}]}
    request = RegisterRequest.model_validate(
        {"worker_id": worker_id, "tunnel_url": None, "vpn_ip": "10.9.0.1", "capabilities": caps})
    record, _ = registry.register(request, "127.0.0.1", None)
    return record


def seed_beat(registry: Registry, worker_id: str, load: float = 0.3) -> WorkerRecord:
    """A beat as the seed's agent sends it: its services as plain strings."""
    assigned = registry.get(worker_id).assigned
    return registry.heartbeat(HeartbeatRequest.model_validate_json(json.dumps({
        "worker_id": worker_id, "status": "healthy", "current_load": load,
        "services_status": dict.fromkeys(assigned, "running")})))


def test_registrations_and_beats_read_neither_the_pool_nor_a_stores_replicas(tmp_path: Path) -> None:
    holders, joined = 300, 40
    registry = restored(tmp_path, Clock(), holders)
    answers = Answers(registry, 1.0)
    assert len(registry.serving_index["redis"]) == holders
    replica_sets = {s: CountingSet(registry.serving_index[s]) for s in STORES}
    registry.serving_index.update(replica_sets)
    workers = registry.workers = ScanCountingDict(registry.workers)

    for i in range(joined):
        record = seed_join(registry, f"n{i:03d}", ["cpu", "storage", "edge", "gpu"][i % 4])
        answers.assignment(record)  # the registration's answer
        answers.encoded(seed_beat(registry, record.worker_id))

    assert registry.store_env()["REDIS_HOST"] == "10.0.0.1"
    # Each registration changed the pool, so the store addresses were rebuilt 40 times; reading
    # every replica each time would be 40 x 300 reads per store.
    assert all(s.read <= joined for s in replica_sets.values()), {n: s.read for n, s in replica_sets.items()}
    assert workers.scans == 0


def test_store_env_keeps_naming_a_replica_while_it_serves(tmp_path: Path) -> None:
    clock = Clock()
    registry = restored(tmp_path, clock, 3)  # h0000 at 10.0.0.1, h0001 at 10.0.0.2, h0002 at 10.0.0.3
    assert registry.store_env()["REDIS_HOST"] == "10.0.0.1"
    seed_beat(registry, "h0000", load=0.9)
    seed_beat(registry, "h0001", load=0.0)
    assert registry.store_env()["REDIS_HOST"] == "10.0.0.1"  # a lighter replica is no reason to move

    clock.now += 3.5  # h0000 goes silent; the others beat on
    seed_beat(registry, "h0001")
    seed_beat(registry, "h0002")
    assert registry.sweep() == ["h0000"]
    env = registry.store_env()
    assert env["REDIS_HOST"] == "10.0.0.2" and env["NEO4J_URI"] == "bolt://10.0.0.2:7687"

    seed_beat(registry, "h0000")  # back, and serving again: the named replica stays
    assert registry.store_env()["REDIS_HOST"] == "10.0.0.2"

    clock.now += 3.5
    seed_beat(registry, "h0002")
    registry.sweep()
    assert registry.store_env()["REDIS_HOST"] == "10.0.0.3"
    clock.now += 3.5
    registry.sweep()
    assert registry.store_env() == {}  # nobody serves a store: no address rather than a dead one


def test_named_store_matches_a_rescan_through_churn() -> None:
    """Against the plain rule (keep the named replica while it serves, else the lowest id serving)."""
    rng = random.Random(14)
    named = NamedStores()
    serving: set[str] = set()
    expected: str | None = None
    ids = [f"w{i:02d}" for i in range(12)]
    for _ in range(5_000):
        worker_id = rng.choice(ids)
        if worker_id in serving:
            serving.discard(worker_id)
        else:
            serving.add(worker_id)
            named.began_serving("redis", worker_id, serving)
        if rng.random() < 0.3:
            if expected not in serving:
                expected = min(serving, default=None)
            assert named.named("redis", serving) == expected


def test_healing_looks_at_a_bounded_part_of_the_pool(tmp_path: Path) -> None:
    """A store holder dies in a pool where the first HEAL_LOOKED_AT workers cannot take stores."""
    clock = Clock()
    registry = Registry(SqliteStore(tmp_path / "registry.sqlite3"), 1.0, grace_intervals=3, failure_cooldown=60,
                        clock=clock)
    seed_join(registry, "s-first", "storage")
    for i in range(HEAL_LOOKED_AT):
        seed_join(registry, f"c{i:04d}", ["cpu", "edge", "gpu"][i % 3])
    seed_join(registry, "s-late", "storage")
    assert registry.get("s-first").assigned == STORES and registry.get("s-late").assigned == ()
    clock.now += 3.5
    for worker_id in list(registry.workers)[1:]:
        seed_beat(registry, worker_id)

    assert registry.sweep() == ["s-first"]
    assert registry.get("s-late").assigned == ()  # past what a death looks at: left to its own beat
    assert seed_beat(registry, "s-late").assigned == STORES
