"""The mesh for real: Nebula 1.6.1 nodes, keyed by `rma.mesh.pki` and configured by `rma.mesh.config`, on a
small internet of network namespaces (see netns.py).

    edge  198.19.0.1 [edge]        lighthouse and relay, public 198.18.0.10, tun disabled, as nobody, no capability
    h1    198.19.1.1 [cpu,router]  behind plain masquerade (r1)          root
    h2    198.19.2.1 [cpu]         behind a symmetric NAT (r2)           root
    h3    198.19.3.1 [store]       behind plain masquerade (r3), which also forwards tcp/8080: a path without
                                   the overlay; as nobody with only CAP_NET_ADMIN

Every home serves HTTP on 8080 to the whole mesh; h3 also 9090 to [router] and 9091 to [cpu AND router]. The
mesh is built once for the module; the revocation test, which cuts h2 off, runs last.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pytest

from mesh.netns import (
    NOBODY,
    Site,
    SmallInternet,
    privileges,
    seconds_until_cut,
    skip_reason,
    small_internet,
    wait_until,
)
from rma.files import write_private
from rma.mesh.config import LIGHTHOUSE_PORT, InboundRule, Lighthouse, NodeConfig, render
from rma.mesh.pki import MeshCa, make_node_keys

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

HTTP, ROUTER_ONLY, CPU_AND_ROUTER = 8080, 9090, 9091
REVOCATION_BOUND_S = 15.0
NETNS = Path(__file__).with_name("netns.py")


@dataclass(frozen=True)
class Spec:
    overlay: str
    groups: tuple[str, ...]
    user: int | None  # None: root
    caps: tuple[str, ...] = ()


SPECS = {
    "edge": Spec("198.19.0.1", ("edge",), NOBODY),
    "h1": Spec("198.19.1.1", ("cpu", "router"), None),
    "h2": Spec("198.19.2.1", ("cpu",), None),
    "h3": Spec("198.19.3.1", ("store",), NOBODY, ("net_admin",)),
}
HOMES = ("h1", "h2", "h3")


@dataclass
class Node:
    name: str
    ns: str
    spec: Spec
    config: NodeConfig
    fingerprint: str
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def overlay(self) -> str:
        return self.spec.overlay

    def write_config(self, config: NodeConfig) -> Path:
        self.config = config
        path = config.folder / "config.yml"
        owner = None if self.spec.user is None else (self.spec.user, self.spec.user)
        write_private(path, render(config), owner=owner, mode=0o644)
        return path

    def tail(self, lines: int = 15) -> str:
        return f"--- {self.name}'s log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Mesh:
    net: SmallInternet
    nodes: dict[str, Node]

    def ns(self, name: str) -> str:
        return self.nodes[name].ns

    def get(self, source: str, target: str, port: int = HTTP, path: str = "/", timeout: float = 2.0) -> str | None:
        return self.net.http_get(self.ns(source), self.nodes[target].overlay, port, path, timeout)


def _traversable(folder: Path, top: Path) -> None:
    """Let nobody (the edge's and h3's nebula) pass through pytest's 0700 folders down to `folder`."""
    for step in (folder, *folder.parents):
        step.chmod(step.stat().st_mode | 0o011)
        if step == top:
            break


