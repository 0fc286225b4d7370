"""The TLS front door on loopback, side by side: our edge proxy behind its front door vs HAProxy terminating TLS.

What it measures, in one run, for 1 KB answers from one nginx backend (ratios, since the machine is noisy):

  (a) req/s with wrk at N connections (HTTP/1.1 keep-alive) through our TLS front door (`rma edge-proxy`
      with RMA_TLS_CERT/RMA_TLS_KEY: HAProxy on the public port, the rma engine on a private unix socket; and
      the same with RMA_FRONT_ENGINE=caddy, the front door that serves ACME names),
      through HAProxy terminating TLS with the same certificate and key, through the plain-HTTP edge proxy
      (loopback, no TLS: no front door) and direct to the backend; the goal is ours >= 50% of HAProxy's.
      One reference row more: Caddy alone, with the front door's own config (rma.front.caddy_config) but
      relaying straight to the backend, no rma engine: the ceiling of any Caddy-based front door here.
  (b) added latency p50/p99 at fixed offered rates (1,000 and 5,000 req/s by default), over direct at the
      same rate, on N keep-alive HTTP/1.1 connections. Debian's wrk (4.1) has no fixed rate. By default
      h2load paces: --rps per connection, its connections opened 1 ms apart (left to themselves they all
      fire in the same instant each period); a request falling due on a busy connection waits and is timed
      from its sending, so a rate past a proxy's capacity shows as fewer served than offered. `--pacer python`
      uses this script's own open-loop client instead (asyncio + ssl on uvloop, its own process): a request is
      issued on schedule, waits for a free connection if none is, and is timed from its issue; truer under
      overload, but its CPU per request (several times h2load's) comes off the same 2 cores, and its own
      wake-ups show in p99. A rate the machine cannot hold (failures, under 95% of it served, or the Python
      client falling behind) is said so, and a held one near a target's closed-loop maximum is marked.
  (c) time to the first byte of a streamed (chunked) answer from a tiny asyncio backend, through the TLS
      front door vs direct (the claim: <= 5 ms added); the plain edge proxy and HAProxy (TLS) are shown
      too, HAProxy's figure being what TLS itself costs this client (httpx over Python's ssl).
  (d) CPU per request of the proxies' processes from psutil (the rma engine + its haproxy child, vs the
      haproxy process, threads included), at saturation in (a) and at the fixed rates in (b).
  And once: which protocol ALPN picks on each TLS listener (h2 expected), and what curl --http2 gets.
  The last line says how much CPU other processes took meanwhile: the cores are shared, so read the
  figures of a run with others busy as noise.

A real coordinator holds the table: this script plays a worker reporting `ner-extraction` healthy on the
nginx backend's port and `notes-coa` on the streaming backend's (the coordinator checks a reported port
itself, so both backends answer /health). A local CA (rma.front.local_ca) signs a certificate for
127.0.0.1; HAProxy gets the same chain and key in one 0600 PEM file. Everything listens on 127.0.0.1 at
free ports, runs in the foreground from a temp dir, each in its own process group, and is stopped at the end.

Needs Debian's wrk, h2load (nghttp2-client), nginx and haproxy (curl, optional, for the HTTP/2 line):

    apt-get install -y wrk nghttp2-client nginx haproxy curl
    .venv/bin/python bench/front_door_tls.py [--seconds 5] [--connections 32] [--rounds 3] [--rates 1000,5000]
                                             [--pacer h2load|python] [--haproxy-threads 2]

A default run takes about two minutes; it stops what it started on the way out (also on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from proxy_overhead import free_port, stream_server  # bench/ is this script's folder, first on sys.path

KB = b"x" * 1024
HELD = 0.95  # a fixed rate is held when this share of it was served, with no failures and the client on time
CLIENT_LATE_MS = 1.0  # the paced client's own median lateness past which its rate is not the one asked for
WARM_UP_S = 1.0  # of each paced run, left out of its figures (connections, handshakes)
NEAR_SATURATION = 0.8  # a held rate above this share of the target's closed-loop maximum: queueing shows
QUEUEING = 4  # ... or a p50 this many times the lowest rate's (and 0.5 ms more)
CADDY_ALONE = "caddy alone (TLS)"
FRONT_CADDY = "front door, caddy (TLS)"


def wait_http(url: str, verify: ssl.SSLContext | bool = True, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = httpx.get(url, timeout=1, verify=verify, trust_env=False).status_code
            if status == 200:
                return
            last = f"status {status}"
        except httpx.HTTPError as error:
            last = f"{type(error).__name__}: {error}"
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200 within {timeout:g}s (last: {last})")


# ---- the servers' configs

def nginx_conf(tmp: Path, port: int) -> Path:
    """The backend: nginx, one worker, serving the 1 KB file (and /health, which the coordinator checks)."""
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};
  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ root {tmp}/www; }} }} }}
""")
    return conf


