"""The Nebula config of one mesh node, as data, rendered to the text `nebula -config` reads.

The text is JSON: JSON is YAML, which Nebula parses (yaml.v2), so no YAML library is needed. Every key
written is one Nebula 1.6.1 (Debian's) reads: 1.6.1 silently ignores keys from newer docs, and
`nebula -test` passes them, so `render` refuses to write any other (see `ignored_by_161`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rma.mesh.pki import GROUP

LIGHTHOUSE_PORT = 4242  # a lighthouse's UDP port: fixed and known, unlike a home node's
TUN_DEVICE = "rma-mesh0"
PROTOCOLS = ("tcp", "udp", "icmp", "any")
PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")

# The keys Nebula 1.6.1 reads (its `c.Get*("...")` calls); values under OPAQUE_161 are read whole.
KNOWN_161 = frozenset({
    "cipher", "handshakes.retries", "handshakes.trigger_buffer", "handshakes.try_interval",
    "lighthouse.advertise_addrs", "lighthouse.am_lighthouse", "lighthouse.dns.host", "lighthouse.dns.port",
    "lighthouse.hosts", "lighthouse.interval", "lighthouse.serve_dns", "listen.batch", "listen.host", "listen.port",
    "listen.read_buffer", "listen.routines", "listen.send_recv_error", "listen.write_buffer", "local_range",
    "logging.disable_timestamp", "logging.format", "logging.level", "logging.timestamp_format", "pki.blacklist",
    "pki.blocklist", "pki.ca", "pki.cert", "pki.disconnect_invalid", "pki.key", "preferred_ranges", "punch_back",
    "punchy", "punchy.delay", "punchy.punch", "punchy.respond", "relay.am_relay", "relay.relays", "relay.use_relays",
    "routines", "sshd.authorized_users", "sshd.enabled", "sshd.host_key", "sshd.listen", "stats.host",
    "stats.interval", "stats.lighthouse_metrics", "stats.listen", "stats.message_metrics", "stats.namespace",
    "stats.path", "stats.prefix", "stats.protocol", "stats.subsystem", "stats.type",
    "timers.connection_alive_interval", "timers.pending_deletion_interval", "tun.dev", "tun.disabled",
    "tun.drop_local_broadcast", "tun.drop_multicast", "tun.mtu", "tun.routes", "tun.routines", "tun.tx_queue",
    "tun.unsafe_routes", "firewall.conntrack.default_timeout", "firewall.conntrack.routine_cache_timeout",
    "firewall.conntrack.tcp_timeout", "firewall.conntrack.udp_timeout"})
OPAQUE_161 = frozenset({
    "static_host_map", "firewall.inbound", "firewall.outbound", "lighthouse.local_allow_list",
    "lighthouse.remote_allow_list", "lighthouse.remote_allow_ranges", "tun.routes", "tun.unsafe_routes",
    "sshd.authorized_users", "pki.blocklist", "pki.blacklist", "relay.relays", "lighthouse.hosts",
    "lighthouse.advertise_addrs", "preferred_ranges"})
# A firewall rule's keys in 1.6.1 (convertRule); newer ones (local_cidr) would be ignored.
RULE_KEYS_161 = frozenset({"port", "code", "proto", "host", "cidr", "ca_name", "ca_sha", "group", "groups"})


@dataclass(frozen=True)
class Lighthouse:
    """A lighthouse, also the mesh's relay, that every other node is told about."""

    overlay_ip: str
    underlay: str  # "host:port" where its UDP listener is reachable

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.overlay_ip)
        host, _, port = self.underlay.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a lighthouse's underlay is 'host:port': {self.underlay!r}")


@dataclass(frozen=True)
class InboundRule:
    """One `firewall.inbound` rule: who in the mesh may open `port`.

    No groups: any host of the mesh. Groups: only a host whose certificate has ALL of them (1.6.1's
    `groups:`; a list under `group:` is refused unless it has one entry, so it is never written).
    """

    port: int | str  # a port, a range "8000-8100", or "any"
    proto: str = "tcp"  # tcp, udp, icmp or any
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.proto not in PROTOCOLS:
            raise ValueError(f"a rule's proto is one of {PROTOCOLS}: {self.proto!r}")
        bad = [group for group in self.groups if not GROUP.fullmatch(group)]
        if bad:
            raise ValueError(f"mesh groups are lower-case letters, digits and '-': {bad}")
        if isinstance(self.port, int):
            ok = 0 < self.port < 65536
        else:
            span = PORT_RANGE.fullmatch(self.port)
            ok = self.port == "any" or (span is not None and 0 < int(span[1]) <= int(span[2]) < 65536)
        if not ok:
            raise ValueError(f"a rule's port is 1-65535, a range 'LOW-HIGH' or 'any': {self.port!r}")

    def as_nebula(self) -> dict[str, Any]:
        """The rule as 1.6.1 reads it."""
        rule: dict[str, Any] = {"port": self.port, "proto": self.proto}
        if self.groups:
            rule["groups"] = list(self.groups)
        else:
            rule["host"] = "any"
        return rule


