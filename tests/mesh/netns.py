"""A small internet in Linux network namespaces, for the mesh's tests (root only; stdlib only).

    internet  198.18.0.0/24, a bridge in namespace `…-inet`
      edge    198.18.0.10, on the internet directly (a public address)
      router  198.18.0.(10+i) for the i-th home (1-based), masquerading its LAN 198.18.i.0/24
        home  198.18.i.2 behind it

Every namespace is named `rmat-<pid>-<n>-<role>`: runs side by side never clash, and a run that died
(its pid gone) leaves namespaces the next run removes. Only 198.18.0.0/15 is used. Everything made is
removed on leaving `small_internet`, even on failure. Run as a script, this file is the tiny HTTP server
the tests start in a namespace (`python netns.py serve HOST:PORT ... --name NAME`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import http.server
import itertools
import os
import shutil
import signal
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rma.worker.mesh_node import icmp_rtt_ms

PREFIX = "rmat-"
NOBODY = 65534
EDGE_ADDRESS = "198.18.0.10"
COUNT_CHAIN = "RMATCOUNT"
CLONE_NEWNET = 0x40000000
TOOLS = ("ip", "iptables", "nebula", "nebula-cert", "tcpdump", "setpriv", "sysctl")
T = TypeVar("T")
K = TypeVar("K")
_serial = itertools.count()


def _ip(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout, check=False)


def skip_reason() -> str | None:
    """Why the namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", probe)
        if made.returncode != 0:
            return f"`ip netns add` fails here: {made.stderr.strip()[:200]}"
        nat = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L", "-n"], capture_output=True,
                             text=True, timeout=10, check=False)
        if nat.returncode != 0:
            return f"iptables' nat table is not usable in a namespace: {nat.stderr.strip()[:200]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"namespaces do not work here: {exc}"
    finally:
        _ip("netns", "del", probe)
    return None


def namespaces() -> list[str]:
    """Every network namespace's name."""
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _remove_namespace(name: str) -> None:
    for pid in _ip("netns", "pids", name).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", name)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a killed run's process may linger a moment as a zombie


