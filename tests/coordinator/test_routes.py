"""Every public coordinator route through the ASGI app: the contract, auth, and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from rma.coordinator.app import create_app
from rma.coordinator.state import CoordinatorSettings

LOOPBACK = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.7", 50000)  # a documentation address: the ASGI scope only, no traffic is sent

SEED_REGISTRATION = {
    "worker_id": "test-gpu-1",
    "tunnel_url": "https://test.trycloudflare.com",
    "vpn_ip": "10.8.0.5",
    "capabilities": {"worker_type": "gpu", "has_gpu": True},
}


def make_client(tmp_path: Path, client: tuple[str, int] = LOOPBACK, **settings: Any) -> TestClient:
    app = create_app(CoordinatorSettings(data_dir=tmp_path, heartbeat_interval=1.0, **settings))
    return TestClient(app, client=client)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as client:
        yield client


def register(api: TestClient, **overrides: Any) -> dict[str, Any]:
    body = {"worker_id": "cpu-1", "capabilities": {"worker_type": "cpu", "engines": ["spacy", "pdf-docx"]}}
    body.update(overrides)
    response = api.post("/api/worker/register", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def beat(api: TestClient, worker_id: str, token: str, **fields: Any) -> Any:
    return api.post("/api/worker/heartbeat", json={"worker_id": worker_id, **fields},
                    headers={"Authorization": f"Bearer {token}"})


def test_seed_agent_exchange_keeps_working(tmp_path: Path) -> None:
    # The seed's agent registers over its VPN: from its vpn_ip, the address routers reach it at.
    with make_client(tmp_path, client=("10.8.0.5", 50000), join_token="j") as api:
        answer = api.post("/api/worker/register", json=SEED_REGISTRATION, headers={"Authorization": "Bearer j"}).json()
    assert answer["worker_id"] == "test-gpu-1"
    assert answer["worker_type"] == "gpu" and answer["tier"] == 1
    assert "llm-inference" in answer["assigned_services"]
    configs = {c["name"]: c for c in answer["service_configs"]}
    assert configs["llm-inference"]["port"] == 8105 and configs["llm-inference"]["priority"] == 1
    assert set(configs) == set(answer["assigned_services"])


def test_seed_cpu_host_without_worker_type_is_a_cpu_worker(tmp_path: Path) -> None:
    with make_client(tmp_path, client=("10.0.0.2", 50000), join_token="j") as api:
        answer = api.post("/api/worker/register", headers={"Authorization": "Bearer j"}, json={
            "worker_id": "seed-cpu", "tunnel_url": "http://10.0.0.2:8000", "vpn_ip": None, "capabilities": {}}).json()
    assert answer["worker_type"] == "cpu"
    assert set(answer["assigned_services"]) == {"ner-extraction", "document-processing", "notes-coa"}


def test_heartbeat_returns_assignment_and_interval(api: TestClient) -> None:
    worker = register(api)
    answer = beat(api, "cpu-1", worker["worker_token"], current_load=0.25,
                  services_status={"ner-extraction": {"state": "healthy", "port": 8108}})
    assert answer.status_code == 200
    body = answer.json()
    assert body["assigned_services"] == ["document-processing", "ner-extraction"]
    assert body["heartbeat_interval"] == 1.0
    found = api.get("/api/services/discover/ner-extraction").json()
    assert found["count"] == 1 and found["workers"][0]["port"] == 8108
    assert found["workers"][0]["url"] == "http://127.0.0.1:8108"
    assert found["recommended"] == "cpu-1"


def test_discovery_lists_only_healthy_replicas_least_loaded_first(api: TestClient) -> None:
    tokens = {}
    for i in range(2):
        tokens[i] = register(api, worker_id=f"cpu-{i}")["worker_token"]
    # Both workers run document-processing (priority 2, fewest replicas) among their services.
    beat(api, "cpu-0", tokens[0], current_load=0.9, services_status={"document-processing": {"state": "healthy"}})
    beat(api, "cpu-1", tokens[1], current_load=0.1, services_status={"document-processing": {"state": "healthy"}})
    found = api.get("/api/services/discover/document-processing").json()
    assert [w["worker_id"] for w in found["workers"]] == ["cpu-1", "cpu-0"]
    table = api.get("/api/services/table").json()["services"]
    assert len(table) == 14 and table["redis"] == []
    assert [w["worker_id"] for w in table["document-processing"]] == ["cpu-1", "cpu-0"]
    beat(api, "cpu-1", tokens[1], services_status={"document-processing": {"state": "crashed"}})
    found = api.get("/api/services/discover/document-processing").json()
    assert [w["worker_id"] for w in found["workers"]] == ["cpu-0"]


def test_discovery_errors(api: TestClient) -> None:
    missing = api.get("/api/services/discover/redis")
    assert missing.status_code == 503 and "redis" in missing.json()["error"]
    unknown = api.get("/api/services/discover/not-a-service")
    assert unknown.status_code == 404 and "catalogue" in unknown.json()["error"]


def test_heartbeat_needs_the_workers_own_token(api: TestClient) -> None:
    first = register(api, worker_id="cpu-a")
    register(api, worker_id="cpu-b")
    assert beat(api, "cpu-a", "wrong").status_code == 401
    no_header = api.post("/api/worker/heartbeat", json={"worker_id": "cpu-a"})
    assert no_header.status_code == 401 and "Bearer" in no_header.json()["error"]
    assert beat(api, "cpu-b", first["worker_token"]).status_code == 401
    # An unknown id is a wrong token too: whether an id exists is not told to strangers.
    assert beat(api, "ghost", first["worker_token"]).status_code == 401


def test_reregistering_an_id_needs_its_token(api: TestClient) -> None:
    first = register(api, worker_id="victim", advertise_host="127.0.0.2")
    hijack = api.post("/api/worker/register", json={"worker_id": "victim", "advertise_host": "127.0.0.66"})
    assert hijack.status_code == 409 and "X-Worker-Token" in hijack.json()["error"]
    workers = api.get("/api/admin/workers").json()["workers"]
    assert [w["host"] for w in workers] == ["127.0.0.2"]
    again = api.post("/api/worker/register", json={"worker_id": "victim", "advertise_host": "127.0.0.3"},
                     headers={"X-Worker-Token": first["worker_token"]})
    assert again.status_code == 200
    # The old token is replaced by the new one.
    assert beat(api, "victim", first["worker_token"]).status_code == 401
    assert beat(api, "victim", again.json()["worker_token"]).status_code == 200


def test_unregister_needs_the_workers_token(api: TestClient) -> None:
    worker = register(api)
    assert api.delete("/api/worker/unregister/cpu-1").status_code == 401
    assert api.delete("/api/worker/unregister/cpu-1", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.delete("/api/worker/unregister/ghost").status_code == 401
    ok = api.delete("/api/worker/unregister/cpu-1", headers={"Authorization": f"Bearer {worker['worker_token']}"})
    assert ok.status_code == 200
    assert api.get("/api/admin/workers").json()["total"] == 0


def test_join_token_and_loopback_rule(tmp_path: Path) -> None:
    seed_from_remote = SEED_REGISTRATION | {"vpn_ip": REMOTE[0]}
    with make_client(tmp_path / "a", client=REMOTE) as remote:
        refused = remote.post("/api/worker/register", json=seed_from_remote)
        assert refused.status_code == 403 and "RMA_JOIN_TOKEN" in refused.json()["error"]
        assert remote.get("/api/admin/workers").status_code == 403
    with make_client(tmp_path / "b", client=REMOTE, join_token="s3cret", admin_token="adm1n") as remote:
        assert remote.post("/api/worker/register", json=seed_from_remote).status_code == 401
        wrong = remote.post("/api/worker/register", json=seed_from_remote, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        joined = remote.post("/api/worker/register", json=seed_from_remote,
                             headers={"Authorization": "Bearer s3cret"})
        assert joined.status_code == 200
        assert remote.get("/api/admin/gaps").status_code == 401
        admin = remote.get("/api/admin/gaps", headers={"Authorization": "Bearer adm1n"})
        assert admin.status_code == 200
        # The admin token may also remove a worker (an operator evicting a machine).
        evicted = remote.delete("/api/worker/unregister/test-gpu-1", headers={"Authorization": "Bearer adm1n"})
        assert evicted.status_code == 200
    with make_client(tmp_path / "c", join_token="s3cret") as local:
        # A configured join token applies on loopback too.
        assert local.post("/api/worker/register", json=SEED_REGISTRATION).status_code == 401


@pytest.mark.parametrize("body, complaint", [
    ({"worker_id": "../etc/passwd"}, "worker_id"),
    ({"worker_id": "x" * 65}, "worker_id"),
    ({"worker_id": "ok", "tunnel_url": "ftp://files.example/"}, "tunnel_url"),
    ({"worker_id": "ok", "tunnel_url": "javascript:alert(1)"}, "tunnel_url"),
    ({"worker_id": "ok", "capabilities": {"worker_type": "quantum"}}, "worker_type"),
    ({"worker_id": "ok", "capabilities": {"ram_mb": -5}}, "ram_mb"),
    ({"worker_id": "ok", "capabilities": {"gpus": [{"memory_mb": "lots"}]}}, "memory_mb"),
    ({"worker_id": "ok", "advertise_host": "evil host; rm -rf"}, "advertise_host"),
    ([1, 2, 3], "body"),
])
def test_register_rejects_bad_input_clearly(api: TestClient, body: Any, complaint: str) -> None:
    response = api.post("/api/worker/register", json=body)
    assert response.status_code == 422
    assert complaint in response.json()["error"]


def test_register_rejects_malformed_json(api: TestClient) -> None:
    response = api.post("/api/worker/register", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "invalid request body" in response.json()["error"]


@pytest.mark.parametrize("raw", [
    b'{"worker_id": "cpu-1", "current_load": NaN}',
    b'{"worker_id": "cpu-1", "current_load": Infinity}',
    b'{"worker_id": "cpu-1", "current_load": -1}',
    b'{"worker_id": "cpu-1", "cpu_percent": 1e999}',
    b'{"worker_id": "cpu-1", "services_status": {"redis": {"state": "exploded"}}}',
    b'{"worker_id": "cpu-1", "services_status": {"redis": {"state": "running", "port": 70000}}}',
    b'{"worker_id": 12}',
])
def test_bad_heartbeats_are_refused_and_do_not_poison_reads(api: TestClient, raw: bytes) -> None:
    worker = register(api)
    response = api.post("/api/worker/heartbeat", content=raw,
                        headers={"Authorization": f"Bearer {worker['worker_token']}",
                                 "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "error" in response.json()
    for path in ("/api/admin/workers", "/api/admin/gaps", "/api/admin/services", "/metrics", "/health"):
        assert api.get(path).status_code == 200, path
    assert beat(api, "cpu-1", worker["worker_token"], current_load=0.5).status_code == 200


def test_unknown_fields_are_tolerated(api: TestClient) -> None:
    worker = register(api, containers=[{"x": 1}], capabilities={"worker_type": "cpu", "engines": ["spacy"],
                                                                  "vendor_specific": {"a": 1}})
    assert beat(api, "cpu-1", worker["worker_token"], loaded_models=["m"], specialization="ner").status_code == 200


def test_body_size_limit(tmp_path: Path) -> None:
    with make_client(tmp_path, max_body_bytes=1024) as api:
        big = {"worker_id": "big", "capabilities": {"note": "x" * 5000}}
        response = api.post("/api/worker/register", json=big)
        assert response.status_code == 413 and "1024" in response.json()["error"]

        def chunks() -> Iterator[bytes]:
            yield b'{"worker_id": "big", "capabilities": {"note": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}}'

        streamed = api.post("/api/worker/register", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert api.get("/health").status_code == 200


def test_a_coordinator_on_its_own_sqlite_file_gives_no_worker_a_coordinator_replica(api: TestClient) -> None:
    """A replica would start on an empty registry of its own: a second pool, not a replica."""
    edge = register(api, worker_id="edge-1", capabilities={
        "worker_type": "edge", "engines": ["rma-coordinator", "rma-edge-proxy", "rma-load-balancer"]})
    assert set(edge["assigned_services"]) == {"edge-proxy", "load-balancer"}
    gaps = {g["service"]: g for g in api.get("/api/admin/gaps").json()["gaps"]}
    assert gaps["coordinator"]["current_workers"] == 0 and "needs a shared store" in gaps["coordinator"]["reason"]


def test_gap_report_shape_and_reasons(api: TestClient) -> None:
    register(api, capabilities={"worker_type": "cpu", "engines": ["spacy"]})
    report = api.get("/api/admin/gaps").json()
    assert report["summary"]["total_services"] == 14
    by_name = {g["service"]: g for g in report["gaps"]}
    assert set(by_name["chromadb"]) >= {"service", "required_type", "priority", "current_workers", "status", "port"}
    assert by_name["chromadb"]["status"] == "critical"
    assert "needs a worker of kind storage" in by_name["chromadb"]["reason"]
    assert "engine pdf-docx not available" in by_name["document-processing"]["reason"]
    assert by_name["ner-extraction"]["current_workers"] == 1
    assert {g["service"] for g in report["critical_gaps"]} >= {"chromadb", "document-processing"}
    assert report["gaps"][0]["status"] == "critical"


def test_metrics_are_valid_prometheus_text(api: TestClient) -> None:
    worker = register(api)
    beat(api, "cpu-1", worker["worker_token"], services_status={"ner-extraction": {"state": "healthy"}})
    text = api.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"rma_workers", "rma_service_replicas", "rma_service_covered", "rma_registrations",
            "rma_heartbeat_seconds"} <= set(families)
    healthy = [s.value for s in families["rma_workers"].samples if s.labels["state"] == "healthy"]
    assert healthy == [1.0]
    covered = {s.labels["service"]: s.value for s in families["rma_service_covered"].samples}
    assert covered["ner-extraction"] == 1.0 and covered["redis"] == 0.0


def test_admin_views(api: TestClient) -> None:
    worker = register(api)
    beat(api, "cpu-1", worker["worker_token"], services_status={"ner-extraction": {"state": "healthy"}})
    workers = api.get("/api/admin/workers").json()
    assert workers["total"] == 1 and workers["workers"][0]["worker_type"] == "cpu"
    assert json.dumps(workers).count(worker["worker_token"]) == 0
    services = {s["name"]: s for s in api.get("/api/admin/services").json()["services"]}
    assert services["ner-extraction"]["workers"] == ["cpu-1"]
    events = api.get("/api/admin/events").json()["events"]
    assert {e["kind"] for e in events} >= {"joined", "assigned"}


def test_store_secrets_go_to_the_store_worker_and_admins_only(tmp_path: Path) -> None:
    with make_client(tmp_path, admin_token="adm", store_keys=("app-key-1",), api_keys=("edge-key",)) as api:
        storage = register(api, worker_id="s1", advertise_host="127.0.0.5",
                           capabilities={"worker_type": "storage", "engines": ["redis-server"]})
        cpu = register(api, worker_id="c1", capabilities={"worker_type": "cpu", "engines": ["spacy"]})
        redis_config = {c["name"]: c for c in storage["service_configs"]}["redis"]
        secret = redis_config["secret"]
        assert secret and len(secret) >= 24
        assert all(c["secret"] is None for c in cpu["service_configs"])
        beat(api, "s1", storage["worker_token"], services_status={"redis": {"state": "healthy", "port": 6379}})
        # Every service config now says where redis is (the seed's REDIS_HOST).
        answer = beat(api, "c1", cpu["worker_token"]).json()
        assert answer["service_configs"][0]["env"] == {"REDIS_HOST": "127.0.0.5", "REDIS_PORT": "6379"}
        assert secret not in json.dumps(answer)

        public = api.get("/api/services/discover/redis").json()["workers"][0]
        assert "secret" not in public and "connection_url" not in public
        admin = api.get("/api/services/discover/redis", headers={"Authorization": "Bearer adm"}).json()
        assert admin["workers"][0]["connection_url"] == f"redis://:{secret}@127.0.0.5:6379/0"
        app = api.get("/api/services/discover/redis", headers={"X-API-Key": "app-key-1"}).json()
        assert app["workers"][0]["secret"] == secret
        for key in ("app-key-2", "edge-key"):  # the /service route's client keys read no store's secret
            wrong = api.get("/api/services/discover/redis", headers={"X-API-Key": key}).json()
            assert "secret" not in wrong["workers"][0]
        for path in ("/api/admin/workers", "/api/admin/gaps", "/api/admin/events", "/metrics"):
            assert secret not in api.get(path, headers={"Authorization": "Bearer adm"}).text, path

    with make_client(tmp_path, admin_token="adm") as restarted:
        again = restarted.post("/api/worker/register", headers={"X-Worker-Token": storage["worker_token"]}, json={
            "worker_id": "s1", "capabilities": {"worker_type": "storage", "engines": ["redis-server"]}})
        # The same secret after a restart: the store's data was protected with it.
        assert {c["name"]: c for c in again.json()["service_configs"]}["redis"]["secret"] == secret
