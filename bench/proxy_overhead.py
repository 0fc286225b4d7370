"""Proxy overhead on loopback, side by side: direct, our edge proxy, nginx and HAProxy to one 1 KB backend.

Needs Debian's wrk, nginx and haproxy (`apt-get install -y wrk nginx haproxy`); each runs in the
foreground from its own config in a temp dir and is stopped at the end. The backend is nginx
serving a 1 KB file (cheap, so the proxies get the CPU). A real coordinator holds the table: this
script plays a worker reporting `ner-extraction` healthy on the backend's port.

    .venv/bin/python bench/proxy_overhead.py [--seconds 5] [--connections 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

KB = b"x" * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout}s")


def nginx_conf(tmp: Path, port: int, body: str) -> Path:
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx-{port}.pid; error_log {tmp}/nginx-{port}.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  {_nginx_site(port, body, tmp)} }}
""")
    return conf


def _nginx_site(port: int, body: str, tmp: Path) -> str:
    """`static:0` serves the 1 KB file; `proxy:PORT` reverse-proxies to it with pooled connections."""
    if body.startswith("static"):
        # /health too: the coordinator checks the port the playing worker reports before it is routed.
        return (f"server {{ listen 127.0.0.1:{port}; location / {{ root {tmp}; }} "
                'location = /health { return 200 "ok"; } }')
    return (f"upstream backend {{ server 127.0.0.1:{body.split(':')[-1]}; keepalive 64; }} "
            f"server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://backend; "
            'proxy_http_version 1.1; proxy_set_header Connection ""; } }')


def haproxy_conf(tmp: Path, port: int, backend_port: int) -> Path:
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server b1 127.0.0.1:{backend_port}
""")
    return conf


def play_worker(coordinator: str, ports: dict[str, int], stop: threading.Event,
                engines: tuple[str, ...] = ("spacy", "rma-notes-coa")) -> None:
    """Register as a CPU worker with `engines` and report each service healthy on its port until `stop`."""
    name = "bench-" + "-".join(ports)
    caps = {"worker_type": "cpu", "engines": list(engines), "cpu_cores": 4, "ram_mb": 8000}
    with httpx.Client(base_url=coordinator, timeout=2) as client:
        answer = client.post("/api/worker/register", json={"worker_id": name, "advertise_host": "127.0.0.1",
                                                           "capabilities": caps})
        headers = {"authorization": f"Bearer {answer.json()['worker_token']}"}
        status = {service: {"state": "healthy", "port": port} for service, port in ports.items()}
        beat = {"worker_id": name, "services_status": status}
        while not stop.is_set():
            client.post("/api/worker/heartbeat", json=beat, headers=headers)
            stop.wait(0.5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, connections: int, pid: int | None = None) -> tuple[float, float, float, float]:
    """req/s, p50 ms, p99 ms from wrk --latency, and the CPU µs per request of process `pid`."""
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before if pid else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, _ms(out, "50%"), _ms(out, "99%"), used / total * 1e6


def _ms(out: str, pct: str) -> float:
    value, unit = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def stream_server(port: int) -> asyncio.AbstractServer:
    """Answers every request with a chunked event stream: first event at once, then a pause."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                             b"f\r\ndata: event 0\n\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    return await asyncio.start_server(handle, "127.0.0.1", port)


