"""A real `rma coordinator` process over real sockets: crash with kill -9, restart, self-heal."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import RmaProcess, free_port, start_coordinator, wait_until

pytestmark = pytest.mark.slow


def register(url: str, worker_id: str, kind: str, engines: list[str]) -> dict[str, Any]:
    response = httpx.post(f"{url}/api/worker/register", timeout=5, json={
        "worker_id": worker_id, "advertise_host": "127.0.0.1",
        "capabilities": {"worker_type": kind, "engines": engines}})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def beat(url: str, worker_id: str, token: str, services: list[str]) -> httpx.Response:
    return httpx.post(f"{url}/api/worker/heartbeat", timeout=5, headers={"Authorization": f"Bearer {token}"},
                      json={"worker_id": worker_id,
                            "services_status": {s: {"state": "healthy"} for s in services}})


def test_kill_9_right_after_registration_loses_nothing(tmp_path: Path, processes: list[RmaProcess]) -> None:
    port = free_port()
    coordinator, url = start_coordinator(tmp_path, port=port)
    processes.append(coordinator)
    assert "registration is accepted from loopback only" in coordinator.log()
    workers = {f"w{i}": register(url, f"w{i}", kind, ["spacy", "pdf-docx", "redis-server"])
               for i, kind in enumerate(["cpu", "cpu", "storage"])}
    coordinator.kill9()

    restarted, url = start_coordinator(tmp_path, port=port)
    processes.append(restarted)
    listed = {w["worker_id"]: w for w in httpx.get(f"{url}/api/admin/workers").json()["workers"]}
    assert set(listed) == set(workers)
    for worker_id, answer in workers.items():
        assert listed[worker_id]["assigned_services"] == answer["assigned_services"]
        # The worker's token survived too: it carries on without re-registering.
        response = beat(url, worker_id, answer["worker_token"], answer["assigned_services"])
        assert response.status_code == 200
        assert response.json()["assigned_services"] == answer["assigned_services"]


def test_a_restarted_coordinators_first_routing_table_has_every_replica_it_knew(tmp_path: Path,
                                                                            processes: list[RmaProcess]) -> None:
    """Routers refresh every second: a table emptied by a restart would be 503s for everything meanwhile."""
    port = free_port()
    coordinator, url = start_coordinator(tmp_path, port=port, interval=5.0)
    processes.append(coordinator)
    workers = {name: register(url, name, kind, engines) for name, kind, engines in (
        ("s1", "storage", ["redis-server"]), ("c1", "cpu", ["spacy"]))}
    for name, answer in workers.items():
        beat(url, name, answer["worker_token"], answer["assigned_services"])
    before = httpx.get(f"{url}/api/services/table").json()["services"]
    assert [r["worker_id"] for r in before["redis"]] == ["s1"] and before["ner-extraction"]
    coordinator.kill9()
    restarted, url = start_coordinator(tmp_path, port=port, interval=5.0)
    processes.append(restarted)
    first = httpx.get(f"{url}/api/services/table").json()["services"]  # before any worker has beaten again
    assert {name: [(r["worker_id"], r["port"]) for r in replicas] for name, replicas in first.items() if replicas} == {
        name: [(r["worker_id"], r["port"]) for r in replicas] for name, replicas in before.items() if replicas}


def test_dead_workers_service_moves_to_a_survivor_within_grace(tmp_path: Path,
                                                               processes: list[RmaProcess]) -> None:
    interval = 0.5
    coordinator, url = start_coordinator(tmp_path, interval=interval)
    processes.append(coordinator)
    first = register(url, "s1", "storage", ["redis-server"])
    second = register(url, "s2", "storage", ["redis-server"])
    assert first["assigned_services"] == ["redis"] and second["assigned_services"] == []
    beat(url, "s1", first["worker_token"], ["redis"])

    died = time.monotonic()  # s1 stops beating from here on, as if killed

    def survivor_has_redis() -> bool:
        answer = beat(url, "s2", second["worker_token"], []).json()
        return "redis" in answer["assigned_services"]

    wait_until(survivor_has_redis, timeout=10 * interval, interval=interval / 5, what="redis re-placed on s2")
    elapsed = time.monotonic() - died
    # Down after 3 silent intervals, re-placed on the survivor's next beat (+ one timer tick of slack).
    assert elapsed <= 3 * interval + interval, elapsed
    gaps = {g["service"]: g for g in httpx.get(f"{url}/api/admin/gaps").json()["gaps"]}
    assert gaps["redis"]["current_workers"] == 1
    events = [e["kind"] for e in httpx.get(f"{url}/api/admin/events").json()["events"]]
    assert "down" in events


def test_join_token_from_the_environment(tmp_path: Path, processes: list[RmaProcess]) -> None:
    coordinator, url = start_coordinator(tmp_path, env={"RMA_JOIN_TOKEN": "t0ken", "RMA_ADMIN_TOKEN": "adm-7f3kq"})
    processes.append(coordinator)
    body = {"worker_id": "c1", "capabilities": {"worker_type": "cpu"}}
    assert httpx.post(f"{url}/api/worker/register", json=body).status_code == 401
    ok = httpx.post(f"{url}/api/worker/register", json=body, headers={"Authorization": "Bearer t0ken"})
    assert ok.status_code == 200
    assert httpx.get(f"{url}/api/admin/workers").status_code == 401
    assert httpx.get(f"{url}/api/admin/workers", headers={"Authorization": "Bearer adm-7f3kq"}).status_code == 200
    assert "t0ken" not in coordinator.log() and "adm-7f3kq" not in coordinator.log()


def open_watch(url: str, worker_id: str, token: str) -> socket.socket:
    """A worker's watch stream on a raw socket, so the test can drop it as a killed process would."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(f"GET /api/worker/watch/{worker_id} HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    assert b" 200 " in sock.recv(4096).split(b"\r\n", 1)[0]
    return sock


