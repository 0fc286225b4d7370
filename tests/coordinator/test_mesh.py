"""The coordinator as the mesh's CA, through its routes, with the real nebula-cert.

Workers join with a public key they made; the answer is a certificate for their overlay address,
which is where routers reach them. Certificates renew over heartbeats, and a revocation reaches
every other worker's next heartbeat answer, survives a restart, and bars the worker for good.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from rma.coordinator.app import create_app
from rma.coordinator.mesh import MeshSettings
from rma.coordinator.state import CoordinatorSettings
from rma.mesh.pki import make_node_keys

pytestmark = pytest.mark.skipif(shutil.which("nebula-cert") is None, reason="nebula-cert is not installed")
NETWORK = ipaddress.IPv4Network("198.19.0.0/16")  # reserved for network tests: nothing is sent to it here
REMOTE = ("198.18.0.10", 50000)  # the ASGI scope's peer only
JOIN = {"Authorization": "Bearer j0in"}
ADMIN = {"Authorization": "Bearer adm1n"}


def mesh_client(folder: Path, certificate_s: int = 3600) -> TestClient:
    settings = CoordinatorSettings(data_dir=folder, heartbeat_interval=1.0, join_token="j0in", admin_token="adm1n",
                                   mesh=MeshSettings(NETWORK, certificate_s))
    return TestClient(create_app(settings), client=REMOTE)


def join(api: TestClient, worker_id: str, public_key: str | None, kind: str = "cpu") -> Any:
    body = {"worker_id": worker_id, "mesh_public_key": public_key,
            "capabilities": {"worker_type": kind, "engines": ["spacy", "pdf-docx"]}}
    return api.post("/api/worker/register", json=body, headers=JOIN)


def beat(api: TestClient, worker_id: str, token: str) -> Any:
    answer = api.post("/api/worker/heartbeat", json={"worker_id": worker_id},
                      headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


def verify(folder: Path, membership: dict[str, Any]) -> None:
    """nebula-cert's own check: the certificate is the CA's, and valid now."""
    (folder / "ca.crt").write_text(membership["ca"])
    (folder / "host.crt").write_text(membership["certificate"])
    subprocess.run(["nebula-cert", "verify", "-ca", str(folder / "ca.crt"), "-crt", str(folder / "host.crt")],
                   check=True, capture_output=True, timeout=10)


def test_a_worker_joins_with_its_public_key_and_is_reached_at_the_address_in_its_certificate(tmp_path: Path) -> None:
    key = make_node_keys(tmp_path / "cpu-1")
    with mesh_client(tmp_path / "coordinator") as api:
        answer = join(api, "cpu-1", key)
        assert answer.status_code == 200, answer.text
        mesh = answer.json()["mesh"]
        verify(tmp_path / "cpu-1", mesh)
        address = ipaddress.IPv4Interface(mesh["address"])
        assert address.network == NETWORK and mesh["groups"] == ["cpu"] and mesh["blocklist"] == []
        assert mesh["expires"] > time.time() + 3000
        workers = api.get("/api/admin/workers", headers=ADMIN).json()["workers"]
        assert [w["host"] for w in workers] == [str(address.ip)]  # not the peer it connected from
        assert workers[0]["mesh"] == {"address": mesh["address"], "groups": ["cpu"], "expires": mesh["expires"],
                                      "tunnels": None}  # until its first heartbeat says
        other = join(api, "cpu-2", make_node_keys(tmp_path / "cpu-2")).json()["mesh"]["address"]
        again = join(api, "cpu-1", key)
        assert again.status_code == 409  # the id is taken: rejoining needs that worker's token
        token = answer.json()["worker_token"]
        rejoined = api.post("/api/worker/register", json={"worker_id": "cpu-1", "mesh_public_key": key},
                            headers=JOIN | {"X-Worker-Token": token})
        assert rejoined.json()["mesh"]["address"] == mesh["address"] != other
    private = (tmp_path / "cpu-1" / "host.key").read_text().splitlines()[1]
    held = b"".join(path.read_bytes() for path in (tmp_path / "coordinator").rglob("*") if path.is_file())
    assert private.encode() not in held  # the worker's private key never left it


def test_a_worker_without_nebula_or_with_a_forged_key_is_refused_clearly(tmp_path: Path) -> None:
    with mesh_client(tmp_path) as api:
        missing = join(api, "cpu-1", None)
        assert missing.status_code == 403 and "apt-get install nebula" in missing.json()["error"]
        for forged in ("hello", "-----BEGIN NEBULA X25519 PUBLIC KEY-----\n$(reboot)\n"
                                "-----END NEBULA X25519 PUBLIC KEY-----\n", "x" * 201):
            answer = join(api, "cpu-1", forged)
            assert answer.status_code in (400, 422) and "mesh_public_key" in answer.text, answer.text
        assert api.get("/api/admin/workers", headers=ADMIN).json()["total"] == 0


def test_edge_workers_are_every_members_lighthouses(tmp_path: Path) -> None:
    with mesh_client(tmp_path / "coordinator") as api:
        edge = join(api, "edge-1", make_node_keys(tmp_path / "edge"), kind="edge").json()["mesh"]
        home = join(api, "cpu-1", make_node_keys(tmp_path / "home")).json()
        assert edge["groups"] == ["edge"]
        assert home["mesh"]["lighthouses"] == [{"overlay_ip": edge["address"].split("/")[0],
                                                "underlay": f"{REMOTE[0]}:4242"}]


def test_a_certificate_is_renewed_over_heartbeats_at_half_its_life(tmp_path: Path) -> None:
    with mesh_client(tmp_path / "coordinator", certificate_s=4) as api:
        joined = join(api, "cpu-1", make_node_keys(tmp_path / "node")).json()
        first = joined["mesh"]["certificate"]
        assert beat(api, "cpu-1", joined["worker_token"])["mesh"]["certificate"] == first
        time.sleep(2.2)
        renewed = beat(api, "cpu-1", joined["worker_token"])["mesh"]
        assert renewed["certificate"] != first and renewed["expires"] > joined["mesh"]["expires"]
        verify(tmp_path / "node", renewed)


def test_a_revoked_worker_reaches_every_blocklist_at_the_next_heartbeat_and_never_rejoins(tmp_path: Path) -> None:
    revoked_key, survivor_key = make_node_keys(tmp_path / "revoked"), make_node_keys(tmp_path / "survivor")
    with mesh_client(tmp_path / "coordinator", certificate_s=4) as api:
        bad = join(api, "cpu-bad", revoked_key).json()
        beat(api, "cpu-bad", bad["worker_token"])
        time.sleep(2.2)  # past half its life: the next beat renews it, and both certificates must be revoked
        renewed = beat(api, "cpu-bad", bad["worker_token"])["mesh"]["certificate"]
        good = join(api, "cpu-good", survivor_key).json()
        assert beat(api, "cpu-good", good["worker_token"])["mesh"]["blocklist"] == []  # an answer cached now
        assert api.post("/api/admin/mesh/revoke/cpu-bad").status_code == 401  # admins only
        answer = api.post("/api/admin/mesh/revoke/cpu-bad", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        fingerprints = answer.json()["fingerprints"]
        assert len(fingerprints) == 2, fingerprints
        assert sorted(beat(api, "cpu-good", good["worker_token"])["mesh"]["blocklist"]) == sorted(fingerprints)
        assert api.get("/api/admin/workers", headers=ADMIN).json()["total"] == 1
        for worker_id, key in (("cpu-bad", make_node_keys(tmp_path / "new-key")), ("cpu-new-id", revoked_key)):
            refused = join(api, worker_id, key)
            assert refused.status_code == 403 and "revoked" in refused.json()["error"], refused.text
        assert api.post("/api/admin/mesh/revoke/nobody", headers=ADMIN).status_code == 404
        assert renewed != bad["mesh"]["certificate"]
    with mesh_client(tmp_path / "coordinator") as restarted:
        rejoined = restarted.post("/api/worker/register", headers=JOIN | {"X-Worker-Token": good["worker_token"]},
                                  json={"worker_id": "cpu-good", "mesh_public_key": survivor_key}).json()
        assert sorted(rejoined["mesh"]["blocklist"]) == sorted(fingerprints)
        assert rejoined["mesh"]["address"] == good["mesh"]["address"]
        assert join(restarted, "cpu-bad", make_node_keys(tmp_path / "third")).status_code == 403


def test_the_ca_key_is_private_and_a_pool_without_the_mesh_answers_none(tmp_path: Path) -> None:
    with mesh_client(tmp_path / "coordinator") as api:
        join(api, "cpu-1", make_node_keys(tmp_path / "node"))
    assert (tmp_path / "coordinator" / "mesh-ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "node" / "host.key").stat().st_mode & 0o777 == 0o600
    plain = CoordinatorSettings(data_dir=tmp_path / "plain", heartbeat_interval=1.0)
    with TestClient(create_app(plain), client=("127.0.0.1", 50000)) as api:
        answer = api.post("/api/worker/register", json={"worker_id": "cpu-1"})
        assert answer.status_code == 200 and answer.json()["mesh"] is None
        assert api.post("/api/admin/mesh/revoke/cpu-1").status_code == 404


def test_an_applications_server_joins_as_a_client_member_and_can_be_revoked(tmp_path: Path) -> None:
    with mesh_client(tmp_path / "coordinator") as api:
        join(api, "cpu-1", make_node_keys(tmp_path / "worker"))
        key = make_node_keys(tmp_path / "app")
        assert api.post("/api/admin/mesh/clients", json={"name": "app", "public_key": key}).status_code == 401
        answer = api.post("/api/admin/mesh/clients", json={"name": "app", "public_key": key}, headers=ADMIN)
        assert answer.status_code == 200, answer.text
        member = answer.json()
        verify(tmp_path / "app", member)
        assert member["groups"] == ["client"] and member["expires"] > time.time() + 29 * 24 * 3600
        assert ipaddress.IPv4Interface(member["address"]).network == NETWORK
        taken = api.post("/api/admin/mesh/clients", json={"name": "cpu-1", "public_key": key}, headers=ADMIN)
        assert taken.status_code == 409 and "worker" in taken.json()["error"]
        forged = api.post("/api/admin/mesh/clients", json={"name": "x", "public_key": "hello"}, headers=ADMIN)
        assert forged.status_code == 422
        revoked = api.post("/api/admin/mesh/revoke/app", headers=ADMIN).json()["fingerprints"]
        assert len(revoked) == 1
        again = api.post("/api/admin/mesh/clients", json={"name": "app", "public_key": key}, headers=ADMIN)
        assert again.status_code == 403


def test_a_mesh_pools_coordinator_sends_service_calls_to_an_edge_proxy(tmp_path: Path) -> None:
    """It is not on the mesh, so the services' overlay addresses are out of its reach: it says where to go."""
    with mesh_client(tmp_path / "coordinator") as api:
        join(api, "cpu-1", make_node_keys(tmp_path / "node"))
        for answer in (api.get("/service/ner/health"), api.post("/service/notes-coa/x", content=b"{}")):
            assert answer.status_code == 503 and "call an edge proxy" in answer.json()["reason"], answer.text