def _node_config(folder: Path, name: str, edge: Lighthouse, blocklist: tuple[str, ...] = ()) -> NodeConfig:
    if name == "edge":
        return NodeConfig(folder, (edge,), am_lighthouse=True, listen_port=LIGHTHOUSE_PORT, tun_device=None,
                          blocklist=blocklist)
    rules = [InboundRule(HTTP)]
    if name == "h3":
        rules += [InboundRule(ROUTER_ONLY, groups=("router",)), InboundRule(CPU_AND_ROUTER, groups=("cpu", "router"))]
    return NodeConfig(folder, (edge,), inbound=tuple(rules), blocklist=blocklist)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("mesh")
    _traversable(state, tmp_path_factory.getbasetemp().parent)
    started = time.monotonic()
    sites = [Site("h1"), Site("h2", symmetric=True), Site("h3", forward=(HTTP,))]
    with small_internet(state / "net", sites) as net:
        built = time.monotonic()
        edge = Lighthouse(SPECS["edge"].overlay, f"{net.edge_address}:{LIGHTHOUSE_PORT}")
        ca = MeshCa(state / "ca")
        nodes: dict[str, Node] = {}
        for name, spec in SPECS.items():
            folder = state / name
            public_key = make_node_keys(folder)  # made in the node's folder: the CA sees only the public key
            certificate = ca.sign(name, public_key, ipaddress.IPv4Interface(f"{spec.overlay}/16"), spec.groups, 3600)
            write_private(folder / "host.crt", certificate.pem, mode=0o644)
            write_private(folder / "ca.crt", ca.certificate, mode=0o644)
            if spec.user is not None:
                for path in (folder, *folder.iterdir()):  # its key too: nebula reads it as that user
                    os.chown(path, spec.user, spec.user)
            ns = net.edge_ns if name == "edge" else net.homes[name].ns
            node = Node(name, ns, spec, _node_config(folder, name, edge), certificate.fingerprint,
                        state / f"{name}.log")
            config_path = node.write_config(node.config)
            node.process = net.start(ns, ["nebula", "-config", str(config_path)], node.log, spec.user, spec.caps)
            nodes[name] = node
        the_mesh = Mesh(net, nodes)
        for name in HOMES:
            wait_until(partial(_tun_up_or_dead, net, nodes[name]), 15, what=f"{name}'s tun address")
        for node in nodes.values():
            assert not _dead(node), f"{node.name}'s nebula exited\n{node.tail()}"
        tuns = time.monotonic()
        for name in HOMES:
            binds = [f"0.0.0.0:{HTTP}"]
            if name == "h3":
                binds += [f"{SPECS['h3'].overlay}:{ROUTER_ONLY}", f"{SPECS['h3'].overlay}:{CPU_AND_ROUTER}"]
            log = state / f"http-{name}.log"
            net.start(nodes[name].ns, [sys.executable, str(NETNS), "serve", *binds, "--name", name, "--seconds", "300"],
                      log)
            wait_until(partial(_says, log, "serving"), 10, what=f"{name}'s HTTP server")
        print(f"\nmesh: namespaces {built - started:.2f} s, keys and nebula up (tun addresses) {tuns - built:.2f} s, "
              f"HTTP servers {time.monotonic() - tuns:.2f} s")
        yield the_mesh
        for node in nodes.values():
            assert node.process is not None and node.process.poll() is None, f"{node.name} died\n{node.tail()}"
    assert net.leftovers() == []


def _dead(node: Node) -> bool:
    return node.process is not None and node.process.poll() is not None


def _tun_up_or_dead(net: SmallInternet, node: Node) -> bool:
    return node.overlay in net.run(node.ns, "ip", "-o", "addr").stdout or _dead(node)


