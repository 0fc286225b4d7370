"""Issue 16, the front door, through the ASGI app: workers cannot point the routers elsewhere,
worker routes answer 401 before they say whether an id exists, and credentials are scoped to their use.

Peers are ASGI scope addresses (documentation ranges); the only real sockets are small HTTP
servers on loopback that the coordinator's own port checks connect to.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from starlette.testclient import TestClient

from rma.coordinator.app import create_app
from rma.coordinator.state import CoordinatorSettings

LOOPBACK = ("127.0.0.1", 50000)
LAN_PEER = ("192.0.2.10", 50000)  # TEST-NET-1: scope addresses only, no traffic is sent
OTHER_PEER = ("203.0.113.7", 50000)
JOIN = {"Authorization": "Bearer j0in"}
ADMIN = {"Authorization": "Bearer adm1n"}
DOCS = {"worker_type": "cpu", "engines": ["pdf-docx"]}  # assigned document-processing (port 8103)


def make(tmp_path: Path, peer: tuple[str, int] = LOOPBACK, **settings: Any) -> TestClient:
    settings = {"heartbeat_interval": 1.0, **settings}
    return TestClient(create_app(CoordinatorSettings(data_dir=tmp_path, **settings)), client=peer)


def join(api: TestClient, worker_id: str = "w1", capabilities: dict[str, Any] | None = None,
         **fields: Any) -> Any:
    body = {"worker_id": worker_id, "capabilities": capabilities or DOCS, **fields}
    return api.post("/api/worker/register", json=body, headers=JOIN)


def admin_workers(api: TestClient) -> dict[str, dict[str, Any]]:
    answer = api.get("/api/admin/workers", headers=ADMIN).json()
    return {w["worker_id"]: w for w in answer["workers"]}


def beat(api: TestClient, worker_id: str, token: str, service: str, port: int | None,
         state: str = "healthy") -> Any:
    status = {"state": state} | ({"port": port} if port else {})
    return api.post("/api/worker/heartbeat", json={"worker_id": worker_id, "services_status": {service: status}},
                    headers={"Authorization": f"Bearer {token}"})


def table(api: TestClient, service: str) -> list[dict[str, Any]]:
    replicas: list[dict[str, Any]] = api.get("/api/services/table").json()["services"][service]
    return replicas


def eventually(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- (a) a worker's advertised host is the address it registers from, unless the operator vouches -----

@pytest.mark.parametrize("field, value", [
    ("advertise_host", "192.0.2.99"),
    ("vpn_ip", "10.8.0.5"),
    ("tunnel_url", "http://198.51.100.20:8000"),
    ("advertise_host", "victim.example.org"),
])
def test_a_worker_cannot_advertise_another_machines_address(tmp_path: Path, field: str, value: str) -> None:
    with make(tmp_path, LAN_PEER, host="0.0.0.0", join_token="j0in", admin_token="adm1n") as api:
        refused = join(api, **{field: value})
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert "is not your address 192.0.2.10" in error and "RMA_VOUCHED_NETWORKS" in error
        assert admin_workers(api) == {}


def test_a_worker_may_advertise_its_own_address_or_nothing(tmp_path: Path) -> None:
    with make(tmp_path, LAN_PEER, host="0.0.0.0", join_token="j0in", admin_token="adm1n") as api:
        assert join(api, "w1", advertise_host="192.0.2.10").status_code == 200
        assert join(api, "w2").status_code == 200
        # The seed's agent over its VPN: vpn_ip is the address it registers from.
        assert join(api, "w3", vpn_ip="192.0.2.10", tunnel_url="https://w3.trycloudflare.com").status_code == 200
        assert {w["host"] for w in admin_workers(api).values()} == {"192.0.2.10"}


def test_the_operator_vouches_for_networks_behind_nat_or_tunnels(tmp_path: Path) -> None:
    vouched = (ipaddress.ip_network("192.0.2.0/24"),)
    with make(tmp_path, LAN_PEER, host="0.0.0.0", join_token="j0in", admin_token="adm1n",
              vouched_networks=vouched) as api:
        assert join(api, "nat", advertise_host="198.51.100.20").status_code == 200
        assert join(api, "tunnel", tunnel_url="https://w1.trycloudflare.com").status_code == 200
        hosts = {w: r["host"] for w, r in admin_workers(api).items()}
        assert hosts == {"nat": "198.51.100.20", "tunnel": "w1.trycloudflare.com"}
        # Vouching is for other machines, never for the routers' own: these read as loopback or nothing.
        for host in ("127.0.0.1", "::1", "localhost", "db.localhost", "0.0.0.0", "169.254.169.254", "fe80::1",
                     "127.1", "0x7f000001", "2130706433"):
            refused = join(api, "sneaky", advertise_host=host)
            assert refused.status_code == 403, (host, refused.text)
    with make(tmp_path / "b", OTHER_PEER, host="0.0.0.0", join_token="j0in", vouched_networks=vouched) as api:
        refused = join(api, advertise_host="198.51.100.20")
        assert refused.status_code == 403 and "is not your address 203.0.113.7" in refused.json()["error"]


def test_loopback_is_only_for_a_worker_on_the_coordinators_own_machine(tmp_path: Path) -> None:
    with make(tmp_path, OTHER_PEER, join_token="j0in") as api:
        for host in ("127.0.0.1", "::1", "[::1]", "::ffff:127.0.0.1"):
            refused = join(api, advertise_host=host)
            assert refused.status_code == 403 and "loopback" in refused.json()["error"], host
    # A proxy on the coordinator's machine relays others' requests: their peer is its loopback, not theirs.
    with make(tmp_path / "b", LOOPBACK, host="0.0.0.0") as api:
        for relay in ({"X-Forwarded-For": "198.51.100.9"}, {"Forwarded": "for=198.51.100.9"}, {"X-Real-IP": "x"}):
            for fields in ({"advertise_host": "127.0.0.1"}, {}):
                body = {"worker_id": "w1", "capabilities": DOCS, **fields}
                refused = api.post("/api/worker/register", json=body, headers=relay)
                assert refused.status_code == 403, (relay, fields)
                assert "ADVERTISE_HOST" in refused.json()["error"]
    with make(tmp_path / "c", LOOPBACK, vouched_networks=(ipaddress.ip_network("127.0.0.1/32"),)) as api:
        assert join(api, advertise_host="127.0.0.1").status_code == 403  # vouched: a relay for others
    # A worker beside a coordinator listening everywhere (the README's host-network containers) keeps loopback,
    # and may advertise one of the machine's network addresses instead.
    own = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback
           and not ipaddress.ip_address(a.address).is_link_local]
    with make(tmp_path / "d", LOOPBACK, host="0.0.0.0") as api:
        assert join(api, "w1", advertise_host="127.0.0.1").status_code == 200
        assert join(api, "w2").status_code == 200
        if own:
            assert join(api, "w3", advertise_host=own[0]).status_code == 200
        assert join(api, "w4", advertise_host="192.0.2.99").status_code == 403


def test_a_single_machine_pool_keeps_loopback_but_not_link_local(tmp_path: Path) -> None:
    with make(tmp_path, LOOPBACK) as api:  # the coordinator and its workers on 127.0.0.1, as `rma up` runs them
        assert join(api, "w1", advertise_host="127.0.0.1").status_code == 200
        assert join(api, "w2", advertise_host="127.0.0.2").status_code == 200
        assert join(api, "w3").status_code == 200
        for host in ("169.254.169.254", "0.0.0.0", "192.0.2.99"):
            assert join(api, "w4", advertise_host=host).status_code == 403, host


# -- (c) a reported port other than the assigned one is routed only once the coordinator confirms it ---

class Page(http.server.BaseHTTPRequestHandler):
    """Answers 200 on `ok_paths` and 404 elsewhere; counts requests per server."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server: Server = self.server  # type: ignore[assignment]
        server.hits += 1
        ok = self.path in server.ok_paths
        body = b"internal page, not a pool service" if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    hits = 0
    ok_paths: tuple[str, ...] = ()


