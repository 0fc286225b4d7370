"""The universal worker end to end: a real coordinator, real workers, real redis-server, loopback, 1 s beats."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from procs import RmaProcess, free_port, start_coordinator, start_worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
INTERVAL = 1.0
REDIS_START_S = 2.0  # redis-server answers PING well within this on a loaded 2-core machine


def discover(url: str, service: str) -> dict[str, Any] | None:
    response = httpx.get(f"{url}/api/services/discover/{service}", timeout=2)
    return response.json() if response.status_code == 200 else None


def workers(url: str) -> dict[str, dict[str, Any]]:
    return {w["worker_id"]: w for w in httpx.get(f"{url}/api/admin/workers", timeout=2).json()["workers"]}


def redis_ping(replica: dict[str, Any], password: str | None = None) -> bool:
    """PING a replica with the password discovery gave (loopback callers are admins without RMA_ADMIN_TOKEN)."""
    with socket.create_connection(("127.0.0.1", replica["port"]), timeout=2) as sock:
        answers = sock.makefile("rb")
        sock.sendall(f"AUTH {password or replica['secret']}\r\nPING\r\n".encode())
        return answers.readline().startswith(b"+OK") and answers.readline().startswith(b"+PONG")


def service_pid(worker: RmaProcess, binary: str) -> int:
    for child in psutil.Process(worker.pid).children(recursive=True):
        if child.name() == binary:
            return child.pid
    raise KeyError(binary)


def redis_on(url: str, worker_id: str | None = None) -> dict[str, Any] | None:
    found = discover(url, "redis")
    if not found:
        return None
    for replica in found["workers"]:
        if worker_id is None or replica["worker_id"] == worker_id:
            return replica
    return None


def test_three_workers_get_services_started_and_healthy(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=INTERVAL)
    processes.append(coordinator)
    for kind in ("storage", "edge", "cpu"):
        start_worker(processes, tmp_path, url, kind, f"w-{kind}")
    replica = wait_until(lambda: redis_on(url, "w-storage"), 20, what="redis healthy on the storage worker")
    assert redis_ping(replica)
    edge = wait_until(lambda: discover(url, "edge-proxy"), 30, what="an edge proxy on the edge worker")
    assert edge["workers"][0]["worker_id"] == "w-edge"
    # A coordinator on its own SQLite file gives the edge worker no replica: it would be a second pool.
    gaps = {g["service"]: g for g in httpx.get(f"{url}/api/admin/gaps", timeout=2).json()["gaps"]}
    assert gaps["coordinator"]["current_workers"] == 0 and "needs a shared store" in gaps["coordinator"]["reason"]
    pool = workers(url)
    assert pool["w-cpu"]["capabilities"]["worker_type"] == "cpu"
    assert "redis-server" in pool["w-storage"]["capabilities"]["engines"]
    assert (tmp_path / "w-storage" / "logs" / "redis.log").stat().st_size > 0


def test_killed_worker_services_heal_on_a_survivor(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=INTERVAL)
    processes.append(coordinator)
    first = start_worker(processes, tmp_path, url, "storage", "w-a")
    wait_until(lambda: redis_on(url, "w-a"), 20, what="redis on w-a")
    start_worker(processes, tmp_path, url, "storage", "w-b")
    wait_until(lambda: "w-b" in workers(url), 10, what="w-b registered")
    first.kill9()
    killed = time.monotonic()
    replica = wait_until(lambda: redis_on(url, "w-b"), 3 * INTERVAL + REDIS_START_S + 10, interval=0.05,
                         what="redis healthy on the survivor")
    took = time.monotonic() - killed
    assert redis_ping(replica)
    # The dead worker's watch stream drops at once: down one interval later, the survivor is told
    # straight away and reports the service as soon as it is healthy. Target: 2 intervals + start.
    assert took <= 2 * INTERVAL + REDIS_START_S + 0.5, f"healed in {took:.1f}s"


def test_killed_service_is_restarted_and_reported(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=INTERVAL)
    processes.append(coordinator)
    worker = start_worker(processes, tmp_path, url, "storage", "w-s")
    wait_until(lambda: redis_on(url, "w-s"), 20, what="redis on w-s")
    first = service_pid(worker, "redis-server")
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: workers(url)["w-s"]["services_status"]["redis"]["restarts"] >= 1, 10, what="a reported restart")
    replica = wait_until(lambda: redis_on(url, "w-s"), 10, what="redis healthy again")
    assert redis_ping(replica)
    assert service_pid(worker, "redis-server") != first


def test_coordinator_restart_does_not_restart_services(processes: list[RmaProcess], tmp_path: Path) -> None:
    port = free_port()
    coordinator, url = start_coordinator(tmp_path, port=port, interval=INTERVAL)
    worker = start_worker(processes, tmp_path, url, "storage", "w-s")
    try:
        replica = wait_until(lambda: redis_on(url, "w-s"), 20, what="redis on w-s")
        before = service_pid(worker, "redis-server")
        coordinator.kill9()
        time.sleep(2 * INTERVAL)  # workers beat into the void; services must carry on
        assert redis_ping(replica)
    finally:
        coordinator.stop()
    coordinator, url = start_coordinator(tmp_path, port=port, interval=INTERVAL)
    processes.append(coordinator)
    wait_until(lambda: workers(url)["w-s"]["healthy"] and redis_on(url, "w-s"), 15, what="w-s back with redis")
    assert service_pid(worker, "redis-server") == before
    assert workers(url)["w-s"]["services_status"]["redis"]["restarts"] == 0


def test_busy_default_port_is_replaced_and_discovered(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=INTERVAL)
    processes.append(coordinator)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(("127.0.0.1", 6379))
            squatter.listen()
        except OSError:
            pass  # something already holds 6379: busy either way
        start_worker(processes, tmp_path, url, "storage", "w-s")
        replica = wait_until(lambda: redis_on(url, "w-s"), 20, what="redis on a free port")
        assert replica["port"] != 6379
        assert redis_ping(replica)


def redis_command(replica: dict[str, Any], *args: str) -> bytes:
    """One authenticated command in RESP; returns the reply's first line (and the bulk line, if any)."""
    with socket.create_connection(("127.0.0.1", replica["port"]), timeout=2) as sock:
        answers = sock.makefile("rb")
        command = ("AUTH", replica["secret"]), args
        for parts in command:
            sock.sendall(f"*{len(parts)}\r\n".encode() + b"".join(
                f"${len(p.encode())}\r\n{p}\r\n".encode() for p in parts))
        assert answers.readline().startswith(b"+OK")
        reply = answers.readline()
        return reply + answers.readline() if reply.startswith(b"$") and not reply.startswith(b"$-1") else reply


def test_store_data_survives_a_killed_worker_and_needs_its_password(processes: list[RmaProcess],
                                                                      tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=INTERVAL)
    processes.append(coordinator)
    worker = start_worker(processes, tmp_path, url, "storage", "w-s")
    replica = wait_until(lambda: redis_on(url, "w-s"), 20, what="redis on w-s")
    assert redis_command(replica, "SET", "client:42:creditor", "Council Tax £1,240").startswith(b"+OK")
    assert not redis_ping(replica, password="not-the-password")

    worker.kill9()
    start_worker(processes, tmp_path, url, "storage", "w-s")  # same id, same data dir

    def rejoined() -> bool:
        events = httpx.get(f"{url}/api/admin/events", timeout=2).json()["events"]
        return any(e["kind"] == "rejoined" and e["worker_id"] == "w-s" for e in events)

    replica = wait_until(lambda: rejoined() and redis_on(url, "w-s"), 20, what="redis back on the restarted w-s")
    assert redis_command(replica, "GET", "client:42:creditor").endswith("Council Tax £1,240\r\n".encode())