def test_a_dropped_watch_stream_heals_within_one_interval(tmp_path: Path, processes: list[RmaProcess]) -> None:
    interval = 1.0
    coordinator, url = start_coordinator(tmp_path, interval=interval)
    processes.append(coordinator)
    first = register(url, "s1", "storage", ["redis-server"])
    second = register(url, "s2", "storage", ["redis-server"])
    beat(url, "s1", first["worker_token"], ["redis"])
    beat(url, "s2", second["worker_token"], [])
    dying = open_watch(url, "s1", first["worker_token"])
    pushed: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{url}/api/worker/watch/s2", timeout=10,
                      headers={"Authorization": f"Bearer {second['worker_token']}"}) as stream:
        lines = stream.iter_lines()
        assert json.loads(next(lines))["assigned_services"] == []
        dying.close()  # s1's process is gone; s2 never beats again during this test
        dropped = time.monotonic()
        for line in lines:
            if line.strip():
                pushed.append(json.loads(line))
                break
    took = time.monotonic() - dropped
    assert pushed and pushed[0]["assigned_services"] == ["redis"]
    # One interval of suspicion plus one timer tick (a quarter interval), never the 3-interval grace.
    assert took < interval * 1.25 + 0.3, took
    down = [e for e in httpx.get(f"{url}/api/admin/events").json()["events"] if e["kind"] == "down"]
    assert "watch stream dropped" in down[0]["detail"]


def test_watch_needs_the_workers_token(tmp_path: Path, processes: list[RmaProcess]) -> None:
    coordinator, url = start_coordinator(tmp_path)
    processes.append(coordinator)
    register(url, "s1", "storage", ["redis-server"])
    known = httpx.get(f"{url}/api/worker/watch/s1", headers={"Authorization": "Bearer nope"})
    # An unknown id answers exactly as a known one with a bad token: ids cannot be enumerated.
    ghost = httpx.get(f"{url}/api/worker/watch/ghost", headers={"Authorization": "Bearer nope"})
    assert known.status_code == ghost.status_code == 401 and known.json() == ghost.json()