@contextlib.contextmanager
def serving(*ok_paths: str, host: str = "127.0.0.1") -> Iterator[Server]:
    server = Server((host, 0), Page)
    server.ok_paths = ok_paths
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def port_of(server: Server) -> int:
    return int(server.server_address[1])


def test_an_unrelated_server_on_a_reported_port_is_never_routed(tmp_path: Path) -> None:
    with serving("/") as unrelated, make(tmp_path) as api:
        worker = join(api, advertise_host="127.0.0.1").json()
        assert worker["assigned_services"] == ["document-processing"]
        assert beat(api, "w1", worker["worker_token"], "document-processing", port_of(unrelated)).status_code == 200
        assert table(api, "document-processing") == []
        assert api.get("/api/services/discover/document-processing").status_code == 503
        eventually(lambda: "404" in admin_workers(api)["w1"]["port_checks"]["document-processing"]["reason"],
                   what="the refusal's reason")
        check = admin_workers(api)["w1"]["port_checks"]["document-processing"]
        assert check["port"] == port_of(unrelated) and check["state"] == "refused"
        assert "GET /health" in check["reason"]
        events = api.get("/api/admin/events", headers=ADMIN).json()["events"]
        assert any(e["kind"] == "port-refused" and str(port_of(unrelated)) in e["detail"] for e in events)
        # Gaps say why too: the worker's report is not a replica until the coordinator confirms it.
        gaps = {g["service"]: g for g in api.get("/api/admin/gaps", headers=ADMIN).json()["gaps"]}
        assert gaps["document-processing"]["healthy_replicas"] == 0
        assert gaps["document-processing"]["status"] == "critical"