def first_byte_ms(url: str, rounds: int = 40) -> float:
    """Median time from sending a request to the first body byte of a streamed answer."""
    times = []
    with httpx.Client(timeout=5) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            with client.stream("GET", url) as response:
                for _chunk in response.iter_raw():
                    times.append((time.perf_counter() - started) * 1000)
                    break
    return statistics.median(times[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="runs per target; the median run is shown")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rma-bench-"))
    (tmp / "kb").write_bytes(KB)
    ports = {name: free_port() for name in ("backend", "coordinator", "edge", "nginx", "haproxy", "stream", "relay")}
    procs: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    log = open(tmp / "bench.log", "ab")  # noqa: SIM115 - children write to it until the end
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(stream_server(ports["stream"]), loop).result()

    def spawn(argv: list[str], env: dict[str, str] | None = None) -> int:
        procs.append(subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, **(env or {})}))
        return procs[-1].pid

    try:
        spawn(["nginx", "-c", str(nginx_conf(tmp, ports["backend"], "static:0"))])
        spawn([sys.executable, "-m", "rma", "coordinator", "--port", str(ports["coordinator"]),
               "--data-dir", str(tmp / "coordinator"), "--heartbeat-interval", "1"])
        coordinator = f"http://127.0.0.1:{ports['coordinator']}"
        wait_http(f"{coordinator}/health")
        served = {"ner-extraction": ports["backend"], "notes-coa": ports["stream"]}
        threading.Thread(target=play_worker, args=(coordinator, served, stop), daemon=True).start()
        edge_pid = spawn([sys.executable, "-m", "rma", "edge-proxy", "--port", str(ports["edge"]),
                          "--coordinator-url", coordinator], {"RMA_RATE_LIMIT": "0", "ROUTING_REFRESH_INTERVAL": "1"})
        nginx_pid = spawn(["nginx", "-c", str(nginx_conf(tmp, ports["nginx"], f"proxy:{ports['backend']}"))])
        haproxy_pid = spawn(["haproxy", "-f", str(haproxy_conf(tmp, ports["haproxy"], ports["backend"])), "-db"])
        relay_pid = spawn([sys.executable, str(Path(__file__).with_name("tcp_relay.py")), str(ports["relay"]),
                           str(ports["backend"])])
        targets = {
            "direct": (f"http://127.0.0.1:{ports['backend']}/kb", None),
            "rma edge-proxy": (f"http://127.0.0.1:{ports['edge']}/service/ner-extraction/kb", edge_pid),
            "nginx": (f"http://127.0.0.1:{ports['nginx']}/kb", nginx_pid),
            "haproxy": (f"http://127.0.0.1:{ports['haproxy']}/kb", haproxy_pid),
            "uvloop tcp relay": (f"http://127.0.0.1:{ports['relay']}/kb", relay_pid),
        }
        for url, _ in targets.values():
            wait_http(url)
        runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in targets}
        for _ in range(args.rounds):  # interleaved, so a slow spell of the machine hits every target
            for name, (url, pid) in targets.items():
                runs[name].append(wrk(url, args.seconds, args.connections, pid))
        results = {name: sorted(got)[len(got) // 2] for name, got in runs.items()}  # the median run by req/s
        # One connection, one request at a time: the latency the proxy adds, not queueing behind 31 others.
        alone = {name: wrk(targets[name][0], args.seconds, 1) for name in ("direct", "rma edge-proxy")}
        direct_ttfb = first_byte_ms(f"http://127.0.0.1:{ports['stream']}/events")
        edge_ttfb = first_byte_ms(f"http://127.0.0.1:{ports['edge']}/service/notes-coa/events")
    finally:
        stop.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
        log.close()
    base = results["direct"]
    print(f"loopback, 1 KB answers, wrk -t1 -c{args.connections} -d{args.seconds}s, {os.cpu_count()} cores, "
          f"median of {args.rounds} interleaved runs per target")
    edge_runs = sorted(run[0] for run in runs["rma edge-proxy"])
    print("edge proxy, every run: " + ", ".join(f"{rps:.0f}" for rps in edge_runs) + " req/s")
    print(f"{'target':<18}{'req/s':>10}{'vs direct':>11}{'vs haproxy':>12}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'+p50 ms':>9}{'+p99 ms':>9}{'CPU µs/req':>12}")
    for name, (rps, p50, p99, cpu) in results.items():
        print(f"{name:<18}{rps:>10.0f}{rps / base[0]:>10.0%} {rps / results['haproxy'][0]:>11.0%}"
              f"{p50:>9.2f}{p99:>9.2f}{p50 - base[1]:>9.2f}{p99 - base[2]:>9.2f}"
              + (f"{cpu:>12.1f}" if cpu else f"{'-':>12}"))  # nginx works in a child: its pid shows no CPU
    print("(uvloop tcp relay: bench/tcp_relay.py, bytes passed on with no HTTP at all, the floor of a Python proxy)")
    print(f"first streamed byte: direct {direct_ttfb:.2f} ms, through the edge proxy {edge_ttfb:.2f} ms "
          f"(+{edge_ttfb - direct_ttfb:.2f} ms)")
    added = alone["rma edge-proxy"][1] - alone["direct"][1]
    print(f"one connection, one request at a time: p50 direct {alone['direct'][1]:.3f} ms, through the edge "
          f"proxy {alone['rma edge-proxy'][1]:.3f} ms (+{added:.3f} ms)")
    edge = results["rma edge-proxy"]
    print(f"targets: >=10000 req/s: {edge[0]:.0f}; >=25% of haproxy: {edge[0] / results['haproxy'][0]:.0%}; "
          f"added p50 <=1 ms: {added:.3f} alone, {edge[1] - base[1]:.2f} at {args.connections} connections; "
          f"first byte <=5 ms over direct: {edge_ttfb - direct_ttfb:.2f}")


if __name__ == "__main__":
    main()
