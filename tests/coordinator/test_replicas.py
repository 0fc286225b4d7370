"""Two coordinators' registries on one real etcd cluster: each sees the other's workers, a worker may beat to
either, and a gap is never filled twice however close together they plan. Clocks are driven by hand."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from etcd_cluster import EtcdCluster, etcd_cluster
from rma.coordinator.app import create_app
from rma.coordinator.etcd import Etcd, EtcdError
from rma.coordinator.etcd_store import EtcdStore
from rma.coordinator.registry import REMOTE_GRACE_S, Registry
from rma.coordinator.state import CoordinatorSettings
from rma.protocol import HeartbeatRequest, RegisterRequest
from rma.services.base import Context
from rma.services.coordinator import Coordinator

PREFIXES = itertools.count()
INTERVAL = 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Replicas:
    """Coordinators `a` and `b` on one pool's keys; `catch_up()` runs their watches until each has heard all."""

    def __init__(self, cluster: EtcdCluster) -> None:
        prefix = f"/replicas-{next(PREFIXES)}/"
        self.clock = Clock()
        self.stores = {name: EtcdStore(Etcd(cluster.endpoints), prefix, replica=name) for name in "ab"}
        self.a, self.b = (Registry(self.stores[name], INTERVAL, clock=self.clock) for name in "ab")
        self.etcd = Etcd(cluster.endpoints)

    def catch_up(self) -> None:
        for store in self.stores.values():
            store.behind.flush()  # what each writes behind, due within milliseconds
        latest = self.etcd.snapshot("/")[1]

        async def follow(store: EtcdStore, registry: Registry) -> None:
            async for batch in store.changes():
                for change in batch:
                    registry.apply(change)
                registry.caught_up()

        async def run() -> None:
            tasks = [asyncio.create_task(follow(self.stores[name], registry))
                     for name, registry in (("a", self.a), ("b", self.b))]
            try:
                async with asyncio.timeout(5):
                    while any(store.revision < latest for store in self.stores.values()):
                        await asyncio.sleep(0.01)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run(run())

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.etcd.close()


@pytest.fixture
def replicas(cluster: EtcdCluster) -> Iterator[Replicas]:
    made = Replicas(cluster)
    yield made
    made.close()


def join(registry: Registry, worker_id: str, kind: str, engines: list[str]) -> str:
    request = RegisterRequest.model_validate({"worker_id": worker_id, "capabilities": {
        "worker_type": kind, "engines": engines}})
    return registry.register(request, "127.0.0.1", None)[1]


def beat(registry: Registry, worker_id: str, state: str = "healthy") -> tuple[str, ...]:
    assigned = registry.get(worker_id).assigned
    registry.heartbeat(HeartbeatRequest.model_validate({"worker_id": worker_id, "services_status": {
        name: {"state": state} for name in assigned}}))
    return registry.get(worker_id).assigned


def replicas_of(registry: Registry, service: str) -> list[str]:
    return [r["worker_id"] for r in registry.routing_table()[service]]


def test_each_coordinator_routes_to_the_workers_that_beat_to_the_other(replicas: Replicas) -> None:
    join(replicas.a, "s1", "storage", ["redis-server"])
    beat(replicas.a, "s1")
    replicas.catch_up()  # each watch hears the other's writes within milliseconds
    join(replicas.b, "c1", "cpu", ["spacy"])
    beat(replicas.b, "c1")
    replicas.catch_up()
    for registry in (replicas.a, replicas.b):
        assert replicas_of(registry, "redis") == ["s1"] and replicas_of(registry, "ner-extraction") == ["c1"]
        assert registry.pool().serving("redis") == 1 and len(registry.workers) == 2
    assert not replicas.b.get("s1").held_here and replicas.a.get("s1").held_here


def test_a_gap_is_never_filled_twice_by_two_coordinators_planning_at_once(replicas: Replicas) -> None:
    # Neither has heard of the other's worker when it places: both would give it redis (one replica, stateful).
    join(replicas.a, "s1", "storage", ["redis-server"])
    join(replicas.b, "s2", "storage", ["redis-server"])
    assigned = {w: r.get(w).assigned for w, r in (("s1", replicas.a), ("s2", replicas.b))}
    assert assigned == {"s1": ("redis",), "s2": ()}, assigned  # b lost the race: s2 is kept without it
    assert replicas.b.placement_races == 1
    held = [kv.key for kv in replicas.etcd.get_prefix(replicas.stores["a"].prefix + "assigned/")
            if b"redis" in kv.value]
    assert held == [replicas.stores["a"].prefix + "assigned/s1"]
    replicas.catch_up()
    assert beat(replicas.b, "s2") == ()  # planned again with the news: redis is s1's
    assert replicas.b.placement_races == 1