def _says(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


def test_every_home_reaches_every_other_over_the_overlay(mesh: Mesh) -> None:
    started = time.monotonic()
    for source in HOMES:
        wait_until(partial(mesh.net.ping, mesh.ns(source), SPECS["edge"].overlay, 0.5), 15,
                   what=f"{source} -> edge ping (a lighthouse with no tun answers ICMP)")
    # Who opens a tunnel first matters: to reach h2 (no punch passes its NAT) the opener relays through the
    # relays h2 announced, and h2 opening one relays through the relays of its peer. So h2 opens to h1, h3 to h2.
    for source, target in (("h2", "h1"), ("h3", "h2"), ("h1", "h3"), ("h1", "h2"), ("h2", "h3"), ("h3", "h1")):
        body = wait_until(partial(mesh.get, source, target, timeout=1.0), 20,
                          what=f"{source} -> {target} over the overlay")
        assert body == f"{target} /"
    print(f"\nevery pair answered within {time.monotonic() - started:.2f} s")


def _delta(before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: after[key] - before.get(key, 0) for key in after}


def _nonzero(counts: dict[tuple[str, str], int]) -> dict[str, int]:
    return {f"{source}->{destination}": packets for (source, destination), packets in counts.items() if packets}


def test_a_punched_pair_is_direct_and_the_symmetric_nat_is_relayed(mesh: Mesh) -> None:
    net, h1 = mesh.net, mesh.net.homes["h1"]
    r2, r3 = net.homes["h2"].public, net.homes["h3"].public
    net.count_udp(h1.ns, h1.address, [net.edge_address, *(home.public for home in net.homes.values())])
    # 1.6.1 asks the relay in parallel with the first direct handshake: a punchable pair may start relayed and
    # move to direct when its tunnel is next re-evaluated (every 1000 packets); so poll, bounded, for direct.
    deadline, batches = time.monotonic() + 15, 0
    while True:
        before = net.udp_packets(h1.ns)
        net.latencies_ms(h1.ns, SPECS["h3"].overlay, HTTP, 150)
        direct = _delta(before, net.udp_packets(h1.ns))
        batches += 1
        if direct[r3, h1.address] >= 100 and direct[net.edge_address, h1.address] <= 10 or time.monotonic() > deadline:
            break
    before = net.udp_packets(h1.ns)
    net.latencies_ms(h1.ns, SPECS["h2"].overlay, HTTP, 150)
    relayed = _delta(before, net.udp_packets(h1.ns))
    first: dict[str, str] = {}
    for line in mesh.nodes["h1"].log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("msg") == "Handshake message received" and entry.get("vpnIp") in (SPECS["h2"].overlay,
                                                                                        SPECS["h3"].overlay):
            first.setdefault(entry["vpnIp"], "direct" if entry.get("udpAddr") else "relayed")
    print(f"\nUDP packets at h1, h1 -> h3 after {batches} batch(es) of 150 GETs: {_nonzero(direct)}\n"
          f"h1 -> h2: {_nonzero(relayed)}\n"
          f"first handshake path seen by h1: {first}")
    assert direct[r3, h1.address] >= 100 and direct[net.edge_address, h1.address] <= 10, direct
    assert relayed[r2, h1.address] == 0 and relayed[h1.address, r2] == 0, relayed
    assert relayed[net.edge_address, h1.address] >= 100, relayed


def test_latency_figures_plain_direct_relayed(mesh: Mesh) -> None:
    net, h1 = mesh.net, mesh.net.homes["h1"]
    figures = {}
    for label, host in (("plain (r3 DNAT)", net.homes["h3"].public), ("direct h1->h3", SPECS["h3"].overlay),
                        ("relayed h1->edge->h2", SPECS["h2"].overlay)):
        took = net.latencies_ms(h1.ns, host, HTTP, 300)[20:]
        figures[label] = statistics.median(took)
    print("\np50 of a keep-alive GET, ms: " + ", ".join(f"{label} {ms:.3f}" for label, ms in figures.items()))
    assert all(ms < 50 for ms in figures.values()), figures


def test_the_wire_holds_no_plaintext_of_overlay_traffic(mesh: Mesh) -> None:
    net, r1 = mesh.net, mesh.net.homes["h1"].router_ns
    tag = secrets.token_hex(8)
    hidden, plain = f"/overlay-secret-{tag}", f"/plain-secret-{tag}"
    with net.capture(r1, "wan", net.state / f"r1-wan-{tag}.pcap") as pcap:
        direct = mesh.get("h1", "h3", path=hidden)
        relayed = mesh.get("h1", "h2", path=hidden)
        control = net.http_get(mesh.ns("h1"), net.homes["h3"].public, HTTP, plain)  # the same hops, no overlay
    wire = pcap.read_bytes()
    assert (direct, relayed, control) == (f"h3 {hidden}", f"h2 {hidden}", f"h3 {plain}")
    seen_plain, seen_hidden = plain.encode() in wire, hidden.encode() in wire
    assert seen_plain, "the capture missed the plain request: it proves nothing"
    assert not seen_hidden, f"a request sent over the overlay is readable on r1's WAN link ({pcap})"
    assert len(wire) > 2000, "the overlay requests crossed r1's WAN link"


def test_a_group_rule_admits_only_hosts_having_all_its_groups(mesh: Mesh) -> None:
    assert mesh.get("h2", "h3") == "h3 /", "h2 reaches h3 where the rule is any host"
    assert mesh.get("h1", "h3", ROUTER_ONLY) == "h3 /", "h1 [cpu,router] is admitted to the [router] port"
    assert mesh.get("h1", "h3", CPU_AND_ROUTER) == "h3 /", "h1 has both groups of the [cpu,router] port"
    started = time.monotonic()
    assert mesh.get("h2", "h3", ROUTER_ONLY, timeout=1.5) is None, "h2 [cpu] is dropped at the [router] port"
    assert mesh.get("h2", "h3", CPU_AND_ROUTER, timeout=1.5) is None, "h2 has cpu but not router: groups are ALL"
    assert time.monotonic() - started >= 2.9, "1.6.1 has no reject: a refused port is a silent drop (a timeout)"


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.split()[0] for key, _, value in (line.partition(":\t") for line in lines) if value.strip()}


