"""The registry in etcd, which the coordinator's replicas share: the same `Store` as SQLite's.

One key per fact, under /rma/: a worker's record (written at registration), its assignment and
what it serves (each written when it changes) and its last heartbeat time (written in batches, at most every
SEEN_RESOLUTION_S per worker), so a heartbeat is never a write. A store's secret is claimed
with a transaction that puts it only where none is, so two replicas never make two secrets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict

from rma.coordinator import etcd
from rma.coordinator.etcd import Etcd
from rma.coordinator.store import MeshNode, Revoked, StoredWorker

PREFIX = "/rma/"  # one pool's keys; another pool may share the cluster under another prefix


def _suffix(key: str, prefix: str) -> str:
    return key.removeprefix(prefix)


class EtcdStore:
    shared = True

    def __init__(self, client: Etcd, prefix: str = PREFIX) -> None:
        self.etcd = client
        self.prefix = prefix
        self.workers, self.assigned, self.seen = f"{prefix}workers/", f"{prefix}assigned/", f"{prefix}seen/"
        self.serving = f"{prefix}serving/"
        self.secrets = f"{prefix}secrets/"
        self.mesh_nodes, self.mesh_issued = f"{prefix}mesh/nodes/", f"{prefix}mesh/issued/"
        self.mesh_revoked = f"{prefix}mesh/revoked/"

    def load(self) -> list[StoredWorker]:
        records = {_suffix(kv.key, self.workers): json.loads(kv.value) for kv in self.etcd.get_prefix(self.workers)}
        assigned = {_suffix(kv.key, self.assigned): json.loads(kv.value) for kv in self.etcd.get_prefix(self.assigned)}
        seen = {_suffix(kv.key, self.seen): float(kv.value) for kv in self.etcd.get_prefix(self.seen)}
        serving = {_suffix(kv.key, self.serving): json.loads(kv.value) for kv in self.etcd.get_prefix(self.serving)}
        workers = []
        for worker_id, record in records.items():
            placed = assigned.get(worker_id, {"assigned": [], "holds_data": []})
            workers.append(StoredWorker(
                worker_id, record["token_hash"], record["kind"], record["host"], record["tunnel_url"],
                record["capabilities"], tuple(placed["assigned"]), frozenset(placed["holds_data"]),
                record["registered_at"], seen.get(worker_id, record["registered_at"]), serving.get(worker_id, {})))
        return workers

    def save(self, worker: StoredWorker) -> None:
        record = {"token_hash": worker.token_hash, "kind": worker.kind, "host": worker.host,
                  "tunnel_url": worker.tunnel_url, "capabilities": worker.capabilities,
                  "registered_at": worker.registered_at}
        self.etcd.txn([etcd.put(self.workers + worker.worker_id, json.dumps(record)),
                       self._assignment(worker.worker_id, worker.assigned, worker.holds_data),
                       etcd.put(self.seen + worker.worker_id, repr(worker.last_seen)),
                       etcd.put(self.serving + worker.worker_id, json.dumps(dict(worker.serving)))])

    def save_serving(self, worker_id: str, serving: Mapping[str, int]) -> None:
        self.etcd.txn([etcd.put(self.serving + worker_id, json.dumps(dict(serving)))])

    def _assignment(self, worker_id: str, assigned: Iterable[str], holds_data: Iterable[str]) -> dict[str, object]:
        return etcd.put(self.assigned + worker_id, json.dumps({"assigned": list(assigned),
                                                          "holds_data": sorted(holds_data)}))

    def save_assignment(self, worker_id: str, assigned: Iterable[str], holds_data: Iterable[str]) -> None:
        self.etcd.txn([self._assignment(worker_id, assigned, holds_data)])

    def touch_many(self, seen: Iterable[tuple[float, str]]) -> None:
        self.etcd.write([etcd.put(self.seen + worker_id, repr(at)) for at, worker_id in seen])

    def delete(self, worker_id: str) -> None:
        self.etcd.txn([etcd.delete(prefix + worker_id)
                       for prefix in (self.workers, self.assigned, self.seen, self.serving)])

    def load_secrets(self) -> dict[str, str]:
        return {_suffix(kv.key, self.secrets): kv.value.decode() for kv in self.etcd.get_prefix(self.secrets)}

    def claim_secret(self, service: str, secret: str) -> str:
        return self.etcd.put_if_absent(self.secrets + service, secret)

    def load_mesh(self) -> tuple[list[MeshNode], list[Revoked]]:
        nodes = [MeshNode(**json.loads(kv.value)) for kv in self.etcd.get_prefix(self.mesh_nodes)]
        revoked = [Revoked(**json.loads(kv.value)) for kv in self.etcd.get_prefix(self.mesh_revoked)]
        return nodes, revoked

    def save_mesh_node(self, node: MeshNode) -> None:
        self.etcd.txn([etcd.put(self.mesh_nodes + node.worker_id, json.dumps(asdict(node)))])

    def _issued(self) -> list[tuple[str, str, float]]:
        """(fingerprint, worker_id, expires) of every certificate on record."""
        return [(_suffix(kv.key, self.mesh_issued), *_issue(kv.value)) for kv in self.etcd.get_prefix(self.mesh_issued)]

    def save_issued(self, fingerprint: str, worker_id: str, expires: float, now: float) -> None:
        expired = [etcd.delete(self.mesh_issued + f) for f, _, until in self._issued() if until <= now]
        self.etcd.write([*expired, etcd.put(self.mesh_issued + fingerprint,
                                             json.dumps({"worker_id": worker_id, "expires": expires}))])

    def issued(self, worker_id: str, now: float) -> list[str]:
        return [f for f, holder, until in self._issued() if holder == worker_id and until > now]

    def revoke_mesh_node(self, worker_id: str, revoked: Iterable[Revoked]) -> None:
        issued = [etcd.delete(self.mesh_issued + f) for f, holder, _ in self._issued() if holder == worker_id]
        self.etcd.txn([etcd.delete(self.mesh_nodes + worker_id), *issued,
                       *(etcd.put(self.mesh_revoked + r.fingerprint, json.dumps(asdict(r))) for r in revoked)])

    def close(self) -> None:
        self.etcd.close()


def _issue(value: bytes) -> tuple[str, float]:
    record = json.loads(value)
    return record["worker_id"], float(record["expires"])
