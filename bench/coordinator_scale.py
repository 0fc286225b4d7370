"""How the coordinator scales: N simulated workers register, then heartbeat at full speed.

Prints, for each N: registrations/s over the last 10% of registrations, heartbeats/s, p50/p99
heartbeat latency and the coordinator's RSS. The load generator is this process (raw HTTP/1.1
keep-alive on loopback, so the client costs little next to the server) and shares the machine.

Two shapes of worker, named in the last column:
  engines  this project's agent: capabilities list the engines the machine can start;
  seed     the seed's agent: exactly worker_id, tunnel_url, vpn_ip and capabilities with no
           engine list (trusted by kind), and heartbeats that report its services as strings.
Each N runs the engines shape; --seed-shape adds a seed row after it, --seed-shape-only runs
the seed shape alone. --store-holders H starts each coordinator over H restored seed-shape
storage workers that all run every store (a pool whose store holders each came back after an
outage keeps them all), so a store has H serving replicas while the N workers register.

    .venv/bin/python bench/coordinator_scale.py [--workers 1000 10000] [--seconds 10] [--seed-shape]
        [--seed-shape-only] [--store-holders 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import uvloop

from rma.catalog import SERVICES
from rma.coordinator.sqlite_store import SqliteStore
from rma.coordinator.store import StoredWorker

KINDS = [
    ("cpu", ["spacy", "pdf-docx", "rma-notes-coa", "llama-cpp", "tesseract", "sentence-transformers"]),
    ("storage", ["redis-server", "postgres", "chroma"]),
    ("edge", ["rma-coordinator", "rma-edge-proxy", "rma-load-balancer"]),
    ("gpu", ["vllm", "vllm-vision", "sentence-transformers-cuda", "spacy"]),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its whole response, in turn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes, token: str | None = None) -> tuple[int, bytes]:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
                f"Content-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        head_block = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head_block.split(b" ", 2)[1])
        length = 0
        for line in head_block.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


SHAPES = ("engines", "seed")


def registration(i: int, shape: str) -> bytes:
    kind, engines = KINDS[i % len(KINDS)]
    caps: dict[str, object] = {"worker_type": kind, "ram_mb": 16384, "cpu_cores": 8}
    if kind == "gpu":
        caps |= {"has_gpu": True, "gpus": [{"name": "NVIDIA L4", "memory_mb": 24576}]}
    if shape == "seed":
        return json.dumps({"worker_id": f"bench-{i:06d}", "tunnel_url": None, "vpn_ip": "127.0.0.1",
                           "capabilities": caps}).encode()
    caps["engines"] = engines
    return json.dumps({"worker_id": f"bench-{i:06d}", "advertise_host": "127.0.0.1", "capabilities": caps}).encode()


def heartbeat(worker_id: str, assigned: list[str], shape: str) -> bytes:
    """A beat as each agent sends it: the seed's reports its services as plain strings."""
    if shape == "seed":
        return json.dumps({"worker_id": worker_id, "status": "healthy", "current_load": 0.3,
                           "services_status": dict.fromkeys(assigned, "running")}).encode()
    return json.dumps({"worker_id": worker_id, "current_load": 0.3, "cpu_percent": 12.5,
                       "services_status": {"redis": {"state": "healthy", "port": 6379}}}).encode()


async def register_all(port: int, count: int, connections: int, shape: str) -> tuple[list[float], dict[str, bytes]]:
    """Register `count` workers; returns each registration's completion time and each worker's beat."""
    done: list[float] = []
    beats: dict[str, bytes] = {}
    queue = iter(range(count))

    async def run() -> None:
        conn = await Connection.open(port)
        for i in queue:
            status, body = await conn.post("/api/worker/register", registration(i, shape))
            if status != 200:
                raise RuntimeError(f"registration {i}: HTTP {status}: {body[:200]!r}")
            answer = json.loads(body)
            beats[answer["worker_token"]] = heartbeat(answer["worker_id"], answer["assigned_services"], shape)
            done.append(time.perf_counter())
        conn.close()

    await asyncio.gather(*(run() for _ in range(connections)))
    return done, beats


async def heartbeat_for(port: int, beats: dict[str, bytes], seconds: float, connections: int) -> list[float]:
    """Heartbeat round-robin over every worker for `seconds` (or one round, if 0); returns the latencies."""
    latencies: list[float] = []
    tokens = list(beats)
    deadline = time.perf_counter() + seconds

    async def run(offset: int) -> None:
        conn = await Connection.open(port)
        i = offset
        while time.perf_counter() < deadline if seconds else i < len(tokens):
            token = tokens[i % len(tokens)]
            started = time.perf_counter()
            status, answer = await conn.post("/api/worker/heartbeat", beats[token], token)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"heartbeat: HTTP {status}: {answer[:200]!r}")
            i += connections
        conn.close()

    await asyncio.gather(*(run(k) for k in range(connections)))
    return latencies