def test_a_moved_port_is_routed_once_it_answers_the_health_check(tmp_path: Path) -> None:
    with serving("/health") as moved, serving("/") as unrelated, make(tmp_path) as api:
        worker = join(api, advertise_host="127.0.0.1").json()
        token = worker["worker_token"]
        beat(api, "w1", token, "document-processing", port_of(moved))
        replicas = eventually(lambda: table(api, "document-processing"), what="the confirmed port in the table")
        assert [r["port"] for r in replicas] == [port_of(moved)]
        assert moved.hits == 1
        events = api.get("/api/admin/events", headers=ADMIN).json()["events"]
        assert any(e["kind"] == "port-confirmed" for e in events)
        # Beats on the confirmed port check nothing again.
        for _ in range(3):
            beat(api, "w1", token, "document-processing", port_of(moved))
        assert moved.hits == 1
        # The worker now says another port: the replica is off the table until that one is confirmed
        # (the old port is no longer the service's; a worker's checks start at most once a second).
        eventually(lambda: beat(api, "w1", token, "document-processing", port_of(unrelated)) and unrelated.hits,
                   what="a check of the new port")
        eventually(lambda: admin_workers(api)["w1"]["port_checks"]["document-processing"]["state"] == "refused",
                   what="the verdict")
        assert table(api, "document-processing") == []
        # Back on the assigned port: routed at once, no check.
        beat(api, "w1", token, "document-processing", 8103)
        assert [r["port"] for r in table(api, "document-processing")] == [8103]
        assert admin_workers(api)["w1"]["port_checks"] == {}


def test_checks_go_only_to_the_workers_own_host(tmp_path: Path) -> None:
    # The worker registered as 127.0.0.2; a server on 127.0.0.1 at the reported port is not its.
    with serving("/health") as elsewhere, make(tmp_path) as api:
        worker = join(api, advertise_host="127.0.0.2").json()
        beat(api, "w1", worker["worker_token"], "document-processing", port_of(elsewhere))
        eventually(lambda: admin_workers(api)["w1"]["port_checks"].get("document-processing"), what="the verdict")
        time.sleep(0.2)
        assert elsewhere.hits == 0
        assert table(api, "document-processing") == []


def test_ports_the_coordinator_never_checks(tmp_path: Path) -> None:
    with serving("/health") as own, make(tmp_path, port=port_of(own)) as api:
        worker = join(api, advertise_host="127.0.0.1").json()
        token = worker["worker_token"]
        for port, why in ((port_of(own), "the coordinator's own port"), (80, "outside 1024-65535")):
            beat(api, "w1", token, "document-processing", port)
            check = admin_workers(api)["w1"]["port_checks"]["document-processing"]
            assert why in check["reason"] and check["state"] == "refused"
            assert table(api, "document-processing") == []
        time.sleep(0.2)
        assert own.hits == 0