def haproxy_conf(tmp: Path, port: int, backend_port: int, stream_port: int, pem: Path, threads: int) -> Path:
    """HAProxy terminating TLS (HTTP/1.1 and HTTP/2 by ALPN), pooled plain connections to the backend;
    /events goes to the streaming backend."""
    conf = tmp / "haproxy.cfg"
    conf.write_text(f"""global
  nbthread {threads}
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1
  use_backend stream if {{ path_beg /events }}
  default_backend be
backend be
  http-reuse always
  server b1 127.0.0.1:{backend_port}
backend stream
  server s1 127.0.0.1:{stream_port}
""")
    return conf


def haproxy_pem(tmp: Path, cert: Path, key: Path) -> Path:
    """HAProxy wants the chain and the key in one file: a new 0600 file, never through a planted link."""
    pem = tmp / "haproxy.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(cert.read_bytes().rstrip(b"\n") + b"\n" + key.read_bytes())
    return pem


def caddy_alone_conf(tmp: Path, port: int, backend_port: int, cert: Path, key: Path) -> Path:
    """The front door's own Caddy config, relaying to the backend over TCP instead of to the engine."""
    from rma.front import FrontSettings, caddy_config

    config = caddy_config(FrontSettings(cert, key), "127.0.0.1", port, tmp / "unused.sock", tmp / "caddy-storage")
    for route in config["apps"]["http"]["servers"]["front"]["routes"]:
        for handler in route["handle"]:
            if handler["handler"] == "reverse_proxy":
                handler["upstreams"] = [{"dial": f"127.0.0.1:{backend_port}"}]
    path = tmp / "caddy-alone.json"
    path.write_text(json.dumps(config))
    return path


# ---- the worker this script plays, and the streaming backend

def play_worker(coordinator: str, ports: dict[str, int], stop: threading.Event) -> None:
    """Register as a CPU worker and report each service healthy on its port until `stop`."""
    caps = {"worker_type": "cpu", "engines": ["spacy", "rma-notes-coa"], "cpu_cores": 4, "ram_mb": 8000}
    with contextlib.suppress(httpx.HTTPError), httpx.Client(base_url=coordinator, timeout=2) as client:
        answer = client.post("/api/worker/register", json={"worker_id": "bench-front-door",
                                                           "advertise_host": "127.0.0.1", "capabilities": caps})
        answer.raise_for_status()
        headers = {"authorization": f"Bearer {answer.json()['worker_token']}"}
        status = {service: {"state": "healthy", "port": port} for service, port in ports.items()}
        beat = {"worker_id": "bench-front-door", "services_status": status}
        while not stop.is_set():
            client.post("/api/worker/heartbeat", json=beat, headers=headers)
            stop.wait(0.5)


# ---- the paced (open-loop) client, run as `front_door_tls.py --paced URL` in its own process

class PacedConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, answers framed by Content-Length."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need = 0  # the whole answer's length once its head is in; 0 before
        self.status = 0
        self.issued = 0.0
        self.measured = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(None)

    def send(self, issued: float, measured: bool) -> None:
        self.issued, self.measured = issued, measured
        assert self.transport is not None
        self.transport.write(self.pacer.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.need:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                length = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
                if length is None:
                    raise SystemExit("the paced client reads Content-Length answers only")
                self.status = int(head[9:12])
                self.need = end + 4 + int(length.group(1))
            if len(self.buffer) < self.need:
                return
            del self.buffer[:self.need]
            self.need = 0
            self.pacer.answered(self, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pacer.lost(self)


class Pacer:
    """Issues requests at a fixed rate; one finding no free connection waits for the first to come free."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.request = (f"GET {parts.path or '/'} HTTP/1.1\r\nhost: {parts.netloc}\r\n"
                        "user-agent: rma-paced\r\n\r\n").encode()
        self.loop = asyncio.get_running_loop()
        self.idle: deque[PacedConnection] = deque()
        self.backlog: deque[tuple[float, bool]] = deque()
        self.latencies: list[float] = []
        self.done_at: list[float] = []  # when each measured answer came
        self.failed = 0
        self.outstanding = 0
        self.finished: asyncio.Future[None] | None = None  # set once all are answered, when waited for

    def issue(self, issued: float, measured: bool) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.popleft().send(issued, measured)
        else:
            self.backlog.append((issued, measured))

    def answered(self, conn: PacedConnection, status: int) -> None:
        if conn.measured:
            if status == 200:
                now = time.perf_counter()
                self.latencies.append((now - conn.issued) * 1000)
                self.done_at.append(now)
            else:
                self.failed += 1
        self.outstanding -= 1
        if self.backlog:
            conn.send(*self.backlog.popleft())
        else:
            self.idle.append(conn)
            if self.outstanding == 0 and self.finished is not None and not self.finished.done():
                self.finished.set_result(None)

    def lost(self, conn: PacedConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)


async def paced_run(url: str, rate: float, seconds: float, connections: int, ca_file: str | None) -> dict[str, float]:
    """`rate` req/s for WARM_UP_S + `seconds`; the figures are of the last `seconds`."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    context = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
    pacer = Pacer(url)
    loop = pacer.loop
    conns = []
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: PacedConnection(pacer), host, port, ssl=context,
                                               server_hostname=host if context else None)
        await conn.ready
        pacer.idle.append(conn)
        conns.append(conn)
    total = int(rate * (WARM_UP_S + seconds))
    warm = int(rate * WARM_UP_S)
    late: list[float] = []
    cpu_at_start = time.process_time()
    clock = time.perf_counter  # the loop's own clock may count whole milliseconds only (uvloop's does)
    start = clock() + 0.01
    sent = 0
    while sent < total:
        now = clock()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            late.append((now - (start + sent / rate)) * 1000)
            pacer.issue(now, sent >= warm)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - clock()))
    ended = clock()
    if pacer.outstanding:
        pacer.finished = loop.create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pacer.finished, 5)
    unanswered = pacer.outstanding
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    times = sorted(pacer.latencies)
    measured_late = sorted(late[warm:])
    # Served: the answers that came by the end of the schedule (the few in flight then have 50 ms more), not
    # the backlog a saturated proxy works off afterwards.
    in_time = sum(1 for at in pacer.done_at if at <= ended + 0.05)
    return {"served": in_time / (ended - start - WARM_UP_S), "p50": _pct(times, 50), "p99": _pct(times, 99),
            "answered": len(times), "failed": total - warm - len(times),  # not 200, or never answered
            "not_200": pacer.failed, "unanswered": unanswered,
            "late_p50": _pct(measured_late, 50), "late_p99": _pct(measured_late, 99),
            "client_cpu_us": (time.process_time() - cpu_at_start) / total * 1e6}


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * pct / 100))]


# ---- measuring

def cpu_of(pids: tuple[int, ...]) -> list[float]:
    """User + system CPU seconds so far of each process (all its threads; not its children)."""
    found = []
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            found.append(times.user + times.system)
        except psutil.NoSuchProcess:
            found.append(0.0)
    return found


@dataclass
class Load:
    rps: float  # served per second
    p50: float  # ms
    p99: float  # ms
    requests: int
    failed: int  # non-2xx answers, socket errors, requests never answered
    cpu_us: tuple[float, ...] = ()  # CPU µs per request of each of the proxy's processes
    late: tuple[float, float] = (0.0, 0.0)  # the paced client's own lateness p50, p99, ms
    client_cpu_us: float = 0.0  # the paced client's own CPU per request, once its connections are open

    @property
    def cpu(self) -> float:
        return sum(self.cpu_us)


def wrk(url: str, seconds: int, connections: int, pids: tuple[int, ...] = ()) -> Load:
    """Closed loop: req/s and latency from wrk --latency, and the proxy's CPU per request."""
    before = cpu_of(pids)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    used = [after - was for after, was in zip(cpu_of(pids), before, strict=True)]
    total = int(_find(r"(\d+) requests in", out))
    failed = int(_find(r"Non-2xx or 3xx responses:\s+(\d+)", out, "0"))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return Load(float(_find(r"Requests/sec:\s+([\d.]+)", out)), _wrk_ms(out, "50%"), _wrk_ms(out, "99%"),
                total, failed, tuple(u / max(total, 1) * 1e6 for u in used))