def test_the_coordinators_own_service_route(tmp_path: Path, processes: list[RmaProcess]) -> None:
    coordinator, url = start_coordinator(tmp_path)
    processes.append(coordinator)
    own_port = int(url.rsplit(":", 1)[1])
    # Any HTTP server answering /health stands in for the worker's ner-extraction: a second coordinator.
    stand_in, stand_in_url = start_coordinator(tmp_path, name="stand-in")
    processes.append(stand_in)
    worker = register(url, "c1", "cpu", ["spacy"])
    assert worker["assigned_services"] == ["ner-extraction"]

    def report(port: int) -> None:
        httpx.post(f"{url}/api/worker/heartbeat", headers={"Authorization": f"Bearer {worker['worker_token']}"},
                   json={"worker_id": "c1", "services_status": {"ner-extraction": {"state": "healthy", "port": port}}})

    # A replica never serves on this very coordinator's port: that report is refused, never probed.
    report(own_port)
    checks = wait_until(lambda: httpx.get(f"{url}/api/admin/workers").json()["workers"][0]["port_checks"],
                        timeout=3, what="the refused port")
    assert "the coordinator's own port" in checks["ner-extraction"]["reason"]
    # The worker's replica moved off its assigned port: the coordinator checks the new port, then routes to it.
    report(int(stand_in_url.rsplit(":", 1)[1]))
    # The route reads the registry's table at most every half second.
    through = wait_until(lambda: (r := httpx.get(f"{url}/service/ner/health?verbose=1", timeout=5))
                         .status_code == 200 and r, timeout=5, what="a routable ner-extraction replica")
    assert through.json()["workers"]["total"] == 0  # the stand-in's own registry, not this one's
    uncovered = httpx.get(f"{url}/service/notes/x", timeout=5)
    assert uncovered.status_code == 503 and "notes-coa" in uncovered.text
    assert "reason" in uncovered.json()
    assert httpx.get(f"{url}/service/nonsense/x", timeout=5).status_code == 404


def test_rma_status_shows_workers_and_gaps(tmp_path: Path, processes: list[RmaProcess]) -> None:
    coordinator, url = start_coordinator(tmp_path)
    processes.append(coordinator)
    worker = register(url, "store-7", "storage", ["redis-server"])
    beat(url, "store-7", worker["worker_token"], ["redis"])
    shown = subprocess.run([sys.executable, "-m", "rma", "status", "--wide", "--coordinator", url], capture_output=True,
                           text=True, timeout=30, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "store-7" in shown.stdout and "redis (healthy)" in shown.stdout
    assert "chromadb" in shown.stdout and "critical" in shown.stdout and "engine chroma not available" in shown.stdout
    unreachable = subprocess.run([sys.executable, "-m", "rma", "status", "--coordinator", f"http://127.0.0.1:{free_port()}"],
                                 capture_output=True, text=True, timeout=30)
    assert unreachable.returncode == 1 and "cannot read the coordinator" in unreachable.stdout


def test_store_keys_not_the_edges_client_keys_read_store_credentials(tmp_path: Path,
                                                                    processes: list[RmaProcess]) -> None:
    coordinator, url = start_coordinator(tmp_path, env={
        "RMA_ADMIN_TOKEN": "adm-5v2", "RMA_API_KEYS": "edge-client-key", "RMA_STORE_KEYS": "store-key-a,store-key-b"})
    processes.append(coordinator)
    storage = register(url, "s1", "storage", ["redis-server"])
    beat(url, "s1", storage["worker_token"], ["redis"])

    def replica(headers: dict[str, str]) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(f"{url}/api/services/discover/redis", headers=headers).json()["workers"][0]
        return found

    # RMA_API_KEYS are the edge proxy's client keys: they reach services, not the stores' passwords.
    assert "secret" not in replica({"X-API-Key": "edge-client-key"})
    assert "secret" in replica({"X-API-Key": "store-key-b"})
    assert "connection_url" in replica({"Authorization": "Bearer adm-5v2"})
    assert "store-key-a" not in coordinator.log() and "edge-client-key" not in coordinator.log()


def test_a_bad_vouched_network_stops_the_coordinator_with_its_name(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "rma", "coordinator", "--data-dir", str(tmp_path), "--port",
                           str(free_port())], env={**os.environ, "RMA_VOUCHED_NETWORKS": "10.8.0.0/16,10.9.0.0/99"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "10.9.0.0/99" in done.stderr and "RMA_VOUCHED_NETWORKS" in done.stderr
