"""Failover time and the worker agent's own footprint, with real processes on loopback.

1. For heartbeat intervals of 1 s and 5 s: a coordinator and two storage workers; kill -9 the
   worker running redis and time until discovery reports redis healthy on the survivor.
   Target: <= 2 intervals + the service's own start time. A killed process's sockets close, so
   the coordinator sees its watch stream drop; a machine that vanishes without closing them
   (simulated by SIGSTOP, which freezes the worker with its connections open) is found by the
   heartbeat grace (3 intervals) instead, and is timed too.
2. Footprint: RSS and idle CPU of a process supervising three real redis-servers with the
   default supervision policy (targets: < 100 MB, < 1% of a core), and of a real worker agent.

Run: .venv/bin/python bench/failover.py
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

MEASURE_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=out, env={**os.environ, **(env or {})},
                                start_new_session=True)


def end(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(check: Any, timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except (httpx.HTTPError, OSError, KeyError):
            pass
        time.sleep(step)
    raise TimeoutError("condition not reached")


def redis_on(url: str, worker_id: str) -> dict[str, Any] | None:
    answer = httpx.get(f"{url}/api/services/discover/redis", timeout=2)
    if answer.status_code != 200:
        return None
    return next((w for w in answer.json()["workers"] if w["worker_id"] == worker_id), None)


def redis_start_time(folder: Path) -> float:
    """Seconds from spawning redis-server to its first PONG."""
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL)

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    try:
        wait_for(pong, 10, 0.01)
        return time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait()


def failover(interval: float, root: Path, death: int = signal.SIGKILL) -> tuple[float, dict[str, float]]:
    root.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    coordinator = spawn(["-m", "rma", "coordinator", "--port", str(port), "--data-dir", str(root / "coordinator"),
                         "--heartbeat-interval", str(interval)], root / "coordinator.log")
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 30)
        for name in ("w-a", "w-b"):
            env = {"WORKER_TYPE": "storage", "COORDINATOR_URL": url, "WORKER_ID": name,
                   "DATA_DIR": str(root / name), "ADVERTISE_HOST": "127.0.0.1"}
            workers[name] = spawn(["-m", "rma.worker"], root / f"{name}.log", env)
            if name == "w-a":
                wait_for(lambda: redis_on(url, "w-a"), 30)
        wait_for(lambda: any(w["worker_id"] == "w-b" for w in
                             httpx.get(f"{url}/api/admin/workers", timeout=2).json()["workers"]), 20)
        footprint = idle_footprint(psutil.Process(workers["w-a"].pid), seconds=3 * interval + 2)
        os.killpg(workers["w-a"].pid, death)
        killed = time.monotonic()
        wait_for(lambda: redis_on(url, "w-b"), 20 * interval + 30, 0.02)
        return time.monotonic() - killed, footprint
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)  # a frozen worker must run again to stop
            end(proc)
        end(coordinator)


def idle_footprint(proc: psutil.Process, seconds: float) -> dict[str, float]:
    """RSS (MB) and mean CPU (% of one core) of `proc` alone over `seconds`."""
    proc.cpu_percent(None)
    time.sleep(seconds)
    return {"rss_mb": proc.memory_info().rss / 2**20, "cpu_percent": proc.cpu_percent(None)}


async def supervise_three(folder: Path) -> None:
    """Child mode: supervise three real redis-servers with the default policy until SIGTERM."""
    from rma.services.redis import Redis
    from rma.worker.supervisor import Placement, Supervisor

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sups = [Supervisor(Redis(), Placement("127.0.0.1", free_port(), folder / f"redis-{i}", folder / f"redis-{i}.log",
                                          secret=secrets.token_urlsafe(24)))
            for i in range(3)]
    async with asyncio.TaskGroup() as group:
        for sup in sups:
            group.create_task(sup.run())
        while not stop.is_set():
            (folder / "healthy").write_text(str(sum(s.status.state == "healthy" for s in sups)))
            await asyncio.sleep(1)
        for sup in sups:
            sup.stop()


def footprint_of_three(root: Path) -> dict[str, float]:
    root.mkdir(parents=True)
    child = spawn([__file__, "--supervise-three", str(root)], root / "child.log")
    try:
        wait_for(lambda: (root / "healthy").read_text() == "3", 30)
        return idle_footprint(psutil.Process(child.pid), MEASURE_S)
    finally:
        end(child)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rma-bench-") as tmp:
        root = Path(tmp)
        (root / "start").mkdir()
        start = min(redis_start_time(root / "start") for _ in range(3))
        print(f"redis-server start time (spawn to first PONG): {start:.2f} s")
        for interval, death in ((1.0, signal.SIGKILL), (5.0, signal.SIGKILL), (1.0, signal.SIGSTOP)):
            took, agent = failover(interval, root / f"interval-{interval:g}-{death.name}", death)
            if death == signal.SIGKILL:
                target = 2 * interval + start
                verdict = f"target <= {target:.2f} s: {'met' if took <= target else 'MISSED'}"
                how = "kill -9"
            else:
                verdict = "found by the heartbeat grace, 3 intervals after the last beat"
                how = "freezing the worker (SIGSTOP: its sockets stay open)"
            print(f"failover at {interval:g} s heartbeats: {took:.2f} s from {how} to healthy redis on the survivor"
                  f" ({verdict}; {took / interval:.1f} intervals)")
            print(f"  worker agent of a storage worker (supervising every store it runs) at {interval:g} s heartbeats:"
                  f" RSS {agent['rss_mb']:.1f} MB, CPU {agent['cpu_percent']:.2f}% of a core")
        three = footprint_of_three(root / "three")
        print(f"supervising three redis-servers for {MEASURE_S:g} s: RSS {three['rss_mb']:.1f} MB (target < 100),"
              f" CPU {three['cpu_percent']:.2f}% of a core (target < 1)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--supervise-three":
        asyncio.run(supervise_three(Path(sys.argv[2])))
    else:
        main()
