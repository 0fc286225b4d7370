"""One suite, both registry stores: SQLite and a real three-member etcd cluster on loopback.

Each test gets a fresh store; `reopen()` is a second coordinator (or a restarted one) on the same
store. The etcd tests share one cluster, each under its own key prefix.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etcd_cluster import EtcdCluster
from rma.coordinator.etcd import Etcd
from rma.coordinator.etcd_store import EtcdStore
from rma.coordinator.registry import Registry
from rma.coordinator.sqlite_store import SqliteStore
from rma.coordinator.store import MeshNode, Revoked, Store, StoredWorker, open_store, store_location
from rma.protocol import HeartbeatRequest, RegisterRequest

PREFIXES = itertools.count()


@pytest.fixture(params=["sqlite", "etcd"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens another handle on this test's store: what a second coordinator on it would have."""
    opened: list[Store] = []
    if request.param == "sqlite":
        def make() -> Store:
            opened.append(SqliteStore(tmp_path / "registry.sqlite3"))
            return opened[-1]
    else:
        endpoints = request.getfixturevalue("cluster").endpoints
        prefix = f"/test-{next(PREFIXES)}/"

        def make() -> Store:
            opened.append(EtcdStore(Etcd(endpoints), prefix))
            return opened[-1]
    yield make
    for store in opened:
        store.close()


WORKER = StoredWorker("cpu-1", "hash", "cpu", "198.18.0.5", None, '{"worker_type": "cpu"}', ("ner-extraction",),
                      frozenset({"redis"}), 1000.0, 1000.0)


def test_a_worker_is_kept_with_its_assignment_and_heartbeat_time(reopen: Callable[[], Store]) -> None:
    store = reopen()
    store.save(WORKER)
    store.save(StoredWorker("s-2", "h2", "storage", "198.18.0.6", "https://t", "{}", (), frozenset(), 5.0, 6.0))
    store.save_assignment("cpu-1", ("ner-extraction", "notes-coa"), {"redis", "postgres"})
    store.touch_many([(1234.5, "cpu-1"), (7.0, "s-2")])
    store.close()  # heartbeat times and states may be written behind: they are all written by close
    store = reopen()
    loaded = {w.worker_id: w for w in reopen().load()}
    assert loaded["cpu-1"] == StoredWorker("cpu-1", "hash", "cpu", "198.18.0.5", None, '{"worker_type": "cpu"}',
                                           ("ner-extraction", "notes-coa"), frozenset({"redis", "postgres"}),
                                           1000.0, 1234.5)
    assert loaded["s-2"].tunnel_url == "https://t" and loaded["s-2"].last_seen == 7.0
    store.save_state("cpu-1", True, {"ner-extraction": 8108, "notes-coa": 18100})
    store.close()
    store = reopen()
    assert {w.worker_id: w.serving for w in reopen().load()}["cpu-1"] == {"ner-extraction": 8108, "notes-coa": 18100}
    store.delete("s-2")
    assert [w.worker_id for w in reopen().load()] == ["cpu-1"]


def test_many_heartbeat_times_are_written_in_batches(reopen: Callable[[], Store]) -> None:
    store = reopen()
    workers = [StoredWorker(f"w{i:04d}", "h", "cpu", "198.18.0.5", None, "{}", (), frozenset(), 1.0, 1.0)
               for i in range(300)]  # past one etcd transaction's 128 operations
    for worker in workers:
        store.save(worker)
    store.touch_many([(2.0 + i, w.worker_id) for i, w in enumerate(workers)])
    store.close()
    assert {w.worker_id: w.last_seen for w in reopen().load()} == {
        w.worker_id: 2.0 + i for i, w in enumerate(workers)}


def test_a_stores_secret_is_made_once_whoever_claims_it_first(reopen: Callable[[], Store]) -> None:
    assert reopen().claim_secret("redis", "first") == "first"
    assert reopen().claim_secret("redis", "second") == "first"
    # Four coordinators claiming postgres's at once: one secret, the same for all.
    stores = [reopen() for _ in range(4)]
    held: list[str] = []
    claims = [threading.Thread(target=lambda s=store, n=n: held.append(s.claim_secret("postgres", f"made-{n}")))
              for n, store in enumerate(stores)]
    for claim in claims:
        claim.start()
    for claim in claims:
        claim.join(10)
    assert len(held) == 4 and len(set(held)) == 1, held
    assert reopen().load_secrets() == {"redis": "first", "postgres": held[0]}