def _find(pattern: str, text: str, default: str | None = None) -> str:
    found = re.search(pattern, text)
    if found is None:
        if default is None:
            raise SystemExit(f"unexpected wrk output:\n{text}")
        return default
    return found.group(1)


def _wrk_ms(out: str, pct: str) -> float:
    value, unit = re.search(rf"{pct}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def paced(url: str, rate: int, seconds: int, connections: int, pids: tuple[int, ...], ca_file: Path) -> Load:
    """One paced run in its own process (so it has a core's worth of its own interpreter), with the proxy's CPU."""
    argv = [sys.executable, __file__, "--paced", url, "--rate", str(rate), "--seconds", str(seconds),
            "--connections", str(connections), "--ca-file", str(ca_file)]
    before = cpu_of(pids)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    used = [after - was for after, was in zip(cpu_of(pids), before, strict=True)]
    if done.returncode != 0:
        raise SystemExit(f"the paced client failed on {url}:\n{done.stderr[-2000:]}")
    got = json.loads(done.stdout)
    issued = rate * (WARM_UP_S + seconds)  # the CPU covers the warm-up's requests too
    return Load(got["served"], got["p50"], got["p99"], int(got["answered"]), int(got["failed"]),
                tuple(u / issued * 1e6 for u in used), (got["late_p50"], got["late_p99"]), got["client_cpu_us"])


def paced_h2load(url: str, rate: int, seconds: int, connections: int, pids: tuple[int, ...], tmp: Path) -> Load:
    """The same schedule with h2load: --rps per connection, the connections opened 1 ms apart (-r1
    --rate-period=1ms) so their periods interleave instead of firing together. h2load sends a request that
    falls due while its connection is busy once the connection frees, and times it from then: the wait is
    not in its latency, only in a served rate below the offered one."""
    log_file = tmp / "h2load.log"
    log_file.unlink(missing_ok=True)
    total = int(rate * (WARM_UP_S + seconds))
    before, client_before = cpu_of(pids), _children_cpu()
    done = subprocess.run(["h2load", "--h1", "-t1", f"-n{total}", f"-c{connections}", "-r1", "--rate-period=1ms",
                           f"--rps={rate / connections}", f"--log-file={log_file}", url],
                          capture_output=True, text=True, timeout=seconds * 4 + 60)
    if done.returncode != 0:
        raise SystemExit(f"h2load failed on {url}:\n{done.stdout[-1000:]}{done.stderr[-1000:]}")
    used = [after - was for after, was in zip(cpu_of(pids), before, strict=True)]
    client = _children_cpu() - client_before
    rows = [[int(field) for field in line.split("\t")[:3]] for line in log_file.read_text().splitlines() if line]
    first = min((row[0] for row in rows), default=0)
    measured = [row for row in rows if row[0] - first >= WARM_UP_S * 1e6]
    times = sorted(row[2] / 1000 for row in measured if row[1] == 200)
    span = (max((row[0] + row[2] for row in measured), default=first) - first) / 1e6 - WARM_UP_S
    return Load(len(times) / span if span > 0 else 0.0, _pct(times, 50), _pct(times, 99), len(times),
                total - len(rows) + sum(1 for row in measured if row[1] != 200),
                tuple(u / total * 1e6 for u in used), (float("nan"), float("nan")), client / total * 1e6)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def first_byte_ms(url: str, verify: ssl.SSLContext | bool, rounds: int = 40) -> float:
    """Median time from sending a request (on a kept-alive connection) to the first body byte of a stream."""
    times = []
    with httpx.Client(timeout=5, verify=verify, trust_env=False) as client:
        for _ in range(rounds):
            started = time.perf_counter()
            with client.stream("GET", url) as response:
                for _chunk in response.iter_raw():
                    times.append((time.perf_counter() - started) * 1000)
                    break
    return statistics.median(times[5:])  # the first ones open the connection (and shake hands)


def alpn_check(port: int, ca_file: Path) -> str:
    """Which protocol a TLS listener picks when offered h2 and http/1.1, with its TLS version and cipher."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cipher = tls.cipher()
        return f"ALPN {tls.selected_alpn_protocol()}, {tls.version()} {cipher[0] if cipher else '?'}"


def curl_check(url: str, ca_file: Path) -> str:
    if shutil.which("curl") is None:
        return "curl not installed"
    done = subprocess.run(["curl", "--http2", "-sS", "--cacert", str(ca_file), "-o", "/dev/null",
                           "-w", "HTTP/%{http_version} %{response_code}", url],
                          capture_output=True, text=True, timeout=10)
    return f"curl --http2: {done.stdout.strip() or done.stderr.strip()}"


# ---- the processes

class Processes:
    """Children, each in its own process group, stopped at the end: SIGTERM, then SIGKILL to the group."""

    def __init__(self, log: Path) -> None:
        self.log = log.open("ab")
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
        proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append((name, proc))
        return proc.pid

    def stop(self) -> list[str]:
        """Stop everything; what outlived its parent's SIGTERM (a caddy left behind, say) is named."""
        leftovers = []
        family: dict[str, list[psutil.Process]] = {}
        for name, proc in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                family[name] = psutil.Process(proc.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for name, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                leftovers.append(f"{name} (pid {proc.pid}) ignored SIGTERM for 10 s")
            _, alive = psutil.wait_procs(family.get(name, []), timeout=5)
            leftovers += [f"{child.name()} (pid {child.pid}), child of {name}, outlived it" for child in alive]
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: whatever is left of it
            proc.wait(5)
        self.log.close()
        return leftovers


def machine_cpu() -> tuple[float, float]:
    """CPU seconds all cores spent in processes so far (guest time is inside user; interrupts, the loopback's
    packets among them, are charged to no process and left out), and stolen by the hypervisor."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system, getattr(t, "steal", 0.0)


def own_cpu() -> float:
    """CPU seconds of this process and of its reaped children (after the end: everything it started)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def door_of(pid: int, server: str) -> int:
    """The front door's server (haproxy or caddy) an rma engine runs as its child."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(pid).children(recursive=True):
            if child.name() == server:
                return child.pid
    raise SystemExit(f"the TLS edge proxy answers but runs no {server} child: is the front door in place?")


# ---- the run

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per target in (a); the median run is shown")
    parser.add_argument("--rates", default="1000,5000", help="fixed rates for (b), req/s, comma-separated")
    parser.add_argument("--haproxy-threads", type=int, default=os.cpu_count() or 1,
                        help="HAProxy's nbthread (default: one per core, as many as Caddy's Go runtime uses)")
    parser.add_argument("--pacer", choices=("h2load", "python"), default="h2load",
                        help="the fixed-rate client of (b): h2load (cheap on CPU; a request waiting for a busy "
                             "connection is timed from when it is sent), or this script's open-loop one (the wait "
                             "counted, but it costs a Python process's CPU per request on the shared cores)")
    parser.add_argument("--paced", metavar="URL", help=argparse.SUPPRESS)  # the paced client's own process
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paced:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        print(json.dumps(asyncio.run(paced_run(args.paced, args.rate, args.seconds, args.connections,
                                               args.ca_file))))
        return
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stopped from outside: still stop what it started
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))
    needed = ("wrk", "nginx", "haproxy") + (("h2load",) if args.pacer == "h2load" else ())
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: apt-get install -y wrk nghttp2-client nginx haproxy")
    from rma.front.caddy import caddy_binary
    from rma.front.local_ca import make_local_ca

    tmp = Path(tempfile.mkdtemp(prefix="rma-bench-tls-"))
    ports = {name: free_port() for name in ("backend", "stream", "coordinator", "edge", "edge_tls", "edge_caddy",
                                            "haproxy_tls", "caddy_alone")}
    procs = Processes(tmp / "bench.log")
    stop = threading.Event()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    leftovers: list[str] = []
    door_folder: Path | None = None
    started = time.monotonic()
    machine_before, own_before = machine_cpu(), own_cpu()
    try:
        (tmp / "www").mkdir()
        (tmp / "www" / "kb").write_bytes(KB)
        (tmp / "www" / "health").write_bytes(b"ok\n")
        ca = make_local_ca(tmp / "tls", ["localhost", "127.0.0.1"])
        verify = ssl.create_default_context(cafile=str(ca.ca_file))
        asyncio.run_coroutine_threadsafe(stream_server(ports["stream"]), loop).result()
        procs.spawn("nginx", ["nginx", "-c", str(nginx_conf(tmp, ports["backend"]))])
        procs.spawn("coordinator", [sys.executable, "-m", "rma", "coordinator", "--port", str(ports["coordinator"]),
                                    "--data-dir", str(tmp / "coordinator"), "--heartbeat-interval", "1"])
        coordinator = f"http://127.0.0.1:{ports['coordinator']}"
        wait_http(f"{coordinator}/health")
        served = {"ner-extraction": ports["backend"], "notes-coa": ports["stream"]}
        threading.Thread(target=play_worker, args=(coordinator, served, stop), daemon=True).start()
        edge_env = {"RMA_RATE_LIMIT": "0", "ROUTING_REFRESH_INTERVAL": "1", "RMA_TLS_CERT": "", "RMA_TLS_KEY": ""}
        edge_argv = [sys.executable, "-m", "rma", "edge-proxy", "--coordinator-url", coordinator, "--port"]
        edge_pid = procs.spawn("rma edge-proxy", [*edge_argv, str(ports["edge"])], edge_env)
        tls_env = {**edge_env, "RMA_TLS_CERT": str(ca.cert), "RMA_TLS_KEY": str(ca.key)}
        tls_pid = procs.spawn("rma edge-proxy (TLS)", [*edge_argv, str(ports["edge_tls"])],
                              {**tls_env, "RMA_FRONT_ENGINE": "haproxy"})
        caddy_front_pid = procs.spawn("rma edge-proxy (TLS, caddy)", [*edge_argv, str(ports["edge_caddy"])],
                                      {**tls_env, "RMA_FRONT_ENGINE": "caddy"})
        pem = haproxy_pem(tmp, ca.cert, ca.key)
        haproxy_pid = procs.spawn("haproxy", ["haproxy", "-db", "-f", str(haproxy_conf(
            tmp, ports["haproxy_tls"], ports["backend"], ports["stream"], pem, args.haproxy_threads))])
        alone_home = tmp / "caddy-home"
        alone_pid = procs.spawn(CADDY_ALONE, [caddy_binary(), "run", "--config", str(caddy_alone_conf(
            tmp, ports["caddy_alone"], ports["backend"], ca.cert, ca.key))], {"HOME": str(alone_home),
                                "XDG_DATA_HOME": str(alone_home / "data"), "XDG_CONFIG_HOME": str(alone_home)})
        urls = {
            "direct (http)": f"http://127.0.0.1:{ports['backend']}/kb",
            "edge proxy (http)": f"http://127.0.0.1:{ports['edge']}/service/ner-extraction/kb",
            "front door (TLS)": f"https://127.0.0.1:{ports['edge_tls']}/service/ner-extraction/kb",
            FRONT_CADDY: f"https://127.0.0.1:{ports['edge_caddy']}/service/ner-extraction/kb",
            "haproxy (TLS)": f"https://127.0.0.1:{ports['haproxy_tls']}/kb",
            CADDY_ALONE: f"https://127.0.0.1:{ports['caddy_alone']}/kb",
        }
        for url in urls.values():
            wait_http(url, verify)  # TLS ones verified against the local CA, the name (127.0.0.1) included
        door_pid, caddy_pid = door_of(tls_pid, "haproxy"), door_of(caddy_front_pid, "caddy")
        door_folder = Path(psutil.Process(door_pid).cmdline()[-1]).parent  # haproxy -db -f FOLDER/haproxy.cfg
        pids = {"direct (http)": (), "edge proxy (http)": (edge_pid,), "front door (TLS)": (tls_pid, door_pid),
                FRONT_CADDY: (caddy_front_pid, caddy_pid),
                "haproxy (TLS)": (haproxy_pid,), CADDY_ALONE: (alone_pid,)}
        stream_urls = {
            "direct (http)": f"http://127.0.0.1:{ports['stream']}/events",
            "edge proxy (http)": f"http://127.0.0.1:{ports['edge']}/service/notes-coa/events",
            "front door (TLS)": f"https://127.0.0.1:{ports['edge_tls']}/service/notes-coa/events",
            "haproxy (TLS)": f"https://127.0.0.1:{ports['haproxy_tls']}/events",
        }
        for url in stream_urls.values():
            wait_http(url, verify)
        ready_s = time.monotonic() - started
        protocols = {name: f"{alpn_check(int(urlsplit(urls[name]).port or 0), ca.ca_file)}; "
                           f"{curl_check(urls[name], ca.ca_file)}" for name in ("front door (TLS)", "haproxy (TLS)")}

        # (a) closed loop, interleaved rounds so a slow spell of the machine hits every target
        for url in urls.values():  # warm up: connections, the routing table, the Go runtime
            wrk(url, 1, args.connections)
        runs: dict[str, list[Load]] = {name: [] for name in urls}
        for _ in range(args.rounds):
            for name, url in urls.items():
                runs[name].append(wrk(url, args.seconds, args.connections, pids[name]))
        saturated = {name: sorted(got, key=lambda load: load.rps)[len(got) // 2] for name, got in runs.items()}

        # (b) open loop at fixed rates, over the same number of connections
        def at(name: str, rate: int) -> Load:
            if args.pacer == "h2load":
                return paced_h2load(urls[name], rate, args.seconds, args.connections, pids[name], tmp)
            return paced(urls[name], rate, args.seconds, args.connections, pids[name], ca.ca_file)

        at_rate = {rate: {name: at(name, rate) for name in ("direct (http)", "front door (TLS)", "haproxy (TLS)")}
                   for rate in rates}

        # (c) the first streamed byte
        first_bytes = {name: first_byte_ms(url, verify) for name, url in stream_urls.items()}
    except BaseException:
        failed = True
        raise
    else:
        failed = False
    finally:
        stop.set()
        try:
            leftovers = procs.stop()
            if door_folder is not None and door_folder.exists():
                leftovers.append(f"the front door's folder {door_folder} outlived the edge proxy")
            if failed:  # what the servers said, before their folder goes
                tail = (tmp / "bench.log").read_text(errors="replace").splitlines()[-30:]
                print("the servers' log, last lines:\n  " + "\n  ".join(tail), file=sys.stderr)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.monotonic() - started
    (busy, steal), own = machine_cpu(), own_cpu()
    others = max(0.0, busy - machine_before[0] - (own - own_before))
    report(args, rates, saturated, runs, at_rate, first_bytes, protocols, ready_s, leftovers)
    print(f"the machine during the run ({wall:.0f} s): other processes used {others:.1f} CPU s "
          f"({others / wall:.0%} of one core on average), the hypervisor stole {steal - machine_before[1]:.1f} CPU s")


def _cpu_cell(load: Load) -> str:
    if not load.cpu_us:
        return f"{'-':>20}"
    parts = f" ({' + '.join(f'{part:.0f}' for part in load.cpu_us)})" if len(load.cpu_us) > 1 else ""
    return f"{f'{load.cpu:.1f}{parts}':>20}"


def report(args: argparse.Namespace, rates: list[int], saturated: dict[str, Load], runs: dict[str, list[Load]],
           at_rate: dict[int, dict[str, Load]], first_bytes: dict[str, float], protocols: dict[str, str],
           ready_s: float, leftovers: list[str]) -> None:
    ours, haproxy, direct = saturated["front door (TLS)"], saturated["haproxy (TLS)"], saturated["direct (http)"]
    cores = os.cpu_count()
    print(f"loopback, 1 KB answers from nginx (1 worker); {cores} cores shared by the load generator, the proxies "
          f"and the backend; haproxy nbthread {args.haproxy_threads}; all up in {ready_s:.1f} s")
    print()
    print(f"(a) closed loop: wrk -t1 -c{args.connections} -d{args.seconds}s, HTTP/1.1 keep-alive, "
          f"median of {args.rounds} interleaved runs per target")
    print(f"{'target':<24}{'req/s':>8}{'vs direct':>11}{'vs haproxy':>12}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'CPU µs/req':>20}{'failed':>7}   every run, req/s")
    for name, load in saturated.items():
        every = ", ".join(f"{run.rps:.0f}" for run in runs[name])
        print(f"{name:<24}{load.rps:>8.0f}{load.rps / direct.rps:>10.0%} {load.rps / haproxy.rps:>11.0%}"
              f"{load.p50:>8.2f}{load.p99:>8.2f}{_cpu_cell(load)}{load.failed:>7}   {every}")
    ratio = ours.rps / haproxy.rps
    per_run = ", ".join(f"{a.rps / b.rps:.0%}" for a, b in zip(runs["front door (TLS)"], runs["haproxy (TLS)"],
                                                                  strict=True))
    print(f"ours/haproxy, TLS: {ratio:.0%} (goal >= 50%: {'met' if ratio >= 0.5 else 'NOT met'}); "
          f"per round: {per_run}; with caddy as the front door: {saturated[FRONT_CADDY].rps / haproxy.rps:.0%}; "
          f"caddy alone/haproxy: {saturated[CADDY_ALONE].rps / haproxy.rps:.0%}")
    print("CPU µs/req: front door = rma engine + its haproxy (or caddy) child; edge proxy = the rma engine; "
          f"haproxy = its process (all threads); {CADDY_ALONE} = the front door's caddy config relaying straight to "
          "the backend, no engine")
    print()
    python = args.pacer == "python"
    client_name = ("this script's open-loop client (asyncio + ssl, its own process)" if python else
                   "h2load --h1 --rps, its connections opened 1 ms apart")
    print(f"(b) fixed rates: {client_name}, {args.connections} keep-alive HTTP/1.1 connections, {args.seconds} s "
          f"measured after {WARM_UP_S:g} s; added = over direct at that rate")
    print(f"{'rate':>6}  {'target':<18}{'served/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'+p50 ms':>9}{'+p99 ms':>9}"
          f"{'CPU µs/req':>20}{'failed':>7}" + (f"{'late p50/p99':>14}" if python else ""))
    for rate in rates:
        base = at_rate[rate]["direct (http)"]
        unheld = []
        near = []
        for name, load in at_rate[rate].items():
            flag = ""
            if load.failed or load.rps < HELD * rate or (python and load.late[0] > CLIENT_LATE_MS):
                unheld.append(name)
                flag = "   NOT HELD"
            elif rate > NEAR_SATURATION * saturated[name].rps:
                near.append(f"{name} (at most {saturated[name].rps:.0f} req/s in (a))")
                flag = "   NEAR SATURATION"
            elif load.p50 > QUEUEING * at_rate[rates[0]][name].p50 + 0.5:
                near.append(f"{name} (p50 {load.p50 / at_rate[rates[0]][name].p50:.0f}x its p50 at {rates[0]} req/s)")
                flag = "   NEAR SATURATION"
            added = (f"{load.p50 - base.p50:>9.2f}{load.p99 - base.p99:>9.2f}" if name != "direct (http)"
                     else f"{'':>18}")
            late = f"{f'{load.late[0]:.2f}/{load.late[1]:.2f}':>14}" if python else ""
            print(f"{rate:>6}  {name:<18}{load.rps:>9.0f}{load.p50:>8.2f}{load.p99:>8.2f}{added}{_cpu_cell(load)}"
                  f"{load.failed:>7}{late}{flag}")
        if unheld:
            why = f", or the client itself over {CLIENT_LATE_MS:g} ms late at p50" if python else ""
            print(f"        {rate} req/s is beyond what this {cores}-core machine holds for {', '.join(unheld)} (fewer "
                  f"than {HELD:.0%} of it served, or failures{why}): those figures are queueing, not the latency "
                  "a proxy adds")
        if near:
            print(f"        {rate} req/s is held but near saturation for {'; '.join(near)}: queueing is much of "
                  "its latency there")
    client = [load.client_cpu_us for at in at_rate.values() for load in at.values()]
    if python:
        print("late p50/p99: how late the client itself issued its requests, ms (it shares the cores, and an idle "
              "vCPU wakes late)")
    print(f"the fixed-rate client's own CPU: {min(client):.0f}-{max(client):.0f} µs per request (it shares the cores)")
    print()
    direct_fb, ours_fb = first_bytes["direct (http)"], first_bytes["front door (TLS)"]
    added_fb = ours_fb - direct_fb
    print(f"(c) first streamed byte (median of 35 on a kept-alive connection): direct {direct_fb:.2f} ms, plain edge "
          f"proxy {first_bytes['edge proxy (http)']:.2f} ms, TLS front door {ours_fb:.2f} ms "
          f"(+{added_fb:.2f} ms over direct; claim <= 5 ms: {'met' if added_fb <= 5 else 'NOT met'}); "
          f"haproxy (TLS) {first_bytes['haproxy (TLS)']:.2f} ms (+{first_bytes['haproxy (TLS)'] - direct_fb:.2f})")
    print()
    at_each = ", ".join(f"at {rate} req/s {at_rate[rate]['front door (TLS)'].cpu:.0f} vs "
                        f"{at_rate[rate]['haproxy (TLS)'].cpu:.0f} µs" for rate in rates)
    print(f"(d) CPU per request (the CPU µs/req columns): at saturation ours {ours.cpu:.0f} µs vs haproxy "
          f"{haproxy.cpu:.0f} µs ({ours.cpu / haproxy.cpu:.1f}x); {at_each}")
    print()
    for name, line in protocols.items():
        print(f"HTTP/2 check, {name}: {line}")
    if leftovers:
        print("CLEAN-UP PROBLEM: " + "; ".join(leftovers))


if __name__ == "__main__":
    main()
