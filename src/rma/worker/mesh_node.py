"""This worker's node on the mesh: its key pair, its certificate, and the Nebula process that carries it.

The key pair is made here once and only the public key goes to the coordinator. Each membership the
coordinator sends (with registration and every heartbeat) is written out as the node's certificate
and config; Nebula starts on the first, and reloads on SIGHUP when a later one says something new
(a renewed certificate, a revoked peer, another lighthouse). An edge worker is a lighthouse and a
relay, on LIGHTHOUSE_PORT; every other worker dials out to them and needs no inbound port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil

from rma.catalog import BY_NAME
from rma.files import write_private
from rma.mesh.config import LIGHTHOUSE_PORT, InboundRule, Lighthouse, NodeConfig, render
from rma.mesh.pki import make_node_keys
from rma.protocol import MeshMembership, MeshState
from rma.worker.process import end_tree, spawn

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0  # for Nebula to bring its tun device up with the overlay address
STOP_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 1.0
CAP_NET_ADMIN = 12  # its bit in /proc's capability sets
PING_EVERY_S = 5.0  # the lighthouse's round trip is measured this often, beside the heartbeats, never in them
# Nebula 1.6.1's JSON log lines that end a handshake (the initiator receives stage 2, the responder sends it)
# and the one that moves a relayed tunnel onto a punched path; "tearing down" ends a tunnel.
HANDSHAKE_DONE = ("Handshake message received", "Handshake message sent")
ROAMED = "Host roamed to new udp ip/port"


class MeshError(RuntimeError):
    """Nebula did not come up as the membership asks."""


def mesh_unavailable() -> str | None:
    """Why this machine cannot join a mesh (a line for the worker's Detected report), or None."""
    missing = [tool for tool in ("nebula", "nebula-cert") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian: apt-get install nebula)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun here: start the container with --cap-add NET_ADMIN --device /dev/net/tun"
    if os.geteuid() != 0 and not (_ambient_net_admin() or _file_capabilities(shutil.which("nebula") or "")):
        return ("nebula needs CAP_NET_ADMIN for its tun device: run `sudo setcap cap_net_admin=+ep "
                "$(command -v nebula)`, or start the container with --cap-add NET_ADMIN --device /dev/net/tun")
    return None


def _file_capabilities(path: str) -> bool:
    """Whether the program carries file capabilities (setcap), one way a non-root user's nebula gets
    CAP_NET_ADMIN."""
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def _ambient_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN as an ambient capability (systemd's AmbientCapabilities=,
    setpriv --ambient-caps), the other way: an ambient capability passes on to the programs it starts."""
    try:
        with open("/proc/self/status") as status:
            ambient = next(line.split()[1] for line in status if line.startswith("CapAmb:"))
    except (OSError, StopIteration, IndexError):
        return False
    return bool(int(ambient, 16) >> CAP_NET_ADMIN & 1)


def fences(services: Iterable[tuple[str, int]]) -> tuple[InboundRule, ...]:
    """The firewall of a node running `services` (name, port): each port open to the groups the catalogue
    says may reach that service, and to no one else (a rule per group: Nebula's groups in one rule are ANDed)."""
    return tuple(InboundRule(port, "tcp", (group,)) for name, assigned in services if name in BY_NAME
                 for port in (assigned, *BY_NAME[name].more_ports) for group in BY_NAME[name].reached_by)


class TunnelLog:
    """Which peers this node has a tunnel with, and whether each is direct or relayed, read from Nebula's log
    as it grows (1.6.1's stats endpoint has no relay figure): a finished handshake says how it came."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.peers: dict[str, bool] = {}  # overlay address → relayed

    def read(self) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                lines = log.readlines()
        except OSError:
            return
        if lines and not lines[-1].endswith(b"\n"):
            lines.pop()  # Nebula is writing it: read once it is whole
        self.offset += sum(map(len, lines))
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:  # Nebula's first line, its config, is text
                continue
            if isinstance(entry, dict) and isinstance(entry.get("vpnIp"), str):
                self._note(entry)

    def _note(self, entry: dict[str, Any]) -> None:
        peer, message = entry["vpnIp"], str(entry.get("msg", ""))
        stage = (entry.get("handshake") or {}).get("stage") if isinstance(entry.get("handshake"), dict) else None
        if message in HANDSHAKE_DONE and stage == 2:
            self.peers[peer] = not entry.get("udpAddr") or bool(entry.get("relay"))
        elif message == ROAMED:
            self.peers[peer] = False
        elif "tearing down" in message:
            self.peers.pop(peer, None)


def icmp_rtt_ms(address: str, timeout: float = PING_TIMEOUT_S) -> float | None:
    """One ICMP echo's round trip to `address` in ms (an unprivileged ICMP socket, else a raw one), or None."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            sock = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        except OSError:
            continue
        with sock:
            return _echo(sock, kind == socket.SOCK_RAW, address, timeout)
    return None


def _echo(sock: socket.socket, raw: bool, address: str, timeout: float) -> float | None:
    ident, payload = os.getpid() & 0xFFFF, b"rma-ping"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    started = time.monotonic()
    try:
        sock.sendto(struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload, (address, 0))
        while (left := started + timeout - time.monotonic()) > 0:
            sock.settimeout(left)
            data, (source, _) = sock.recvfrom(2048)
            start = (data[0] & 0x0F) * 4 if raw else 0  # a raw socket hands the IP header too
            kind, _, _, answered, _ = struct.unpack("!BBHHH", data[start:start + 8])
            # An ICMP socket's kernel sets the id (and only hands it its own replies); a raw one sees every reply.
            if kind == 0 and source == address and (not raw or answered == ident):
                return round((time.monotonic() - started) * 1000, 3)
    except OSError:  # a timeout included
        return None
    return None


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


class MeshNode:
    def __init__(self, folder: Path, log_path: Path) -> None:
        self.folder, self.log_path = folder, log_path
        self.config_path = folder / "config.json"
        self.membership: MeshMembership | None = None
        self.inbound: tuple[InboundRule, ...] = ()
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()  # the heartbeat loop and the watch stream both apply answers
        self.tunnels = TunnelLog(log_path)
        self.lighthouse_rtt_ms: float | None = None
        self._pinger: asyncio.Task[None] | None = None

    def public_key(self) -> str:
        return make_node_keys(self.folder)

    @property
    def address(self) -> str | None:
        """The overlay address, once the coordinator gave one: services bind there only."""
        return None if self.membership is None else str(ipaddress.IPv4Interface(self.membership.address).ip)

    async def apply(self, membership: MeshMembership, inbound: tuple[InboundRule, ...]) -> None:
        """Write what `membership` says; start Nebula (and wait for its tun) or have it reload what changed."""
        async with self._lock:
            if (membership, inbound) != (self.membership, self.inbound) or not self._running():
                await self._apply(membership, inbound)

    async def _apply(self, membership: MeshMembership, inbound: tuple[InboundRule, ...]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "ca.crt").write_text(membership.ca)
        write_private(self.folder / "host.crt", membership.certificate)
        lighthouse = "edge" in membership.groups
        own = str(ipaddress.IPv4Interface(membership.address).ip)
        try:
            text = render(NodeConfig(
                self.folder, tuple(Lighthouse(h.overlay_ip, h.underlay) for h in membership.lighthouses
                                   if h.overlay_ip != own),
                am_lighthouse=lighthouse, listen_port=LIGHTHOUSE_PORT if lighthouse else 0, inbound=inbound,
                blocklist=tuple(membership.blocklist)))
        except ValueError as exc:  # the coordinator's answer does not make a config: a home node with no lighthouse
            raise MeshError(f"no node config from the coordinator's membership: {exc}") from None
        write_private(self.config_path, text)
        self.membership, self.inbound = membership, inbound
        if self._running():
            assert self._process is not None
            self._process.send_signal(signal.SIGHUP)
            log.info("mesh: reloaded (certificate until %.0f, %d revoked)", membership.expires,
                     len(membership.blocklist))
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._process = await spawn((shutil.which("nebula") or "nebula", "-config", str(self.config_path)),
                                        {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, self.folder, self.log_path)
        except OSError as exc:
            raise MeshError(f"nebula could not start: {exc}") from None
        await self._until_ready(own)
        if self._pinger is None:
            self._pinger = asyncio.create_task(self._ping_lighthouse(), name="mesh-ping")
        log.info("mesh: joined as %s (%s)", own, "lighthouse and relay" if lighthouse else "behind its lighthouses")

    async def _until_ready(self, address: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while loop.time() < deadline:
            if not self._running():
                raise MeshError(f"nebula exited ({self._process.returncode if self._process else None}): "
                                   f"see {self.log_path}")
            if any(entry.address == address for entries in psutil.net_if_addrs().values() for entry in entries):
                return
            await asyncio.sleep(0.1)
        raise MeshError(f"nebula did not bring up {address} within {READY_TIMEOUT_S:g} s: see {self.log_path}")

    def state(self) -> MeshState | None:
        """How this node is reached now (None before it joined): its tunnels and its lighthouse's last round trip."""
        if self.membership is None or not self._running():
            return None
        self.tunnels.read()
        relayed = sum(self.tunnels.peers.values())
        return MeshState(direct=len(self.tunnels.peers) - relayed, relayed=relayed,
                         lighthouse_rtt_ms=self.lighthouse_rtt_ms)

    async def _ping_lighthouse(self) -> None:
        """Every PING_EVERY_S, one echo to the first lighthouse (not this node): its round trip, or None."""
        loop = asyncio.get_running_loop()
        while True:
            own, membership = self.address, self.membership
            lighthouse = next((h.overlay_ip for h in membership.lighthouses if h.overlay_ip != own), None) \
                if membership is not None else None
            self.lighthouse_rtt_ms = await loop.run_in_executor(None, icmp_rtt_ms, lighthouse) if lighthouse else None
            await asyncio.sleep(PING_EVERY_S)

    def _running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                await end_tree(self._process, STOP_TIMEOUT_S)
            self._process = None
