"""How the coordinator scales: N simulated workers register, then heartbeat at full speed.

Prints, for each N: registrations/s over the last 10% of registrations, heartbeats/s, p50/p99
heartbeat latency and the coordinator's RSS. The load generator is this process (raw HTTP/1.1
keep-alive on loopback, so the client costs little next to the server) and shares the machine.

    .venv/bin/python bench/coordinator_scale.py [--workers 1000 10000] [--seconds 10]
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


def registration(i: int) -> bytes:
    kind, engines = KINDS[i % len(KINDS)]
    caps: dict[str, object] = {"worker_type": kind, "engines": engines, "ram_mb": 16384, "cpu_cores": 8}
    if kind == "gpu":
        caps |= {"has_gpu": True, "gpus": [{"name": "NVIDIA L4", "memory_mb": 24576}]}
    return json.dumps({"worker_id": f"bench-{i:06d}", "advertise_host": "127.0.0.1", "capabilities": caps}).encode()


async def register_all(port: int, count: int, connections: int) -> tuple[list[float], dict[str, str]]:
    """Register `count` workers; returns each registration's completion time and the tokens."""
    done: list[float] = []
    tokens: dict[str, str] = {}
    queue = iter(range(count))

    async def run() -> None:
        conn = await Connection.open(port)
        for i in queue:
            status, body = await conn.post("/api/worker/register", registration(i))
            if status != 200:
                raise RuntimeError(f"registration {i}: HTTP {status}: {body[:200]!r}")
            answer = json.loads(body)
            tokens[answer["worker_id"]] = answer["worker_token"]
            done.append(time.perf_counter())
        conn.close()

    await asyncio.gather(*(run() for _ in range(connections)))
    return done, tokens


async def heartbeat_for(port: int, tokens: dict[str, str], seconds: float, connections: int) -> list[float]:
    """Heartbeat round-robin over every worker for `seconds` (or one round, if 0); returns the latencies."""
    latencies: list[float] = []
    ids = list(tokens)
    deadline = time.perf_counter() + seconds
    status_body = {"redis": {"state": "healthy", "port": 6379}}
    bodies = {w: json.dumps({"worker_id": w, "current_load": 0.3, "cpu_percent": 12.5,
                             "services_status": status_body}).encode() for w in ids}

    async def run(offset: int) -> None:
        conn = await Connection.open(port)
        i = offset
        while time.perf_counter() < deadline if seconds else i < len(ids):
            worker_id = ids[i % len(ids)]
            started = time.perf_counter()
            status, answer = await conn.post("/api/worker/heartbeat", bodies[worker_id], tokens[worker_id])
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"heartbeat: HTTP {status}: {answer[:200]!r}")
            i += connections
        conn.close()

    await asyncio.gather(*(run(k) for k in range(connections)))
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def start_coordinator(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    # A long interval: no worker may be declared down while the load generator walks the pool.
    proc = subprocess.Popen(
        [sys.executable, "-m", "rma", "coordinator", "--port", str(port), "--data-dir", str(data_dir),
         "--heartbeat-interval", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("coordinator did not start")


def run_one(count: int, seconds: float, connections: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_coordinator(Path(tmp))
        try:
            started = time.perf_counter()
            done, tokens = asyncio.run(register_all(port, count, connections))
            tail = done[int(len(done) * 0.9):]
            tail_rate = (len(tail) - 1) / (tail[-1] - tail[0]) if len(tail) > 1 else float("nan")
            overall = count / (done[-1] - started)
            # One untimed round first: each worker's first beat after the registration storm
            # replans it against the final pool; the timed phase is the settled pool's steady load.
            asyncio.run(heartbeat_for(port, tokens, 0, connections))
            server, client = psutil.Process(proc.pid), psutil.Process()
            cpu_before, client_before = sum(server.cpu_times()[:2]), sum(client.cpu_times()[:2])
            latencies = asyncio.run(heartbeat_for(port, tokens, seconds, connections))
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
    args = parser.parse_args()
    uvloop.install()
    print(f"{'workers':>8} {'reg/s last10%':>14} {'reg/s all':>10} {'beats/s':>9} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'RSS MB':>7} {'CPU us/beat':>12} {'cores: server':>14} {'load gen':>9}")
    for count in args.workers:
        r = run_one(count, args.seconds, args.connections)
        print(f"{count:>8} {r['registrations_per_s_last_10pct']:>14.0f} {r['registrations_per_s_overall']:>10.0f} "
              f"{r['heartbeats_per_s']:>9.0f} {r['heartbeat_p50_ms']:>7.2f} {r['heartbeat_p99_ms']:>7.2f} "
              f"{r['coordinator_rss_mb']:>7.0f} {r['server_cpu_us_per_beat']:>12.0f} {r['server_cores']:>14.2f}"
              f" {r['load_generator_cores']:>9.2f}", flush=True)
    print("targets at 10,000 workers: >= 1000 reg/s, >= 5000 beats/s, p99 < 50 ms, RSS < 250 MB")


if __name__ == "__main__":
    main()