def test_nodes_run_without_root(mesh: Mesh) -> None:
    edge, h3 = mesh.nodes["edge"], mesh.nodes["h3"]
    assert edge.process is not None and h3.process is not None
    edge_status, h3_status = _status(edge.process.pid), _status(h3.process.pid)
    assert (edge_status["Uid"], edge_status["CapEff"], edge_status["CapBnd"]) == ("65534", "0" * 16, "0" * 16)
    cap_net_admin = f"{1 << 12:016x}"
    assert (h3_status["Uid"], h3_status["CapEff"], h3_status["CapBnd"]) == ("65534", cap_net_admin, cap_net_admin)
    assert mesh.get("h1", "h3") == "h3 /" and mesh.get("h3", "h2") == "h2 /"
    # without CAP_NET_ADMIN a tun node cannot start at all
    nocap = h3.config.folder / "nocap.yml"
    write_private(nocap, render(replace(h3.config, tun_device="rma-nocap0")), owner=(NOBODY, NOBODY), mode=0o644)
    done = mesh.net.run(h3.ns, *privileges(NOBODY), "nebula", "-config", str(nocap), timeout=15, check=False)
    assert done.returncode != 0 and "Failed to get a tun/tap device" in done.stdout + done.stderr, done.stdout


def test_a_revoked_node_is_cut_off_from_everyone_and_the_rest_carry_on(mesh: Mesh) -> None:
    net, h2 = mesh.net, mesh.nodes["h2"]
    assert mesh.get("h2", "h1") and mesh.get("h2", "h3") and mesh.get("h1", "h2"), "h2 is in the mesh before"
    for node in mesh.nodes.values():
        node.write_config(_node_config(node.config.folder, node.name, node.config.lighthouses[0], (h2.fingerprint,)))
    sighup = time.monotonic()
    for node in mesh.nodes.values():
        assert node.process is not None
        node.process.send_signal(signal.SIGHUP)  # 1.6.1 reloads pki.blocklist on SIGHUP
    checks: dict[str, Callable[[], bool]] = {
        "h2 -> h1": lambda: mesh.get("h2", "h1", timeout=0.5) is not None,
        "h2 -> h3": lambda: mesh.get("h2", "h3", timeout=0.5) is not None,
        "h1 -> h2": lambda: mesh.get("h1", "h2", timeout=0.5) is not None,
        "h2 -> edge (ping)": lambda: net.ping(h2.ns, SPECS["edge"].overlay, 0.5),
    }
    # seconds from SIGHUP to the start of the first round in which a path failed
    cut = {label: round(seconds, 2) for label, seconds in seconds_until_cut(checks, sighup, REVOCATION_BOUND_S,
                                                                              0.2).items()}
    print(f"\nseconds from SIGHUP until h2 is cut off: {cut}")
    assert set(cut) == set(checks), f"still reachable after {REVOCATION_BOUND_S} s: {set(checks) - set(cut)}"
    time.sleep(1)
    assert not any(reaches() for reaches in checks.values()), "a cut-off path came back"
    assert mesh.get("h1", "h3") == "h3 /" and mesh.get("h3", "h1") == "h1 /", "the others still reach each other"
    assert net.ping(mesh.ns("h1"), SPECS["edge"].overlay) and net.ping(mesh.ns("h3"), SPECS["edge"].overlay)