def test_a_worker_cannot_make_the_coordinator_probe_in_a_loop(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack, make(tmp_path) as api:
        servers = [stack.enter_context(serving("/")) for _ in range(10)]
        worker = join(api, advertise_host="127.0.0.1").json()
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            for server in servers:  # a new port every beat, as fast as it can
                beat(api, "w1", worker["worker_token"], "document-processing", port_of(server))
        time.sleep(0.3)
        # At most one check per worker per second: two in 1.5 s, however many beats asked.
        assert 1 <= sum(s.hits for s in servers) <= 2, [s.hits for s in servers]


def test_a_port_that_failed_its_check_is_retried_later_not_every_beat(tmp_path: Path) -> None:
    with serving("/") as server, make(tmp_path) as api:
        worker = join(api, advertise_host="127.0.0.1").json()
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            beat(api, "w1", worker["worker_token"], "document-processing", port_of(server))
            time.sleep(0.05)
        assert server.hits == 1  # failed once at ~0 s; the next try waits 2 s, past these beats


# -- finding 2: worker routes check the token before they say whether the id exists --------------------

def worker_call(api: TestClient, route: str, worker_id: str, headers: dict[str, str]) -> Any:
    if route == "unregister":
        return api.delete(f"/api/worker/unregister/{worker_id}", headers=headers)
    if route == "watch":
        return api.get(f"/api/worker/watch/{worker_id}", headers=headers)
    return api.post("/api/worker/heartbeat", json={"worker_id": worker_id}, headers=headers)


@pytest.mark.parametrize("route", ["unregister", "watch", "heartbeat"])
def test_an_unknown_worker_id_answers_like_a_known_one_with_a_bad_token(tmp_path: Path, route: str) -> None:
    with make(tmp_path) as api:
        assert join(api, "known", advertise_host="127.0.0.1").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            known = worker_call(api, route, "known", headers)
            ghost = worker_call(api, route, "ghost", headers)
            assert known.status_code == ghost.status_code == 401, (headers, known.text, ghost.text)
            assert known.json() == ghost.json()


def test_the_admin_token_may_learn_that_an_id_is_unknown(tmp_path: Path) -> None:
    with make(tmp_path, admin_token="adm1n") as api:
        assert api.delete("/api/worker/unregister/ghost", headers=ADMIN).status_code == 404


# -- finding 3: the coordinator's store keys are not the edge proxy's client keys -----------------------

def test_store_credentials_need_a_store_key(tmp_path: Path) -> None:
    with make(tmp_path, admin_token="adm1n", store_keys=("st0re-key",)) as api:
        storage = join(api, "s1", {"worker_type": "storage", "engines": ["redis-server"]},
                       advertise_host="127.0.0.1").json()
        beat(api, "s1", storage["worker_token"], "redis", None)
        secret = {c["name"]: c for c in storage["service_configs"]}["redis"]["secret"]

        def found(headers: dict[str, str]) -> dict[str, Any]:
            workers: list[dict[str, Any]] = api.get("/api/services/discover/redis", headers=headers).json()["workers"]
            return workers[0]

        assert found({"X-API-Key": "st0re-key"})["secret"] == secret
        assert found(ADMIN)["connection_url"] == f"redis://:{secret}@127.0.0.1:6379/0"
        for headers in ({}, {"X-API-Key": "edge-key"}, {"Authorization": "Bearer st0re-key"}):
            assert "secret" not in found(headers) and "connection_url" not in found(headers), headers


def test_vouched_networks_are_cidrs_or_addresses() -> None:
    from rma.coordinator.auth import parse_networks

    found = parse_networks(" 10.8.0.0/16, 192.0.2.7 ,,2001:db8::/32")
    assert [str(n) for n in found] == ["10.8.0.0/16", "192.0.2.7/32", "2001:db8::/32"]
    with pytest.raises(ValueError, match="'10.8.0.0/33'"):
        parse_networks("10.8.0.0/33")
