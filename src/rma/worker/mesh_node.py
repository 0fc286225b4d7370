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
import logging
import os
import shutil
import signal
from collections.abc import Iterable
from pathlib import Path

import psutil

from rma.catalog import BY_NAME
from rma.files import write_private
from rma.mesh.config import LIGHTHOUSE_PORT, InboundRule, Lighthouse, NodeConfig, render
from rma.mesh.pki import make_node_keys
from rma.protocol import MeshMembership
from rma.worker.process import end_tree, spawn

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0  # for Nebula to bring its tun device up with the overlay address
STOP_TIMEOUT_S = 5.0


class MeshError(RuntimeError):
    """Nebula did not come up as the membership asks."""


def mesh_unavailable() -> str | None:
    """Why this machine cannot join a mesh (a line for the worker's Detected report), or None."""
    missing = [tool for tool in ("nebula", "nebula-cert") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (Debian: apt-get install nebula)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun here: start the container with --cap-add NET_ADMIN --device /dev/net/tun"
    if os.geteuid() != 0 and not _has_net_admin(shutil.which("nebula") or ""):
        return ("nebula needs CAP_NET_ADMIN for its tun device: run `sudo setcap cap_net_admin=+ep "
                "$(command -v nebula)`, or start the container with --cap-add NET_ADMIN --device /dev/net/tun")
    return None


def _has_net_admin(path: str) -> bool:
    """Whether the program carries file capabilities (setcap), which is how a non-root user gets CAP_NET_ADMIN."""
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def fences(services: Iterable[tuple[str, int]]) -> tuple[InboundRule, ...]:
    """The firewall of a node running `services` (name, port): each port open to the groups the catalogue
    says may reach that service, and to no one else (a rule per group: Nebula's groups in one rule are ANDed)."""
    return tuple(InboundRule(port, "tcp", (group,)) for name, assigned in services if name in BY_NAME
                 for port in (assigned, *BY_NAME[name].more_ports) for group in BY_NAME[name].reached_by)


class MeshNode:
    def __init__(self, folder: Path, log_path: Path) -> None:
        self.folder, self.log_path = folder, log_path
        self.config_path = folder / "config.json"
        self.membership: MeshMembership | None = None
        self.inbound: tuple[InboundRule, ...] = ()
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()  # the heartbeat loop and the watch stream both apply answers

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

    def _running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def stop(self) -> None:
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                await end_tree(self._process, STOP_TIMEOUT_S)
            self._process = None
