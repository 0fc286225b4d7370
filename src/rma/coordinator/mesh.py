"""The coordinator as the mesh's authority: it signs each worker's key, and says who is revoked.

A worker joining a pool that runs on the mesh (RMA_MESH_NETWORK) sends its Nebula public key; the
CA signs it with the worker's overlay address (one per worker id, kept across rejoins) and its
kind as its group, for a bounded time. Routers reach the worker at that address, the one in its
certificate, so a worker cannot claim another's. Every heartbeat answer carries the worker's
membership: a certificate renewed once half its time is gone, the edge workers to use as
lighthouses and relays, and the fingerprints revoked; a revocation is also pushed down every watch
stream at once. A revoked worker's key and id can never join again.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rma.coordinator.store import MeshNode, Revoked, Store
from rma.mesh.config import LIGHTHOUSE_PORT
from rma.mesh.pki import Certificate, MeshCa
from rma.protocol import Conflict, Forbidden, Lighthouse, MeshMembership, NotFound

CERTIFICATE_S = 24 * 3600  # a node certificate's life: renewed over heartbeats at half of it
CLIENT_CERTIFICATE_S = 30 * 24 * 3600  # a client member's: it does not beat, so the operator renews it


@dataclass(frozen=True)
class MeshSettings:
    network: ipaddress.IPv4Network
    certificate_s: int = CERTIFICATE_S
    lighthouse_port: int = LIGHTHOUSE_PORT
    client_certificate_s: int = CLIENT_CERTIFICATE_S


class MeshAuthority:
    def __init__(self, settings: MeshSettings, folder: Path, store: Store, clock: Callable[[], float]) -> None:
        self.settings, self.store, self.clock = settings, store, clock
        self.ca = MeshCa(folder)
        nodes, revoked = store.load_mesh()
        self.nodes = {node.worker_id: node for node in nodes}
        self.revoked = {entry.fingerprint: entry for entry in revoked}
        self.certificates: dict[str, Certificate] = {}  # worker id → its current certificate (signed here)
        # Bumped when what every member is told changes (lighthouses, revocations): answers are rebuilt.
        self.generation = 0

    def admit(self, worker_id: str, kind: str, public_key: str | None, underlay: str) -> str:
        """The overlay address a registering worker gets (signing its key); Forbidden says why not."""
        if public_key is None:
            raise Forbidden("this pool runs on the mesh: the worker needs Nebula (`nebula-cert` on PATH; Debian: "
                            "apt-get install nebula) and sends its public key as mesh_public_key")
        if any(entry.worker_id == worker_id or entry.public_key == public_key for entry in self.revoked.values()):
            raise Forbidden(f"worker {worker_id!r} or its key was revoked from the mesh: it cannot join again")
        known = self.nodes.get(worker_id)
        address = known.address if known is not None else self._free_address()
        node = MeshNode(worker_id, address, public_key, underlay, kind)
        self.store.save_mesh_node(node)
        self.nodes[worker_id] = node
        self.certificates[worker_id] = self._sign(node)
        if kind == "edge":
            self.generation += 1
        return str(ipaddress.IPv4Interface(address).ip)

    def admit_client(self, name: str, public_key: str) -> MeshMembership:
        """A client member's place (an application's server, group `client`): it reaches what the catalogue lets
        clients reach (the stores, the load balancer); Conflict where `name` is a worker's."""
        known = self.nodes.get(name)
        if known is not None and known.kind != "client":
            raise Conflict(f"{name!r} is a worker on the mesh: a client member needs a name of its own")
        self.admit(name, "client", public_key, "")
        membership = self.membership(name)
        assert membership is not None  # admitted just now
        return membership

    def membership(self, worker_id: str) -> MeshMembership | None:
        """What the worker is told of the mesh now (its certificate renewed if half its time is gone)."""
        node = self.nodes.get(worker_id)
        if node is None:
            return None
        certificate = self.certificates.get(worker_id)
        if certificate is None or certificate.expires - self.clock() < self.settings.certificate_s / 2:
            certificate = self.certificates[worker_id] = self._sign(node)
        return MeshMembership(
            address=node.address, certificate=certificate.pem, ca=self.ca.certificate, groups=list(certificate.groups),
            expires=certificate.expires, lighthouses=self.lighthouses(), blocklist=sorted(self.revoked))

    def summary(self, worker_id: str) -> dict[str, object] | None:
        """The worker's place on the mesh, for operators: overlay address, groups, certificate expiry."""
        node, certificate = self.nodes.get(worker_id), self.certificates.get(worker_id)
        if node is None:
            return None
        return {"address": node.address, "groups": list(certificate.groups) if certificate else [node.kind],
                "expires": certificate.expires if certificate else None}

    def version(self, worker_id: str) -> tuple[object, ...]:
        """Changes whenever `membership` would say something new: the key of a cached answer."""
        certificate = self.certificates.get(worker_id)
        renew_at = certificate.expires - self.settings.certificate_s / 2 if certificate else 0.0
        return self.generation, certificate.fingerprint if certificate else None, self.clock() >= renew_at

    def lighthouses(self) -> list[Lighthouse]:
        return [Lighthouse(overlay_ip=str(ipaddress.IPv4Interface(node.address).ip),
                           underlay=f"{node.underlay}:{self.settings.lighthouse_port}")
                for node in self.nodes.values() if node.kind == "edge"]

    def revoke(self, worker_id: str) -> list[str]:
        """Revoke every unexpired certificate of the worker: their fingerprints reach every node with its next
        heartbeat. The worker's id and key are refused from then on."""
        node = self.nodes.get(worker_id)
        if node is None:
            raise NotFound(f"worker {worker_id!r} has no place on the mesh")
        now = self.clock()
        entries = [Revoked(fingerprint, worker_id, node.public_key, now)
                   for fingerprint in self.store.issued(worker_id, now)]
        self.store.revoke_mesh_node(worker_id, entries)
        del self.nodes[worker_id]
        self.certificates.pop(worker_id, None)
        self.revoked |= {entry.fingerprint: entry for entry in entries}
        self.generation += 1
        return [entry.fingerprint for entry in entries]

    def _sign(self, node: MeshNode) -> Certificate:
        duration = self.settings.client_certificate_s if node.kind == "client" else self.settings.certificate_s
        certificate = self.ca.sign(node.worker_id, node.public_key, ipaddress.IPv4Interface(node.address),
                                   [node.kind], duration)
        self.store.save_issued(certificate.fingerprint, node.worker_id, certificate.expires, self.clock())
        return certificate

    def _free_address(self) -> str:
        network = self.settings.network
        taken = {ipaddress.IPv4Interface(node.address).ip for node in self.nodes.values()}
        free = next((ip for ip in itertools.islice(network.hosts(), 2**20) if ip not in taken), None)
        if free is None:
            raise Forbidden(f"the mesh network {network} has no free address")
        return f"{free}/{network.prefixlen}"