def remove_leftovers() -> list[str]:
    """Remove the namespaces of runs whose process is gone; their names."""
    gone = []
    for name in namespaces():
        if name.startswith(PREFIX):
            pid = name[len(PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                _remove_namespace(name)
                gone.append(name)
    return gone


def privileges(user: int | None, caps: Sequence[str] = ()) -> list[str]:
    """The setpriv prefix that runs a command as `user` with only `caps` (None: as root, unchanged)."""
    if user is None:
        return []
    keep = "".join(f",+{cap}" for cap in caps)
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", f"--inh-caps=-all{keep}"]
    if caps:
        prefix.append(f"--ambient-caps=-all{keep}")  # ambient: kept across the exec of a non-root program
    return [*prefix, f"--bounding-set=-all{keep}", "--no-new-privs"]


@dataclass(frozen=True)
class Site:
    """A home to build: its name, and how its router treats it."""

    name: str
    symmetric: bool = False  # masquerade --random-fully: a fresh port per flow, a NAT no hole punch passes
    forward: tuple[int, ...] = ()  # TCP ports the router forwards (DNAT) to the home: a path without the overlay


@dataclass(frozen=True)
class Home:
    """A built home: its namespace and address, its router's namespace and public address."""

    name: str
    ns: str
    address: str
    router_ns: str
    public: str


@dataclass
class SmallInternet:
    """The namespaces built, with what runs in them; `small_internet` makes one and removes it all."""

    state: Path
    token: str
    edge_ns: str = ""
    homes: dict[str, Home] = field(default_factory=dict)
    made: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    edge_address: str = EDGE_ADDRESS

    def name(self, role: str) -> str:
        return f"{self.token}-{role}"

    def run(self, ns: str, *argv: str, timeout: float = 10, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`argv` run in namespace `ns` (with `env` added, as `start` does); RuntimeError (with its output) when
        it fails and `check`."""
        done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
                              check=False, env={**os.environ, **(env or {})})
        if check and done.returncode != 0:
            raise RuntimeError(f"{ns}: {' '.join(argv)} -> {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def start(self, ns: str, argv: Sequence[str], log: Path, user: int | None = None,
              caps: Sequence[str] = (), env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A long-running `argv` in `ns` (as `user` with only `caps`, with `env` added to this process's
        environment: secrets go there, never on a command line), output to `log`; stopped on close."""
        with open(log, "ab") as out:
            process = subprocess.Popen(["ip", "netns", "exec", ns, *privileges(user, caps), *argv], stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, **(env or {})})
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 5) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)

    def call(self, ns: str, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` on a thread inside `ns`: its sockets are that namespace's (the thread then ends)."""
        outcome: list[Any] = []

        def inside() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {ns}")
                finally:
                    os.close(fd)
                outcome.append((True, function(*args)))
            except BaseException as exc:  # handed to the caller
                outcome.append((False, exc))

        thread = threading.Thread(target=inside, daemon=True)
        thread.start()
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        result: T = value
        return result

    def http_get(self, ns: str, host: str, port: int, path: str = "/", timeout: float = 2.0,
                 headers: dict[str, str] | None = None) -> str | None:
        """The body a GET from `ns` gets, or None when it fails or times out (a firewall drop is silent)."""
        return self.call(ns, _get, host, port, path, timeout, headers or {})

    def latencies_ms(self, ns: str, host: str, port: int, count: int = 200) -> list[float]:
        """Round trips of `count` GETs on one keep-alive connection from `ns`."""
        return self.call(ns, _latencies, host, port, count)

    def ping(self, ns: str, address: str, timeout: float = 1.0) -> bool:
        """One ICMP echo from `ns` answered within `timeout` (a raw socket: root)."""
        return self.call(ns, _ping, address, timeout)

    def count_udp(self, ns: str, own: str, peers: Sequence[str]) -> None:
        """Count the UDP packets between `own` and each of `peers` in `ns` (see `udp_packets`)."""
        self.run(ns, "iptables", "-N", COUNT_CHAIN)
        for chain in ("INPUT", "OUTPUT"):
            self.run(ns, "iptables", "-I", chain, "-p", "udp", "-j", COUNT_CHAIN)
        for peer in peers:
            self.run(ns, "iptables", "-A", COUNT_CHAIN, "-s", peer, "-d", own)
            self.run(ns, "iptables", "-A", COUNT_CHAIN, "-s", own, "-d", peer)

    def udp_packets(self, ns: str) -> dict[tuple[str, str], int]:
        """UDP packets so far, by (source, destination), in `ns`."""
        lines = self.run(ns, "iptables", "-nvxL", COUNT_CHAIN).stdout.splitlines()[2:]
        counts = {}
        for line in lines:
            fields = line.split()  # pkts bytes target prot opt in out source destination
            counts[fields[-2], fields[-1]] = int(fields[0])
        return counts

    @contextlib.contextmanager
    def capture(self, ns: str, interface: str, path: Path) -> Iterator[Path]:
        """Every packet on `interface` in `ns` into `path` (pcap) while inside; whole once it exits."""
        log = path.with_suffix(".log")
        # --immediate-mode: no buffering lost at SIGINT; -Z root: tcpdump may keep writing where root put it
        tcpdump = self.start(ns, ["tcpdump", "-i", interface, "-U", "--immediate-mode", "-s", "0", "-Z", "root",
                                  "-w", str(path)], log)
        wait_until(lambda: "listening on" in log.read_text(errors="replace"), 10, what=f"tcpdump on {ns}")
        try:
            yield path
        finally:
            time.sleep(0.5)
            tcpdump.send_signal(signal.SIGINT)
            self.stop(tcpdump)

    def build(self, sites: Sequence[Site]) -> None:
        inet, self.edge_ns = self.name("inet"), self.name("edge")
        for ns in (inet, self.edge_ns):
            self._namespace(ns)
        _must(_ip("-n", inet, "link", "add", "br0", "type", "bridge"))
        _must(_ip("-n", inet, "link", "set", "br0", "up"))
        self._attach(inet, self.edge_ns, "edge", self.edge_address)
        for number, site in enumerate(sites, start=1):
            home = Home(site.name, self.name(site.name), f"198.18.{number}.2", self.name(f"r{number}"),
                        f"198.18.0.{10 + number}")
            for ns in (home.router_ns, home.ns):
                self._namespace(ns)
            self._attach(inet, home.router_ns, f"r{number}", home.public)
            _must(_ip("link", "add", "lan", "netns", home.router_ns, "type", "veth", "peer", "name", "eth0", "netns",
                      home.ns))
            _must(_ip("-n", home.router_ns, "addr", "add", f"198.18.{number}.1/24", "dev", "lan"))
            _must(_ip("-n", home.router_ns, "link", "set", "lan", "up"))
            _must(_ip("-n", home.ns, "addr", "add", f"{home.address}/24", "dev", "eth0"))
            _must(_ip("-n", home.ns, "link", "set", "eth0", "up"))
            _must(_ip("-n", home.ns, "route", "add", "default", "via", f"198.18.{number}.1"))
            router = home.router_ns
            self.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # A home router drops unsolicited UDP: a peer's early punch would otherwise leave a conntrack entry
            # that makes masquerade pick a new port for the home's own punch, and the pair would stay relayed.
            self.run(router, "iptables", "-A", "INPUT", "-i", "wan", "-p", "udp", "-m", "conntrack", "--ctstate",
                     "NEW", "-j", "DROP")
            # plain masquerade keeps the source port when it can, so punching works; --random-fully never does
            self.run(router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE",
                     *(["--random-fully"] if site.symmetric else []))
            for port in site.forward:
                self.run(router, "iptables", "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p", "tcp", "--dport",
                         str(port), "-j", "DNAT", "--to-destination", f"{home.address}:{port}")
            self.homes[site.name] = home

    def _namespace(self, ns: str) -> None:
        _must(_ip("netns", "add", ns))
        self.made.append(ns)
        _must(_ip("-n", ns, "link", "set", "lo", "up"))

    def _attach(self, inet: str, ns: str, port: str, address: str) -> None:
        _must(_ip("link", "add", "wan", "netns", ns, "type", "veth", "peer", "name", f"p-{port}", "netns", inet))
        _must(_ip("-n", inet, "link", "set", f"p-{port}", "master", "br0", "up"))
        _must(_ip("-n", ns, "addr", "add", f"{address}/24", "dev", "wan"))
        _must(_ip("-n", ns, "link", "set", "wan", "up"))

    def close(self) -> None:
        """Stop every process started, then remove every namespace made (and whatever still runs in it)."""
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop(process)
        for ns in reversed(self.made):
            _remove_namespace(ns)

    def leftovers(self) -> list[str]:
        return [ns for ns in namespaces() if ns.startswith(self.token + "-")]


@contextlib.contextmanager
def small_internet(state: Path, sites: Sequence[Site]) -> Iterator[SmallInternet]:
    """The small internet with `sites` as its homes, removed whole on exit (leftovers of dead runs first)."""
    remove_leftovers()
    state.mkdir(parents=True, exist_ok=True)
    net = SmallInternet(state, f"{PREFIX}{os.getpid()}-{next(_serial)}")
    try:
        net.build(sites)
        yield net
    finally:
        net.close()


def seconds_until_cut(checks: Mapping[K, Callable[[], bool]], since: float, bound: float,
                      interval: float) -> dict[K, float]:
    """Probe every check (side by side) each `interval` until each has failed once or `bound` seconds passed
    `since`; for each that failed, the seconds from `since` to the start of the round it first failed in."""
    cut: dict[K, float] = {}
    with ThreadPoolExecutor(max(1, len(checks))) as pool:
        while len(cut) < len(checks) and time.monotonic() - since < bound:
            round_start = time.monotonic()
            pending = [key for key in checks if key not in cut]
            for key, reached in zip(pending, pool.map(lambda key: checks[key](), pending), strict=True):
                if not reached:
                    cut[key] = round_start - since
            time.sleep(max(0.0, interval - (time.monotonic() - round_start)))
    return cut


def _must(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(done.args)} -> {done.returncode}: {done.stderr.strip()}")


def wait_until(check: Callable[[], T], timeout: float, interval: float = 0.2, what: str = "a condition") -> T:
    """check()'s first truthy value, polled every `interval`; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(interval)


def _get(host: str, port: int, path: str, timeout: float, headers: dict[str, str]) -> str | None:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        return connection.getresponse().read().decode()
    except OSError:
        return None
    finally:
        connection.close()


def _latencies(host: str, port: int, count: int) -> list[float]:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    took = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            connection.request("GET", "/")
            connection.getresponse().read()
            took.append((time.perf_counter() - start) * 1000)
    finally:
        connection.close()
    return took


def _ping(address: str, timeout: float) -> bool:
    return icmp_rtt_ms(address, timeout) is not None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, for the latency figures
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK would add ~40 ms each
    name = ""

    def do_GET(self) -> None:
        body = f"{self.name} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTP server that binds an address without a DNS lookup."""

    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer's own looks its address up in DNS (getfqdn): a namespace has none, a 5 s resolver timeout
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


def serve(binds: Sequence[str], name: str, seconds: float) -> None:
    """Answer GETs on every HOST:PORT of `binds` with '<name> <path>', for at most `seconds`."""
    _Handler.name = name
    for bind in binds:
        host, port = bind.rsplit(":", 1)
        server = QuietServer((host, int(port)), _Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("serving", *binds, flush=True)
    time.sleep(seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the tests' tiny HTTP server, run inside a namespace")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("binds", nargs="+", metavar="HOST:PORT")
    parser.add_argument("--name", required=True)
    parser.add_argument("--seconds", type=float, default=600)  # a bound, should the test forget it
    arguments = parser.parse_args()
    serve(arguments.binds, arguments.name, arguments.seconds)