@dataclass(frozen=True)
class NodeConfig:
    """What makes one node's config. A lighthouse is told of no other lighthouse: it reports to none."""

    folder: Path  # where ca.crt, host.crt and host.key are
    lighthouses: tuple[Lighthouse, ...]
    am_lighthouse: bool = False  # a lighthouse is also the relay
    listen_port: int = 0  # LIGHTHOUSE_PORT for a lighthouse; 0 (the OS picks) for a home node
    tun_device: str | None = TUN_DEVICE  # None: no tun (a lighthouse then needs no privilege at all)
    inbound: tuple[InboundRule, ...] = ()  # ICMP from the mesh is always allowed
    blocklist: tuple[str, ...] = ()  # revoked certificates' fingerprints
    stats_listen: str | None = None  # "127.0.0.1:PORT": Prometheus metrics there

    def __post_init__(self) -> None:
        if not self.am_lighthouse and not self.lighthouses:
            raise ValueError("a node that is not a lighthouse needs at least one lighthouse")
        if self.am_lighthouse and self.listen_port == 0:
            raise ValueError(f"a lighthouse listens on a known port (e.g. {LIGHTHOUSE_PORT}), not 0")
        if not 0 <= self.listen_port < 65536:
            raise ValueError(f"listen_port is 0-65535: {self.listen_port}")
        if self.tun_device is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", self.tun_device):
            raise ValueError(f"a tun device's name is at most 15 letters, digits, '_', '.', '-': {self.tun_device!r}")
        bad = [fingerprint for fingerprint in self.blocklist if not re.fullmatch(r"[0-9a-f]{64}", fingerprint)]
        if bad:
            raise ValueError(f"a blocklist holds certificate fingerprints (64 hex digits): {bad}")


def tree(config: NodeConfig) -> dict[str, Any]:
    """The config as Nebula 1.6.1 reads it, before it is text."""
    folder = config.folder.absolute()
    lighthouse = config.am_lighthouse
    hosts = [] if lighthouse else [house.overlay_ip for house in config.lighthouses]
    return {
        "pki": {
            "ca": str(folder / "ca.crt"), "cert": str(folder / "host.crt"), "key": str(folder / "host.key"),
            "blocklist": list(config.blocklist),  # reloaded on SIGHUP
            "disconnect_invalid": True,  # tear down live tunnels of a revoked peer; read at start only
        },
        "static_host_map": {} if lighthouse else {house.overlay_ip: [house.underlay] for house in config.lighthouses},
        "lighthouse": {"am_lighthouse": lighthouse, "interval": 60, "hosts": hosts},
        "listen": {"host": "0.0.0.0", "port": config.listen_port},
        "punchy": {"punch": True, "respond": True, "delay": "0s"},  # 1.6.1's default delay slows every punch
        "relay": (
            {"am_relay": True, "use_relays": False} if lighthouse else  # a relay may list none (1.6.1 ignores them)
            # every node lists the relay it can be reached through: a peer behind a symmetric NAT needs it
            {"am_relay": False, "use_relays": True, "relays": hosts}
        ),
        "tun": (
            {"disabled": True} if config.tun_device is None else
            {"disabled": False, "dev": config.tun_device, "drop_local_broadcast": False, "drop_multicast": False,
             "tx_queue": 500, "mtu": 1300}  # 1300: room for the underlay's own headers on a home link
        ),
        "handshakes": {"try_interval": "100ms", "retries": 20},
        # fast revocation: a revoked peer is checked for every second, a dead tunnel dropped in 4 s (defaults 5, 10)
        "timers": {"connection_alive_interval": 1, "pending_deletion_interval": 4},
        "logging": {"level": "info", "format": "json"},
        **({} if config.stats_listen is None else {"stats": {
            "type": "prometheus", "listen": config.stats_listen, "path": "/metrics", "namespace": "nebula",
            "subsystem": "node", "interval": "10s", "message_metrics": True, "lighthouse_metrics": lighthouse}}),
        "firewall": {
            "conntrack": {"tcp_timeout": "12m", "udp_timeout": "3m", "default_timeout": "10m"},
            "outbound": [{"port": "any", "proto": "any", "host": "any"}],
            # 1.6.1 has no reject: a port not admitted here is a silent drop (clients need timeouts)
            "inbound": [{"port": "any", "proto": "icmp", "host": "any"},
                        *(rule.as_nebula() for rule in config.inbound)],
        },
    }


def ignored_by_161(settings: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The keys of `settings` that Nebula 1.6.1 would silently ignore (firewall rules' keys included)."""
    ignored = []
    for key, value in settings.items():
        path = f"{prefix}{key}"
        if path in ("firewall.inbound", "firewall.outbound"):
            ignored += [f"{path}[{index}].{name}" for index, rule in enumerate(value) for name in rule
                        if name not in RULE_KEYS_161]
        elif path in OPAQUE_161:
            continue
        elif isinstance(value, Mapping) and value:
            ignored += ignored_by_161(value, path + ".")
        elif path not in KNOWN_161:
            ignored.append(path)
    return ignored


def render(config: NodeConfig) -> str:
    """The config file's text; ValueError if it would hold a key Nebula 1.6.1 ignores."""
    settings = tree(config)
    ignored = ignored_by_161(settings)
    if ignored:
        raise ValueError(f"keys Nebula 1.6.1 would silently ignore: {ignored}")
    return json.dumps(settings, indent=2) + "\n"
