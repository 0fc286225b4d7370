"""A replicated store on a shared store: postgres on two storage workers, whose Patroni leader key (in the pool's
etcd) names the primary that discovery recommends and every service config's POSTGRES_HOST names."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from etcd_cluster import EtcdCluster
from procs import wait_until
from rma.coordinator.app import create_app
from rma.coordinator.state import CoordinatorSettings
from rma.replication import PATRONI_LEADER_KEY, REPLICA_NAME_VARIABLE, STORE_URL_VARIABLE

HOSTS = {"s1": "127.0.0.2", "s2": "127.0.0.3"}


def leader(cluster: EtcdCluster, worker_id: str | None) -> None:
    """What Patroni does when a member wins (or loses) the leader race."""
    key = base64.b64encode(PATRONI_LEADER_KEY.encode()).decode()
    if worker_id is None:
        httpx.post(f"{cluster.endpoints[0]}/v3/kv/deleterange", json={"key": key}).raise_for_status()
    else:
        value = base64.b64encode(worker_id.encode()).decode()
        httpx.post(f"{cluster.endpoints[0]}/v3/kv/put", json={"key": key, "value": value}).raise_for_status()


class Pool:
    def __init__(self, api: TestClient) -> None:
        self.api = api
        self.tokens: dict[str, str] = {}

    def join(self, worker_id: str) -> dict[str, Any]:
        answer = self.api.post("/api/worker/register", json={
            "worker_id": worker_id, "advertise_host": HOSTS[worker_id],
            "capabilities": {"worker_type": "storage", "engines": ["postgres"]}}).json()
        self.tokens[worker_id] = answer["worker_token"]
        return answer

    def beat(self, worker_id: str) -> dict[str, Any]:
        answer = self.api.post("/api/worker/heartbeat", headers={"Authorization": f"Bearer {self.tokens[worker_id]}"},
                               json={"worker_id": worker_id, "services_status": {"postgres": {"state": "healthy"}}})
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def discovered(self) -> dict[str, Any]:
        body: dict[str, Any] = self.api.get("/api/services/discover/postgres").json()
        return body


def postgres_env(answer: dict[str, Any]) -> dict[str, str]:
    [config] = [c for c in answer["service_configs"] if c["name"] == "postgres"]
    env: dict[str, str] = config["env"]
    return env


def test_the_leader_key_names_the_primary_that_discovery_and_every_config_name(
        cluster: EtcdCluster, tmp_path: Path) -> None:
    leader(cluster, None)
    settings = CoordinatorSettings(data_dir=tmp_path, heartbeat_interval=1.0, store_url=cluster.url)
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as api:
        pool = Pool(api)
        for worker_id in HOSTS:
            pool.join(worker_id)
            answer = pool.beat(worker_id)
            assert answer["assigned_services"] == ["postgres"], answer  # a copy on each: anti-affinity
            env = postgres_env(answer)
            assert env[STORE_URL_VARIABLE] == cluster.url and env[REPLICA_NAME_VARIABLE] == worker_id
        assert api.get("/api/admin/gaps").json()["gaps"][0]["service"] != "postgres"

        leader(cluster, "s2")
        wait_until(lambda: pool.discovered()["recommended"] == "s2", 5, what="s2 recommended")
        roles = {r["worker_id"]: r["role"] for r in pool.discovered()["workers"]}
        assert roles == {"s2": "primary", "s1": "replica"}
        assert postgres_env(pool.beat("s1"))["POSTGRES_HOST"] == HOSTS["s2"]

        leader(cluster, "s1")  # a failover: the other member won the race
        wait_until(lambda: pool.discovered()["recommended"] == "s1", 5, what="s1 recommended")
        assert postgres_env(pool.beat("s2"))["POSTGRES_HOST"] == HOSTS["s1"]

        leader(cluster, "nobody-serving-it")  # a name that is no serving replica is never handed out
        wait_until(lambda: all(r["role"] == "replica" for r in pool.discovered()["workers"]), 5, what="no primary")
        assert postgres_env(pool.beat("s2"))["POSTGRES_HOST"] in HOSTS.values()
    leader(cluster, None)


def test_a_pool_of_one_coordinator_keeps_one_postgres_without_patroni(tmp_path: Path) -> None:
    settings = CoordinatorSettings(data_dir=tmp_path, heartbeat_interval=1.0)
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as api:
        pool = Pool(api)
        assigned = {}
        for worker_id in HOSTS:
            pool.join(worker_id)
            answer = pool.beat(worker_id)
            assigned[worker_id] = answer["assigned_services"]
            if "postgres" in answer["assigned_services"]:
                assert REPLICA_NAME_VARIABLE not in postgres_env(answer)
        assert sorted(assigned.values()) == [[], ["postgres"]]
        assert "role" not in pool.discovered()["workers"][0]
