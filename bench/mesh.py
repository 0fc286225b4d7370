"""What the Nebula 1.6.1 overlay costs, plain path vs overlay direct vs overlay relayed, in one run (root only).

Builds the tests' small internet (tests/mesh/netns.py): edge (lighthouse and relay, public 198.18.0.10, no tun,
as nobody), h1 and h3 behind plain masquerade (punchable), h2 behind a symmetric NAT (relayed through edge), h4
and h6 (punchable), h5 and h7 (symmetric), whose nebula starts only for the join figures. h3's router forwards
tcp/8080: the plain path. Every home runs this file's tiny HTTP server (`stream-serve`). From h1 it prints:

  1. a 1 KB keep-alive GET: p50 and p99 (ms), added p50 vs plain, and the goals (direct <= 0.5 ms, relayed
     <= 1 ms) met / NOT met; rounds interleaved, the paths' order rotated per round;
  2. a streamed answer (200 chunks of 100 B, 5 ms apart, like an LLM's tokens): time to first byte, total, and
     each chunk's delivery delay (the server stamps it with CLOCK_MONOTONIC, which every namespace shares);
  3. bulk download throughput (MB/s) and the nebula processes' CPU seconds per MB (user+system, /proc);
  4. join to first request: from starting a fresh node's nebula (certificate signed before) to its first HTTP
     answer over the overlay, for a punchable home and for a symmetric one, h1 asking from the start (before
     the node is known to the lighthouse) and h1 asking once the node's tun address is up;
  5. revocation: h4's and h2's fingerprints in every blocklist, SIGHUP all, seconds until each path to and from
     them fails (probed every 0.1 s), and that the others carry on.

    .venv/bin/python bench/mesh.py [--requests 2000] [--bulk-mib 64]      (as root)

It must run as root: otherwise (or without nebula, ip, iptables, ...) it says why and exits 2. Every wait is
bounded; the namespaces and the nodes' state are removed at the end (the state is kept, and named, on failure).
The machine's other work makes the figures noisy: the rounds are interleaved so that noise hits every path.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import ipaddress
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mesh.netns import (  # noqa: E402
    NOBODY,
    QuietServer,
    Site,
    SmallInternet,
    seconds_until_cut,
    skip_reason,
    small_internet,
    wait_until,
)
from rma.files import write_private  # noqa: E402
from rma.mesh.config import LIGHTHOUSE_PORT, InboundRule, Lighthouse, NodeConfig, render  # noqa: E402
from rma.mesh.pki import MeshCa, make_node_keys  # noqa: E402

HTTP = 8080
BODY = b"x" * 1024
STREAM = "/stream?chunks=200&size=100&gap_ms=5"
GOALS_MS = {"direct": 0.5, "relayed": 1.0}
REVOCATION_BOUND_S = 15.0
SITES = (Site("h1"), Site("h2", symmetric=True), Site("h3", forward=(HTTP,)), Site("h4"), Site("h5", symmetric=True),
         Site("h6"), Site("h7", symmetric=True))
JOINS = {"h4": "punchable, h1 asks from the start", "h5": "symmetric, h1 asks from the start",
         "h6": "punchable, h1 asks once its tun is up", "h7": "symmetric, h1 asks once its tun is up"}
OVERLAY = {"edge": "198.19.0.1", **{site.name: f"198.19.{site.name[1:]}.1" for site in SITES}}
GROUPS = {"edge": ("edge",), "h1": ("cpu", "router"), "h3": ("store",)}  # the others: ("cpu",)
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


# ---- the server run inside a home namespace: `python bench/mesh.py stream-serve HOST:PORT`


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {key: int(values[0]) for key, values in parse_qs(url.query).items()}
        if url.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            size = query.get("size", 100)
            for number in range(query.get("chunks", 200)):
                if number:
                    time.sleep(query.get("gap_ms", 5) / 1000)
                token = b"%020d" % time.monotonic_ns()  # sent at: the client's clock is the same
                self.wfile.write(b"%x\r\n%s\r\n" % (size, token.ljust(size, b"t")))
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/bulk":
            left = query.get("bytes", 1 << 20)
            self.send_response(200)
            self.send_header("Content-Length", str(left))
            self.end_headers()
            block = memoryview(b"b" * (256 << 10))
            while left > 0:
                self.wfile.write(block[:left])
                left -= len(block)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def stream_serve(bind: str, seconds: float) -> None:
    host, port = bind.rsplit(":", 1)
    server = QuietServer((host, int(port)), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("serving", bind, flush=True)
    time.sleep(seconds)


# ---- the clients, run on a thread inside h1's namespace (SmallInternet.call)


def _stream(host: str, port: int, size: int = 100) -> tuple[float, float, list[float]]:
    """(ms to the first body byte, ms to the last, each chunk's ms from its send to its arrival) of one streamed
    answer on a fresh connection."""
    connection = http.client.HTTPConnection(host, port, timeout=5)
    delays: list[float] = []
    pending = b""
    try:
        start = time.perf_counter()
        connection.request("GET", STREAM)
        response = connection.getresponse()
        first = None
        while chunk := response.read1(65536):
            now = time.monotonic_ns()
            first = first or time.perf_counter()
            pending += chunk
            while len(pending) >= size:
                delays.append((now - int(pending[:20])) / 1e6)
                pending = pending[size:]
        end = time.perf_counter()
        return ((first or end) - start) * 1000, (end - start) * 1000, delays
    finally:
        connection.close()


def _bulk(host: str, port: int, size: int) -> tuple[float, int]:
    """(seconds, bytes) of one `size`-byte download."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    buffer = bytearray(1 << 20)
    try:
        start = time.perf_counter()
        connection.request("GET", f"/bulk?bytes={size}")
        response = connection.getresponse()
        received = 0
        while count := response.readinto(buffer):
            received += count
        return time.perf_counter() - start, received
    finally:
        connection.close()


# ---- the mesh


@dataclass
class Node:
    name: str
    ns: str
    folder: Path
    fingerprint: str
    log: Path
    process: Any = None  # subprocess.Popen[bytes] once started

    @property
    def overlay(self) -> str:
        return OVERLAY[self.name]

    def cpu_s(self) -> tuple[float, float]:
        """This node's nebula's (user, system) CPU seconds so far (`ip netns exec` and setpriv exec it: same pid)."""
        comm = Path(f"/proc/{self.process.pid}/comm").read_text().strip()
        if comm != "nebula":
            raise RuntimeError(f"{self.name}'s pid {self.process.pid} is {comm!r}, not nebula")
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLOCK_TICK, int(fields[12]) / CLOCK_TICK


@dataclass
class Mesh:
    net: SmallInternet
    nodes: dict[str, Node]
    lighthouse: Lighthouse

    def ns(self, name: str) -> str:
        return self.nodes[name].ns

    def get(self, source: str, target: str, timeout: float = 2.0) -> str | None:
        return self.net.http_get(self.ns(source), self.nodes[target].overlay, HTTP, "/", timeout)

    def config(self, name: str, blocklist: tuple[str, ...] = ()) -> Path:
        node = self.nodes[name]
        if name == "edge":
            config = NodeConfig(node.folder, (self.lighthouse,), am_lighthouse=True, listen_port=LIGHTHOUSE_PORT,
                                tun_device=None, blocklist=blocklist)
        else:
            config = NodeConfig(node.folder, (self.lighthouse,), inbound=(InboundRule(HTTP),), blocklist=blocklist)
        path = node.folder / "config.yml"
        owner = (NOBODY, NOBODY) if name == "edge" else None
        write_private(path, render(config), owner=owner, mode=0o644)
        return path

    def start(self, name: str) -> Node:
        node = self.nodes[name]
        user = NOBODY if name == "edge" else None  # the edge has no tun: it needs no privilege at all
        node.process = self.net.start(node.ns, ["nebula", "-config", str(self.config(name))], node.log, user)
        return node

    def tun_up(self, name: str) -> bool:
        node = self.nodes[name]
        if node.process.poll() is not None:
            raise RuntimeError(f"{name}'s nebula exited:\n{node.log.read_text(errors='replace')[-2000:]}")
        return node.overlay in self.net.run(node.ns, "ip", "-o", "addr").stdout


def _says(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


def build_mesh(net: SmallInternet, state: Path) -> Mesh:
    """Keys and certificates for every node, HTTP servers in every home, nebula on edge, h1, h2 and h3."""
    ca = MeshCa(state / "ca")
    nodes = {}
    for name, overlay in OVERLAY.items():
        folder = state / name
        public_key = make_node_keys(folder)
        groups = GROUPS.get(name, ("cpu",))
        certificate = ca.sign(name, public_key, ipaddress.IPv4Interface(f"{overlay}/16"), groups, 3600)
        write_private(folder / "host.crt", certificate.pem, mode=0o644)
        write_private(folder / "ca.crt", ca.certificate, mode=0o644)
        if name == "edge":
            for path in (folder, *folder.iterdir()):
                os.chown(path, NOBODY, NOBODY)
        ns = net.edge_ns if name == "edge" else net.homes[name].ns
        nodes[name] = Node(name, ns, folder, certificate.fingerprint, state / f"{name}.log")
    mesh = Mesh(net, nodes, Lighthouse(OVERLAY["edge"], f"{net.edge_address}:{LIGHTHOUSE_PORT}"))
    logs = []
    for name in nodes:
        if name != "edge":
            log = state / f"http-{name}.log"
            net.start(mesh.ns(name), [sys.executable, __file__, "stream-serve", f"0.0.0.0:{HTTP}", "--seconds", "600"],
                      log)
            logs.append(log)
    for name in ("edge", "h1", "h2", "h3"):
        mesh.start(name)
    for log in logs:
        wait_until(partial(_says, log, "serving"), 15, what=f"the server ({log.name})")
    for name in ("h1", "h2", "h3"):
        wait_until(partial(mesh.tun_up, name), 15, what=f"{name}'s tun address")
    return mesh


# ---- the figures


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def counts_at_h1(mesh: Mesh) -> dict[tuple[str, str], int]:
    return mesh.net.udp_packets(mesh.ns("h1"))


def via(mesh: Mesh, before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> str:
    """Which underlay peer carried h1's UDP between `before` and `after` (packets received at h1)."""
    h1, net = mesh.net.homes["h1"].address, mesh.net
    peers = {net.edge_address: "edge", **{home.public: f"r{name[1:]}" for name, home in net.homes.items()}}
    received = {peers[source]: after[source, dest] - before.get((source, dest), 0) for source, dest in after
                if dest == h1 and source in peers}
    return ", ".join(f"from {peer} {count}" for peer, count in received.items() if count) or "none"


def ensure_paths(mesh: Mesh) -> None:
    """h1->h3 direct (a punched pair may start relayed: bounded retries) and h1->h2 relayed, or say not."""
    net, h1 = mesh.net, mesh.net.homes["h1"]
    for target in ("h3", "h2"):
        wait_until(partial(mesh.get, "h1", target, 1.0), 20, what=f"h1 -> {target} over the overlay")
    net.count_udp(h1.ns, h1.address, [net.edge_address, *(home.public for home in net.homes.values())])
    r3, deadline = net.homes["h3"].public, time.monotonic() + 15
    while True:
        before = counts_at_h1(mesh)
        net.latencies_ms(h1.ns, OVERLAY["h3"], HTTP, 150)
        after = counts_at_h1(mesh)
        direct = after[r3, h1.address] - before[r3, h1.address] >= 100
        if direct or time.monotonic() > deadline:
            break
    print(f"path check, 150 GETs h1->h3: UDP {via(mesh, before, after)}{'' if direct else '  (NOT direct!)'}")
    before = counts_at_h1(mesh)
    net.latencies_ms(h1.ns, OVERLAY["h2"], HTTP, 150)
    print(f"path check, 150 GETs h1->h2: UDP {via(mesh, before, counts_at_h1(mesh))}")


def targets(mesh: Mesh) -> dict[str, str]:
    return {"plain": mesh.net.homes["h3"].public, "direct": OVERLAY["h3"], "relayed": OVERLAY["h2"]}


def rotated(labels: list[str], round_number: int) -> list[str]:
    shift = round_number % len(labels)
    return labels[shift:] + labels[:shift]


def latency(mesh: Mesh, requests: int, rounds: int) -> None:
    hosts, h1 = targets(mesh), mesh.ns("h1")
    took: dict[str, list[float]] = {label: [] for label in hosts}
    per_round = max(20, requests // rounds)
    for number in range(rounds):
        for label in rotated(list(hosts), number):
            took[label] += mesh.net.latencies_ms(h1, hosts[label], HTTP, per_round + 10)[10:]  # 10: warm-up
    plain = statistics.median(took["plain"])
    print(f"\n1 KB GET, one keep-alive connection, {rounds} interleaved rounds of {per_round} per path (ms):")
    print(f"  {'path':<22}{'p50':>8}{'p99':>8}{'added p50':>11}  goal")
    names = {"plain": "plain (r3 DNAT)", "direct": "direct h1->h3", "relayed": "relayed h1->edge->h2"}
    for label, values in took.items():
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        added, goal = p50 - plain, GOALS_MS.get(label)
        verdict = "" if goal is None else f"<= {goal} ms: {'met' if added <= goal else 'NOT met'}"
        extra = "" if goal is None else f"{added:+.3f}"
        print(f"  {names[label]:<22}{p50:8.3f}{p99:8.3f}{extra:>11}  {verdict}")
    per = {label: [statistics.median(values[i * per_round:(i + 1) * per_round]) for i in range(rounds)]
           for label, values in took.items()}
    print("  p50 per round: " + "; ".join(f"{label} " + " ".join(f"{ms:.3f}" for ms in values)
                                          for label, values in per.items()))


def streaming(mesh: Mesh, rounds: int) -> None:
    hosts, h1 = targets(mesh), mesh.ns("h1")
    figures: dict[str, list[tuple[float, float, list[float]]]] = {label: [] for label in hosts}
    for number in range(rounds):
        for label in rotated(list(hosts), number):
            figures[label].append(mesh.net.call(h1, _stream, hosts[label], HTTP))
    print(f"\nstreamed answer, 200 x 100 B chunks 5 ms apart, fresh connection each, {rounds} rounds (ms; first byte "
          "and total: medians; delay: a chunk's send to its arrival, over all chunks):")
    print(f"  {'path':<10}{'first byte':>11}{'total':>9}{'delay p50':>11}{'p99':>8}{'added p50':>11}")
    plain = statistics.median(delay for _, _, delays in figures["plain"] for delay in delays)
    for label, values in figures.items():
        first, total = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        delays = [delay for _, _, some in values for delay in some]
        p50, added = statistics.median(delays), statistics.median(delays) - plain
        short = [len(some) for _, _, some in values if len(some) != 200]
        note = f"  (short answers: {short} chunks)" if short else ""
        print(f"  {label:<10}{first:11.2f}{total:9.1f}{p50:11.3f}{percentile(delays, 0.99):8.3f}"
              f"{'' if label == 'plain' else f'{added:+.3f}':>11}{note}")


def bulk(mesh: Mesh, mib: int, rounds: int) -> None:
    hosts, h1, size = targets(mesh), mesh.ns("h1"), mib << 20
    on_path = {"plain": (), "direct": ("h1", "h3"), "relayed": ("h1", "edge", "h2")}
    seconds: dict[str, list[float]] = {label: [] for label in hosts}
    cpu = {label: [0.0, 0.0] for label in hosts}  # user, system
    packets = dict.fromkeys(hosts, "")
    for number in range(rounds):
        for label in rotated(list(hosts), number):
            nodes = [mesh.nodes[name] for name in on_path[label]]
            before, counts = [node.cpu_s() for node in nodes], counts_at_h1(mesh)
            spent, received = mesh.net.call(h1, _bulk, hosts[label], HTTP, size)
            for node, (user, system) in zip(nodes, before, strict=True):
                now = node.cpu_s()
                cpu[label][0] += now[0] - user
                cpu[label][1] += now[1] - system
            packets[label] = via(mesh, counts, counts_at_h1(mesh))
            if received != size:
                raise RuntimeError(f"bulk {label}: {received} of {size} bytes")
            seconds[label].append(spent)
    print(f"\nbulk download h3/h2 -> h1, {mib} MiB x {rounds} rounds:")
    print("  (nebula CPU: its processes' user+system on the path; system includes the underlay's forwarding through")
    print("  the namespaces' veths, bridge and NAT, done inline in nebula's sends)")
    print(f"  {'path':<10}{'MB/s':>8}{'nebula CPU s/MB':>17}{'(user + sys)':>18}  nodes on the path   "
          "UDP at h1 (last round)")
    megabytes = size / 1e6 * rounds
    for label, took in seconds.items():
        rate = size / 1e6 / statistics.median(took)
        user, system = (spent / megabytes for spent in cpu[label])
        per_mb, split = ("-", "") if not on_path[label] else (f"{user + system:.4f}", f"({user:.4f} + {system:.4f})")
        print(f"  {label:<10}{rate:8.1f}{per_mb:>17}{split:>18}  {'+'.join(on_path[label]) or '-':<19}{packets[label]}")


def first_answer(mesh: Mesh, name: str, early: bool, bound_s: float = 30) -> tuple[float | None, float | None]:
    """Start `name`'s nebula; (s to its tun address, s to h1's first HTTP answer from it over the overlay).

    h1 asks from the start (`early`: before the lighthouse knows the node) or once the node's tun address is up.
    A GET (2 s timeout) is begun every 0.1 s, each on a fresh connection, so the figure's resolution is 0.1 s
    even while nebula holds an early SYN until its handshake is done."""
    answered: list[float] = []
    tun: list[float] = []

    def attempt() -> None:
        if mesh.get("h1", name, timeout=2.0) is not None:
            answered.append(time.monotonic() - start)

    with ThreadPoolExecutor(30) as pool:
        start = time.monotonic()
        mesh.start(name)
        if not early:
            wait_until(partial(mesh.tun_up, name), 15, interval=0.01, what=f"{name}'s tun address")
            tun.append(time.monotonic() - start)
        while not answered and time.monotonic() - start < bound_s:
            pool.submit(attempt)
            if not tun and mesh.tun_up(name):
                tun.append(time.monotonic() - start)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - start) % 0.1))
    return (tun[0] if tun else None), (min(answered) if answered else None)


def join(mesh: Mesh) -> None:
    print("\njoin to first request (a fresh node's nebula started, its certificate signed before; h1 GETs it; "
          "s from the start):")
    for name, kind in JOINS.items():
        tun, answered = first_answer(mesh, name, early="from the start" in kind)
        before = counts_at_h1(mesh)
        mesh.net.latencies_ms(mesh.ns("h1"), OVERLAY[name], HTTP, 50)
        path = via(mesh, before, counts_at_h1(mesh))
        shown = "NOT within 30 s" if answered is None else f"{answered:.2f} s"
        tun_shown = "-" if tun is None else f"{tun:.2f} s"
        print(f"  {name} ({kind}): first answer {shown}, tun up at {tun_shown}; then 50 GETs: UDP {path}")


def revocation(mesh: Mesh) -> None:
    net, revoked = mesh.net, ("h4", "h2")
    reaches = partial(lambda source, target: mesh.get(source, target, 0.5) is not None)
    checks: dict[tuple[str, str], Callable[[], bool]] = {}  # (revoked node, path): does the path answer?
    for name in revoked:
        for peer in ("h1", "h3"):
            checks[name, f"{name}->{peer}"] = partial(reaches, name, peer)
            checks[name, f"{peer}->{name}"] = partial(reaches, peer, name)
        checks[name, f"{name}->edge ping"] = partial(net.ping, mesh.ns(name), OVERLAY["edge"], 0.5)
    for (_, label), check in checks.items():
        wait_until(check, 20, interval=0.1, what=f"{label} before the revocation")
    blocklist = tuple(mesh.nodes[name].fingerprint for name in revoked)
    running = [node for node in mesh.nodes.values() if node.process is not None]
    for node in running:
        mesh.config(node.name, blocklist)
    sighup = time.monotonic()
    for node in running:
        node.process.send_signal(signal.SIGHUP)  # 1.6.1 reloads pki.blocklist on SIGHUP
    # seconds from SIGHUP to the start of the round in which each path failed
    cut = seconds_until_cut(checks, sighup, REVOCATION_BOUND_S, 0.1)
    time.sleep(1)
    with ThreadPoolExecutor(len(checks)) as pool:
        back = [label for (_, label), reached in zip(checks, pool.map(lambda key: checks[key](), checks), strict=True)
                if reached]
    print(f"\nrevocation of {' and '.join(revoked)} (fingerprints in every blocklist, SIGHUP all; probes every 0.1 s):")
    for name in revoked:
        mine = {label: cut.get((owner, label)) for owner, label in checks if owner == name}
        shown = ", ".join(f"{label} {'NOT cut' if s is None else f'{s:.2f}'}" for label, s in mine.items())
        times = [s for s in mine.values() if s is not None]
        whole = f"{max(times):.2f} s" if len(times) == len(mine) else f"NOT within {REVOCATION_BOUND_S:.0f} s"
        print(f"  {name}: cut off from everyone {whole} after SIGHUP (per path, s: {shown})")
    others = all(mesh.get(source, target) is not None for source, target in (("h1", "h3"), ("h3", "h1"), ("h5", "h1")))
    print(f"  1 s later: {'came back: ' + ', '.join(back) if back else 'no path came back'}; "
          f"h1<->h3 and h5->h1 still answer: {'yes' if others else 'NO'}")


def bench(requests: int, bulk_mib: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="rma-bench-mesh-"))
    state.chmod(0o711)  # the edge's nebula, as nobody, reads its folder below
    started, ok = time.monotonic(), False
    try:
        with small_internet(state / "net", SITES) as net:
            mesh = build_mesh(net, state)
            print(f"mesh up in {time.monotonic() - started:.1f} s (namespaces, keys, 4 nebula, 7 servers)")
            ensure_paths(mesh)
            latency(mesh, requests, 5)
            streaming(mesh, 5)
            bulk(mesh, bulk_mib, 2)
            join(mesh)
            revocation(mesh)
            dead = [node.name for node in mesh.nodes.values() if node.process and node.process.poll() is not None]
            if dead:
                print(f"\nnebula exited during the run: {dead}")
        ok = True
    finally:
        if ok:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"\nfailed; logs kept in {state}", file=sys.stderr)
    print(f"\ntotal {time.monotonic() - started:.1f} s; namespaces removed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["bench", "stream-serve"], default="bench")
    parser.add_argument("bind", nargs="?", metavar="HOST:PORT", help="stream-serve's address")
    parser.add_argument("--requests", type=int, default=2000, help="1 KB GETs per path, over all rounds")
    parser.add_argument("--bulk-mib", type=int, default=64, help="MiB per bulk download")
    parser.add_argument("--seconds", type=float, default=600, help="stream-serve's lifetime (a bound)")
    arguments = parser.parse_args()
    if arguments.command == "stream-serve":
        stream_serve(arguments.bind or f"0.0.0.0:{HTTP}", arguments.seconds)
        return 0
    reason = "this bench builds network namespaces: run it as root" if os.geteuid() != 0 else skip_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    bench(arguments.requests, arguments.bulk_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