def test_the_mesh_places_issued_certificates_and_revocations_are_kept(reopen: Callable[[], Store]) -> None:
    store = reopen()
    node = MeshNode("cpu-1", "198.19.0.2/16", "KEY", "198.18.0.5", "cpu")
    store.save_mesh_node(node)
    store.save_mesh_node(MeshNode("edge-1", "198.19.0.1/16", "KEY2", "198.18.0.10", "edge"))
    store.save_issued("f-old", "cpu-1", expires=100.0, now=50.0)
    store.save_issued("f-edge", "edge-1", expires=1000.0, now=60.0)
    store.save_issued("f-new", "cpu-1", expires=2000.0, now=150.0)  # renewed after the old one expired
    assert store.issued("cpu-1", now=0.0) == ["f-new"] and store.issued("edge-1", now=0.0) == ["f-edge"]
    store.revoke_mesh_node("cpu-1", [Revoked("f-new", "cpu-1", "KEY", 160.0)])
    nodes, revoked = reopen().load_mesh()
    assert [n.worker_id for n in nodes] == ["edge-1"] and revoked == [Revoked("f-new", "cpu-1", "KEY", 160.0)]
    assert store.issued("cpu-1", now=0.0) == []


def test_a_registry_restarted_on_the_store_has_the_pool_as_it_was(reopen: Callable[[], Store]) -> None:
    clock = lambda: 1000.0  # noqa: E731 - one instant: nobody's grace runs out
    first = Registry(reopen(), 1.0, clock=clock)
    request = RegisterRequest.model_validate({"worker_id": "s1", "capabilities": {
        "worker_type": "storage", "engines": ["redis-server"]}})
    first.register(request, "127.0.0.1", None)
    first.heartbeat(HeartbeatRequest.model_validate({"worker_id": "s1", "services_status": {
        "redis": {"state": "healthy"}}}))
    secret = first.secrets.secret_for("redis")
    first.flush()
    first.store.close()  # as a coordinator stopping does: what it wrote behind is written
    again = Registry(reopen(), 1.0, clock=clock)
    assert again.get("s1").assigned == ("redis",) and again.get("s1").healthy
    assert again.secrets.secret_for("redis") == secret
    # Its routing table is whole from the start, not empty until every worker has beaten again.
    assert [(r["worker_id"], r["port"]) for r in again.routing_table()["redis"]] == [("s1", 6379)]
    assert again.pool().serving("redis") == 1


def test_a_store_url_names_sqlite_or_etcd_and_anything_else_is_refused(tmp_path: Path) -> None:
    assert store_location(None, tmp_path) == tmp_path / "registry.sqlite3"
    assert store_location("sqlite:///var/lib/rma/pool.sqlite3", tmp_path) == Path("/var/lib/rma/pool.sqlite3")
    assert store_location("etcd://10.0.0.1:2379,10.0.0.2:2379", tmp_path) == [
        "http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    for bad in ("postgres://x", "etcd://", "etcd://host", "etcd://u:p@h:2379", "etcd://h:2379/path", "sqlite://h/x"):
        with pytest.raises(ValueError, match="a store URL is"):
            store_location(bad, tmp_path)
    assert not open_store(None, tmp_path).shared


def test_the_etcd_store_carries_on_when_a_member_dies(cluster: EtcdCluster) -> None:
    store = EtcdStore(Etcd(cluster.endpoints), f"/test-{next(PREFIXES)}/")
    store.save(WORKER)
    first = cluster.members[0]
    cluster.kill9(first)  # the member the client asks first
    try:
        store.save_assignment("cpu-1", ("notes-coa",), ())
        assert store.load()[0].assigned == ("notes-coa",)
        assert store.claim_secret("redis", "s") == "s"
    finally:
        cluster.restart(first)
        store.close()