def test_a_worker_moves_to_the_other_coordinator_without_registering_again(replicas: Replicas) -> None:
    join(replicas.a, "s1", "storage", ["redis-server"])
    beat(replicas.a, "s1")
    replicas.catch_up()
    # a goes away; s1 beats to b with the token a gave it, and keeps its redis.
    replicas.clock.now += 2 * INTERVAL
    assert beat(replicas.b, "s1") == ("redis",)
    assert replicas.b.get("s1").held_here and replicas_of(replicas.b, "redis") == ["s1"]
    replicas.catch_up()
    assert not replicas.a.get("s1").held_here  # had a come back, it would leave s1 to b
    replicas.clock.now += 10 * INTERVAL  # past a's own grace for it: a judges it no more
    assert replicas.a.sweep() == [] and replicas_of(replicas.a, "redis") == ["s1"]


def test_a_worker_whose_coordinator_went_away_with_it_is_found_down_by_the_other(replicas: Replicas) -> None:
    join(replicas.a, "s1", "storage", ["redis-server"])
    beat(replicas.a, "s1")
    replicas.catch_up()
    replicas.clock.now += 3 * INTERVAL + REMOTE_GRACE_S - 1
    assert replicas.b.sweep() == []
    replicas.clock.now += 2
    assert replicas.b.sweep() == ["s1"] and replicas_of(replicas.b, "redis") == []


def test_while_etcd_is_unreachable_nothing_is_half_kept_and_the_api_says_503(tmp_path: Path) -> None:
    with etcd_cluster(tmp_path / "etcd", 1) as alone:
        store = EtcdStore(Etcd(alone.endpoints), "/unreachable/")
        registry = Registry(store, INTERVAL, clock=Clock())
        token = join(registry, "s1", "storage", ["redis-server"])
        settings = CoordinatorSettings(data_dir=tmp_path, heartbeat_interval=1.0, store_url=alone.url)
        with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as api:
            alone.stop_all()
            with pytest.raises(EtcdError):
                join(registry, "s2", "storage", ["redis-server"])
            assert set(registry.workers) == {"s1"} and registry.pool().assigned("redis") == 1
            with pytest.raises(EtcdError):  # s1 re-registers: it keeps its old record, token and redis
                registry.register(RegisterRequest.model_validate({"worker_id": "s1"}), "127.0.0.1", token)
            assert registry.get("s1").assigned == ("redis",) and registry.token_matches("s1", token)
            answer = api.post("/api/worker/register", json={"worker_id": "c1"})
            assert answer.status_code == 503 and "etcd" in answer.json()["error"], answer.text
            assert api.get("/health").status_code == 200
        store.behind.close()


def test_an_edge_worker_on_a_shared_store_runs_a_replica_that_every_answer_names(
        cluster: EtcdCluster, tmp_path: Path) -> None:
    url = cluster.url
    settings = CoordinatorSettings(data_dir=tmp_path, heartbeat_interval=1.0, store_url=url)
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as api:
        edge = api.post("/api/worker/register", json={"worker_id": "edge-1", "advertise_host": "127.0.0.1",
                                                        "capabilities": {"worker_type": "edge",
                                                                         "engines": ["rma-coordinator"]}}).json()
        [config] = [c for c in edge["service_configs"] if c["name"] == "coordinator"]
        assert config["env"]["RMA_STORE_URL"] == url and edge["coordinators"] == []
        ctx = Context("127.0.0.1", 8080, tmp_path / "replica", ("http://127.0.0.1:8080",), 1.0,
                      {**config["env"], "RMA_JOIN_TOKEN": "j"})
        launch = Coordinator().launch(ctx)
        assert url not in " ".join(launch.argv)  # an address only, but in the environment all the same
        assert Coordinator().environment(ctx, launch, platform={})["RMA_STORE_URL"] == url
        answer = api.post("/api/worker/heartbeat", headers={"Authorization": f"Bearer {edge['worker_token']}"},
                          json={"worker_id": "edge-1", "services_status": {"coordinator": {"state": "healthy"}}})
        assert answer.json()["coordinators"] == ["http://127.0.0.1:8080"]
        api.delete("/api/worker/unregister/edge-1", headers={"Authorization": f"Bearer {edge['worker_token']}"})
