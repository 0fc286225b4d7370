"""A pool on the mesh, for real: `rma coordinator` as its CA and `rma worker`s behind home routers.

    edge ns  198.18.0.10  the coordinator (RMA_MESH_NETWORK) and an edge worker: the lighthouse and relay
    h1       behind plain masquerade     a storage worker
    h2       behind a symmetric NAT      a storage worker, reached through the relay
    app      behind plain masquerade     an application's server, a client member (`rma client-cert`)
    h4       behind plain masquerade     a cpu worker: applications, which users reach through the edge proxy

No home has an inbound port. Each worker makes its key, joins with it, runs Nebula and binds its
services to its overlay address; routers and the coordinator list it there. A service on a home is
reached over the mesh from the edge, never off it, nor from another store (the catalogue's tier fences);
the load balancer passes on only the calls the catalogue names (document-processing → vision-ocr);
kill -9 of a home worker moves its redis to the other home, reached through the relay; a revocation is in
every member's blocklist within a heartbeat interval, and Nebula cuts the worker off a second or two later.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mesh.netns import Site, SmallInternet, skip_reason, small_internet, wait_until
from rma.catalog import BY_NAME, PUBLIC

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
NETWORK = ipaddress.IPv4Network("198.19.0.0/16")
INTERVAL = 1.0
ADMIN, JOIN = "adm1n-mesh-test", "j0in-mesh-test"
EDGE_PROXY_PORT = BY_NAME["edge-proxy"].port


class Pool:
    def __init__(self, net: SmallInternet, folder: Path) -> None:
        self.net, self.folder = net, folder
        self.coordinator = f"http://{net.edge_address}:8080"
        self.workers: dict[str, Any] = {}

    def start_worker(self, name: str, ns: str, kind: str, advertise: str | None = None) -> None:
        env = {"WORKER_TYPE": kind, "COORDINATOR_URL": self.coordinator, "WORKER_ID": name,
               "DATA_DIR": str(self.folder / name), "RMA_JOIN_TOKEN": JOIN}
        if advertise:
            env["ADVERTISE_HOST"] = advertise
        self.workers[name] = self.net.start(ns, [sys.executable, "-m", "rma", "worker"], self.folder / f"{name}.log",
                                            env=env)

    def admin(self, path: str, method: str = "GET") -> Any:
        """An admin call to the coordinator, from the edge namespace (the coordinator is not on loopback)."""
        def call() -> Any:
            try:
                answer = httpx.request(method, f"{self.coordinator}{path}", timeout=3,
                                       headers={"Authorization": f"Bearer {ADMIN}"})
            except httpx.HTTPError:
                return None
            return answer.json() if answer.status_code == 200 else None
        return self.net.call(self.net.edge_ns, call)

    def listed(self) -> dict[str, dict[str, Any]]:
        return {w["worker_id"]: w for w in (self.admin("/api/admin/workers") or {"workers": []})["workers"]}

    def redis_on(self, worker_id: str) -> dict[str, Any] | None:
        found = self.admin("/api/services/discover/redis")
        return next((r for r in (found or {"workers": []})["workers"] if r["worker_id"] == worker_id), None)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]


def redis_ping(host: str, port: int, password: str, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            replies = sock.makefile("rb")
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            return replies.readline().startswith(b"+OK") and replies.readline().startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("pool-on-mesh")
    top = tmp_path_factory.getbasetemp()
    for entered in (folder, top, top.parent):  # the stores' own accounts (postgres, rma) pass through to their data
        entered.chmod(entered.stat().st_mode | 0o011)
    with small_internet(folder / "net", [Site("h1"), Site("h2", symmetric=True), Site("app"), Site("h4")]) as net:
        running = Pool(net, folder)
        net.start(net.edge_ns, [sys.executable, "-m", "rma", "coordinator", "--host", net.edge_address, "--port",
                                "8080", "--data-dir", str(folder / "coordinator"), "--heartbeat-interval",
                                str(INTERVAL)], folder / "coordinator.log",
                  env={"RMA_MESH_NETWORK": str(NETWORK), "RMA_JOIN_TOKEN": JOIN, "RMA_ADMIN_TOKEN": ADMIN})
        wait_until(lambda: running.admin("/health"), 30, what="the coordinator up")
        running.start_worker("edge", net.edge_ns, "edge", advertise=net.edge_address)
        wait_until(lambda: "edge" in running.listed(), 40, what=f"the edge worker joined\n{running.log('edge')}")
        running.start_worker("h1", net.homes["h1"].ns, "storage")
        running.start_worker("h4", net.homes["h4"].ns, "cpu")  # its engines load while the other tests run
        yield running


def test_home_workers_join_with_no_inbound_port_and_are_listed_at_their_overlay_address(pool: Pool) -> None:
    replica = wait_until(lambda: pool.redis_on("h1"), 60, what=f"redis healthy on h1\n{pool.log('h1')}")
    listed = pool.listed()
    for name in ("edge", "h1"):
        assert ipaddress.IPv4Address(listed[name]["host"]) in NETWORK, listed[name]
    assert replica["host"] == listed["h1"]["host"]
    home = pool.net.homes["h1"]
    # From the edge, over the mesh: redis answers at the overlay address.
    assert pool.net.call(pool.net.edge_ns, redis_ping, replica["host"], replica["port"], replica["secret"])
    # Off the mesh it is not there: redis binds the overlay address only (the home's own LAN, its router).
    assert not pool.net.call(home.router_ns, redis_ping, home.address, replica["port"], replica["secret"], 1.0)
    # And no home has an inbound port on its router: nothing on the internet reaches it.
    assert not pool.net.call(pool.net.edge_ns, redis_ping, home.public, replica["port"], replica["secret"], 1.0)


def test_a_store_is_fenced_and_a_killed_home_workers_redis_is_served_by_the_other_home_through_the_relay(
        pool: Pool) -> None:
    on_h1 = wait_until(lambda: pool.redis_on("h1"), 60, what="redis healthy on h1")
    pool.start_worker("h2", pool.net.homes["h2"].ns, "storage")
    wait_until(lambda: "h2" in pool.listed(), 40, what=f"h2 joined\n{pool.log('h2')}")
    edge_overlay = pool.listed()["edge"]["host"]
    h2 = pool.net.homes["h2"].ns
    wait_until(lambda: pool.net.ping(h2, edge_overlay), 20, what="h2 on the mesh")
    # The tier fence: a store is reached by the routers, the applications and clients, not by another store.
    assert not pool.net.call(h2, redis_ping, on_h1["host"], on_h1["port"], on_h1["secret"], 1.0)
    assert pool.net.call(pool.net.edge_ns, redis_ping, on_h1["host"], on_h1["port"], on_h1["secret"])
    pool.workers["h1"].kill()  # kill -9 of the worker (its Nebula dies with it)
    killed = time.monotonic()
    replica = wait_until(lambda: pool.redis_on("h2"), 60, what=f"redis healthy on h2\n{pool.log('h2')}")
    assert pool.net.call(pool.net.edge_ns, redis_ping, replica["host"], replica["port"], replica["secret"])
    print(f"redis served from h2 (behind the symmetric NAT) {time.monotonic() - killed:.1f} s after h1 died")


def test_an_applications_server_joins_as_a_client_member_and_reaches_the_stores(pool: Pool) -> None:
    replica = wait_until(lambda: pool.redis_on("h2"), 60, what="redis healthy on h2")
    app, folder = pool.net.homes["app"].ns, pool.folder / "app-member"
    made = pool.net.run(app, sys.executable, "-m", "rma", "client-cert", "app", "--dir", str(folder),
                        "--coordinator", pool.coordinator, timeout=30, env={"RMA_ADMIN_TOKEN": ADMIN})
    assert "is a client member" in made.stdout, made.stdout + made.stderr
    assert (folder / "host.key").stat().st_mode & 0o777 == 0o600
    pool.net.start(app, ["nebula", "-config", str(folder / "config.json")], pool.folder / "app-nebula.log")
    assert wait_until(lambda: pool.net.call(app, redis_ping, replica["host"], replica["port"], replica["secret"],
                                            1.0), 20, what="redis on h2 from the client member")
    # h2, behind the symmetric NAT, says so: the client's tunnel to it is relayed, the edge's direct.
    tunnels = wait_until(lambda: (t := (pool.listed()["h2"]["mesh"] or {}).get("tunnels")) and t["relayed"] and t,
                         10, what="h2 reporting its relayed tunnel")
    assert tunnels["direct"] >= 1 and 0 < tunnels["lighthouse_rtt_ms"] < 100, tunnels


def test_the_load_balancer_passes_on_only_the_calls_the_catalogue_names(pool: Pool) -> None:
    wait_until(lambda: any(r["worker_id"] == "h4" for r in
                           (pool.admin("/api/services/discover/document-processing") or {"workers": []})["workers"]),
               120, what=f"document-processing healthy on h4\n{pool.log('h4')}")
    balancer = pool.admin("/api/services/discover/load-balancer")["workers"][0]

    def call(ns: str, service: str) -> str | None:
        return pool.net.http_get(ns, balancer["host"], balancer["port"], f"/service/{service}/health", timeout=2)

    h4 = pool.net.homes["h4"].ns
    # h4 runs document-processing, which sends scanned pages to vision-ocr: that call passes (the load balancer's
    # table lists h4 within a second), answered by vision-ocr or by the router saying it has no replica.
    passed = wait_until(lambda: (a := call(h4, "vision-ocr")) is not None and "may not call" not in a and a, 20,
                        what="h4's call to vision-ocr through the load balancer")
    assert "may not call" not in passed, passed
    # Nothing calls ner-extraction through it; h4's Nebula passes the packets, the load balancer refuses the call.
    assert "may not call ner-extraction" in (call(h4, "ner-extraction") or ""), call(h4, "ner-extraction")
    # A store and a client member are not let near it at all: Nebula drops their packets.
    for member in ("h2", "app"):
        assert call(pool.net.homes[member].ns, "vision-ocr") is None, member


def test_a_users_request_through_the_edge_proxy_reaches_an_application_on_a_home(pool: Pool) -> None:
    def serving_on_h4() -> str | None:
        for name in sorted(PUBLIC):
            found = pool.admin(f"/api/services/discover/{name}")
            if found and any(r["worker_id"] == "h4" for r in found["workers"]):
                return name
        return None

    name = wait_until(serving_on_h4, 120, what=f"an application healthy on h4\n{pool.log('h4')}")
    # From a home on the internet (not a member): the edge proxy's public address, the only way in.
    user = pool.net.homes["app"].ns
    answer = wait_until(lambda: pool.net.http_get(user, pool.net.edge_address, EDGE_PROXY_PORT,
                                                  f"/service/{name}/health", timeout=3), 20,
                        what=f"{name} through the edge proxy")
    assert '"status"' in answer and "no healthy replica" not in answer, answer
    print(f"{name} on h4 answered through the edge proxy: {answer[:80]}")


def test_a_revocation_reaches_every_blocklist_within_an_interval_and_cuts_the_worker_off(pool: Pool) -> None:
    replica = wait_until(lambda: pool.redis_on("h2"), 60, what="redis healthy on h2")
    revoked = pool.admin("/api/admin/mesh/revoke/h2", method="POST")
    assert revoked is not None and revoked["fingerprints"], revoked
    issued = time.monotonic()
    members = [name for name in ("edge", "h4") if name in pool.workers]

    def blocked_everywhere() -> bool:
        return all(set(revoked["fingerprints"]) <= set(json.loads(
            (pool.folder / name / "mesh" / "config.json").read_text())["pki"]["blocklist"]) for name in members)

    wait_until(blocked_everywhere, 5, interval=0.02, what="the fingerprints in every member's blocklist")
    reached = time.monotonic() - issued
    assert reached <= INTERVAL, f"the blocklist took {reached:.2f} s to reach {members}"
    # Nebula then cuts the live tunnels at its next connection check (timers.connection_alive_interval: 1 s).
    wait_until(lambda: not pool.net.call(pool.net.edge_ns, redis_ping, replica["host"], replica["port"],
                                         replica["secret"], 0.5), 15, what="h2 cut off from the edge")
    print(f"h2's fingerprints in every blocklist {reached:.2f} s after its revocation, its redis unreachable from the "
          f"edge {time.monotonic() - issued:.1f} s after (probes time out at 0.5 s)")