def restore_store_holders(data_dir: Path, holders: int) -> None:
    """Leave `holders` seed-shape storage workers, each running every store, in the registry's file."""
    if not holders:
        return
    stores = tuple(s.name for s in SERVICES if s.stateful)
    caps = json.dumps({"worker_type": "storage", "ram_mb": 16384})
    store = SqliteStore(data_dir / "registry.sqlite3")
    now = time.time()
    for i in range(holders):
        store.save(StoredWorker(f"holder-{i:06d}", "unused", "storage", "127.0.0.1", None, caps, stores,
                                frozenset(stores), now, now))
    store.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def start_coordinator(data_dir: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """`rma coordinator` on a free port (with `env` added to this environment), once it answers /health."""
    port = free_port()
    # A long interval: no worker may be declared down while the load generator walks the pool.
    proc = subprocess.Popen(
        [sys.executable, "-m", "rma", "coordinator", "--port", str(port), "--data-dir", str(data_dir),
         "--heartbeat-interval", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("coordinator did not start")


def run_one(count: int, seconds: float, connections: int, shape: str, holders: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        restore_store_holders(Path(tmp), holders)
        proc, port = start_coordinator(Path(tmp))
        try:
            started = time.perf_counter()
            done, beats = asyncio.run(register_all(port, count, connections, shape))
            tail = done[int(len(done) * 0.9):]
            tail_rate = (len(tail) - 1) / (tail[-1] - tail[0]) if len(tail) > 1 else float("nan")
            overall = count / (done[-1] - started)
            # One untimed round first: each worker's first beat after the registration storm
            # replans it against the final pool; the timed phase is the settled pool's steady load.
            asyncio.run(heartbeat_for(port, beats, 0, connections))
            server, client = psutil.Process(proc.pid), psutil.Process()
            cpu_before, client_before = sum(server.cpu_times()[:2]), sum(client.cpu_times()[:2])
            latencies = asyncio.run(heartbeat_for(port, beats, seconds, connections))
            server_cpu = sum(server.cpu_times()[:2]) - cpu_before
            client_cpu = sum(client.cpu_times()[:2]) - client_before
            rss = server.memory_info().rss / 2**20
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
    return {
        "workers": count,
        "registrations_per_s_last_10pct": tail_rate,
        "registrations_per_s_overall": overall,
        "heartbeats_per_s": len(latencies) / seconds,
        "heartbeat_p50_ms": percentile(latencies, 0.5) * 1000,
        "heartbeat_p99_ms": percentile(latencies, 0.99) * 1000,
        "coordinator_rss_mb": rss,
        # Server CPU per heartbeat: what one core could sustain is 1e6 / this, whatever else ran.
        "server_cpu_us_per_beat": server_cpu / len(latencies) * 1e6,
        "server_cores": server_cpu / seconds,
        "load_generator_cores": client_cpu / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seconds", type=float, default=10.0, help="heartbeat phase length")
    parser.add_argument("--connections", type=int, default=16)
    shapes = parser.add_mutually_exclusive_group()
    shapes.add_argument("--seed-shape", action="store_true",
                        help="also run each N with the seed agent's registrations (no engine list): a 'seed' row")
    shapes.add_argument("--seed-shape-only", action="store_true", help="run the seed shape alone")
    parser.add_argument("--store-holders", type=int, default=0, metavar="H",
                        help="start each coordinator over H restored storage workers that all run every store")
    args = parser.parse_args()
    run_shapes = ["seed"] if args.seed_shape_only else list(SHAPES) if args.seed_shape else ["engines"]
    uvloop.install()
    if args.store_holders:
        print(f"each coordinator starts over {args.store_holders} restored store holders (not in 'workers')")
    print(f"{'workers':>8} {'reg/s last10%':>14} {'reg/s all':>10} {'beats/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'RSS MB':>7} {'CPU us/beat':>12} {'cores: server':>14} {'load gen':>9} {'shape':>8}")
    for count in args.workers:
        for shape in run_shapes:
            r = run_one(count, args.seconds, args.connections, shape, args.store_holders)
            print(f"{count:>8} {r['registrations_per_s_last_10pct']:>14.0f} {r['registrations_per_s_overall']:>10.0f} "
                  f"{r['heartbeats_per_s']:>9.0f} {r['heartbeat_p50_ms']:>7.2f} {r['heartbeat_p99_ms']:>7.2f} "
                  f"{r['coordinator_rss_mb']:>7.0f} {r['server_cpu_us_per_beat']:>12.0f} {r['server_cores']:>14.2f}"
                  f" {r['load_generator_cores']:>9.2f} {shape:>8}", flush=True)
    print("targets at 10,000 workers: >= 1000 reg/s, >= 5000 beats/s, p99 < 50 ms, RSS < 250 MB")


if __name__ == "__main__":
    main()
