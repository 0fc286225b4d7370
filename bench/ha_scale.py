"""No single coordinator, at scale: three coordinators on a three-member etcd against one on SQLite, one run.

For each setup: N simulated workers register (spread over the coordinators), then heartbeat at
full speed, each to the coordinator it registered with. Printed per setup: registrations/s,
heartbeats/s and their p99, and the store's writes per second in each phase (etcd: transactions
committed, read off its revision; SQLite: none counted, it is the embedded default), and after how
many rounds of heartbeats placement settled (no assignment written) before the timed phase. Then, on
etcd, kill -9 of one coordinator: its workers beat to the next one (with the tokens they have,
never registering again) and the time from the kill to the last of them answered is printed,
with how many were refused (a coordinator that had not heard of them would say 404).

The load generator is bench/coordinator_scale.py's (raw keep-alive HTTP/1.1 on loopback) and shares
the machine's cores with every coordinator and etcd member: compare the rows, not the absolute figures.

    .venv/bin/python bench/ha_scale.py [--workers 10000] [--seconds 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' etcd cluster

from coordinator_scale import Connection, heartbeat, percentile, registration, start_coordinator  # noqa: E402
from etcd_cluster import EtcdCluster, skip_reason  # noqa: E402
from rma.coordinator.etcd import Etcd  # noqa: E402

MAX_SETTLING_ROUNDS = 10
SETTLE_S = 3.0


async def register(ports: list[int], count: int, connections: int) -> dict[str, tuple[int, str, bytes]]:
    """Register `count` workers over the coordinators in turn; worker id → (port, token, its heartbeat)."""
    workers: dict[str, tuple[int, str, bytes]] = {}
    queue = iter(range(count))

    async def run(port: int) -> None:
        conn = await Connection.open(port)
        for i in queue:
            status, body = await conn.post("/api/worker/register", registration(i, "engines"))
            if status != 200:
                raise RuntimeError(f"registration {i}: HTTP {status}: {body[:200]!r}")
            answer = json.loads(body)
            beat = heartbeat(answer["worker_id"], answer["assigned_services"], "engines")
            workers[answer["worker_id"]] = (port, answer["worker_token"], beat)
        conn.close()

    await asyncio.gather(*(run(ports[k % len(ports)]) for k in range(connections)))
    return workers


async def beat_all(workers: dict[str, tuple[int, str, bytes]], seconds: float, connections: int) -> list[float]:
    """Each worker beats to its own coordinator, round-robin, for `seconds` (0: one round); the latencies."""
    by_port: dict[int, list[tuple[str, bytes]]] = {}
    for port, token, beat in workers.values():
        by_port.setdefault(port, []).append((token, beat))
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def run(port: int, mine: list[tuple[str, bytes]]) -> None:
        conn = await Connection.open(port)
        i = 0
        while (time.perf_counter() < deadline) if seconds else i < len(mine):
            token, beat = mine[i % len(mine)]
            started = time.perf_counter()
            status, answer = await conn.post("/api/worker/heartbeat", beat, token)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"heartbeat: HTTP {status}: {answer[:200]!r}")
            i += 1
        conn.close()

    share = max(1, connections // len(by_port))
    await asyncio.gather(*(run(port, mine[k::share]) for port, mine in by_port.items() for k in range(share)))
    return latencies


async def fail_over(workers: list[tuple[str, bytes]], port: int, connections: int) -> tuple[float, int]:
    """Every one of `workers` beats to `port` once: seconds until the last answered, and how many were refused."""
    started, refused = time.perf_counter(), 0
    queue = iter(workers)

    async def run() -> None:
        nonlocal refused
        conn = await Connection.open(port)
        for token, beat in queue:
            status, _ = await conn.post("/api/worker/heartbeat", beat, token)
            refused += status != 200
        conn.close()

    await asyncio.gather(*(run() for _ in range(connections)))
    return time.perf_counter() - started, refused


def revision(etcd: Etcd | None) -> int:
    """The store's revision: one more per transaction committed."""
    return etcd.snapshot("/rma/placement")[1] if etcd else 0


def last_placed(etcd: Etcd | None) -> int:
    """The revision of the last assignment written (every one bumps /rma/placement)."""
    found = etcd.get("/rma/placement") if etcd else None
    return found.mod_revision if found else 0


def measure(label: str, ports: list[int], etcd: Etcd | None,
            args: argparse.Namespace) -> dict[str, tuple[int, str, bytes]]:
    before, started = revision(etcd), time.perf_counter()
    workers = asyncio.run(register(ports, args.workers, args.connections))
    registering = time.perf_counter() - started
    writes_registering = (revision(etcd) - before) / registering
    # Untimed rounds until placement settles: each worker's first beat replans it against the whole pool, and
    # on etcd an assignment that raced another coordinator's is planned again at the worker's next beat.
    rounds, placing = 0, True
    while placing and rounds < MAX_SETTLING_ROUNDS:
        before = last_placed(etcd)
        asyncio.run(beat_all(workers, 0, args.connections))
        rounds, placing = rounds + 1, last_placed(etcd) != before
    time.sleep(SETTLE_S if etcd else 0)  # each coordinator takes in the others' registrations from its watch
    before = revision(etcd)
    latencies = asyncio.run(beat_all(workers, args.seconds, args.connections))
    writes_beating = (revision(etcd) - before) / args.seconds
    store = f"{writes_registering:>9.0f} {writes_beating:>9.1f}" if etcd else f"{'-':>9} {'-':>9}"
    print(f"{label:<26} {args.workers / registering:>8.0f} {len(latencies) / args.seconds:>9.0f} "
          f"{percentile(latencies, 0.99) * 1000:>8.2f} {store} {rounds:>8}", flush=True)
    return workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=10.0, help="heartbeat phase length")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    uvloop.install()
    print(f"{args.workers} simulated workers; store writes/s while registering and while beating")
    print(f"{'setup':<26} {'reg/s':>8} {'beats/s':>9} {'p99 ms':>8} {'w/s reg':>9} {'w/s beat':>9} {'settled':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        proc, port = start_coordinator(folder / "sqlite")
        try:
            measure("1 coordinator, SQLite", [port], None, args)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        cluster = EtcdCluster(folder / "etcd", 3)
        cluster.start_all()
        etcd = Etcd(cluster.endpoints)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            ports = []
            for name in "abc":
                started, replica_port = start_coordinator(folder / name, {"RMA_STORE_URL": cluster.url})
                procs.append(started)
                ports.append(replica_port)
            workers = measure("3 coordinators, etcd x3", ports, etcd, args)
            victim = [(token, beat) for port, token, beat in workers.values() if port == ports[0]]
            os.killpg(procs[0].pid, signal.SIGKILL)
            took, refused = asyncio.run(fail_over(victim, ports[1], args.connections))
            print(f"kill -9 of a coordinator: its {len(victim)} workers beating to the next within {took:.2f} s "
                  f"of the kill, {refused} refused (none registered again)")
        finally:
            for started in procs:
                if started.poll() is None:
                    os.killpg(started.pid, signal.SIGTERM)
                    started.wait(15)
            etcd.close()
            cluster.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
