"""The registry in etcd, which the coordinator's replicas share: the same `Store` as SQLite's, and its changes.

One key per fact, under /rma/: a worker's record (written at registration), its assignment and
its state (up or down, what it serves: each written when it changes, by the coordinator the
worker beats to) and its last heartbeat time (written in batches, at most every SEEN_RESOLUTION_S
per worker), so a heartbeat is never a write. Each value names the coordinator that wrote it, so
`changes()` passes on only the others' writes.

Placement is serialised through one key, /rma/placement: every assignment is written in a
transaction that also bumps it, on the condition that nobody bumped it since this coordinator
last heard (from its own write, or from the watch). Two coordinators planning against the same
pool cannot both win, so no gap is filled twice. A store's secret is claimed with a transaction
that puts it only where none is, so two replicas never make two secrets.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict
from typing import Any

from rma.coordinator import etcd
from rma.coordinator.etcd import Etcd, KeyValue
from rma.coordinator.store import Change, MeshNode, Revoked, StoredWorker

PREFIX = "/rma/"  # one pool's keys; another pool may share the cluster under another prefix
WORKER_KEYS = ("worker", "assigned", "seen", "state")  # a worker's keys: {prefix}{kind}/{worker_id}


class EtcdStore:
    shared = True

    def __init__(self, client: Etcd, prefix: str = PREFIX, replica: str | None = None) -> None:
        self.etcd = client
        self.prefix = prefix
        self.replica = replica or secrets.token_hex(6)  # this coordinator, as its writes name it
        self.secrets, self.placement = f"{prefix}secrets/", f"{prefix}placement"
        self.mesh_nodes, self.mesh_issued = f"{prefix}mesh/nodes/", f"{prefix}mesh/issued/"
        self.mesh_revoked = f"{prefix}mesh/revoked/"
        self.revision = 0  # the store's revision this coordinator's view is at (its load, then the watch)
        self.placed_at = 0  # /rma/placement's revision as this coordinator last heard

    def _key(self, kind: str, worker_id: str) -> str:
        return f"{self.prefix}{kind}/{worker_id}"

    def _put(self, kind: str, worker_id: str, value: dict[str, Any]) -> dict[str, Any]:
        return etcd.put(self._key(kind, worker_id), json.dumps({**value, "by": self.replica}))

    def _parse(self, kv: KeyValue) -> tuple[str, str, dict[str, Any] | None] | None:
        """(kind, worker_id, value) of a worker's key; None for any other key."""
        kind, _, worker_id = kv.key.removeprefix(self.prefix).partition("/")
        if kind not in WORKER_KEYS or not worker_id:
            return None
        return kind, worker_id, None if kv.deleted else json.loads(kv.value)

    def load(self) -> list[StoredWorker]:
        found, self.revision = self.etcd.snapshot(self.prefix)
        facts: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in WORKER_KEYS}
        for kv in found:
            if kv.key == self.placement:
                self.placed_at = kv.mod_revision
            elif (parsed := self._parse(kv)) is not None and parsed[2] is not None:
                facts[parsed[0]][parsed[1]] = parsed[2]
        return [self._stored(worker_id, record, facts) for worker_id, record in facts["worker"].items()]

    @staticmethod
    def _stored(worker_id: str, record: dict[str, Any], facts: dict[str, dict[str, dict[str, Any]]]) -> StoredWorker:
        placed = facts["assigned"].get(worker_id, {"assigned": [], "holds_data": []})
        seen = facts["seen"].get(worker_id, {"at": record["registered_at"]})["at"]
        serving = facts["state"].get(worker_id, {"serving": {}})["serving"]
        return StoredWorker(worker_id, record["token_hash"], record["kind"], record["host"], record["tunnel_url"],
                            record["capabilities"], tuple(placed["assigned"]), frozenset(placed["holds_data"]),
                            record["registered_at"], seen, serving)

    def save(self, worker: StoredWorker) -> bool:
        record = {"token_hash": worker.token_hash, "kind": worker.kind, "host": worker.host,
                  "tunnel_url": worker.tunnel_url, "capabilities": worker.capabilities,
                  "registered_at": worker.registered_at}
        always = [self._put("worker", worker.worker_id, record),
                  self._put("seen", worker.worker_id, {"at": worker.last_seen}),
                  self._put("state", worker.worker_id, {"healthy": True, "serving": dict(worker.serving)})]
        return self._place(worker.worker_id, worker.assigned, worker.holds_data, always)

    def save_assignment(self, worker_id: str, assigned: Iterable[str], holds_data: Iterable[str]) -> bool:
        return self._place(worker_id, assigned, holds_data, [])

    def _place(self, worker_id: str, assigned: Iterable[str], holds_data: Iterable[str],
               always: list[dict[str, Any]]) -> bool:
        """Write `always`, and the assignment if nobody placed since this coordinator last heard."""
        assignment = self._put("assigned", worker_id, {"assigned": list(assigned), "holds_data": sorted(holds_data)})
        answer = self.etcd.txn([*always, assignment, etcd.put(self.placement, self.replica)],
                               compare=[etcd.modified(self.placement, self.placed_at)], failure=always)
        if not answer.get("succeeded"):
            return False
        self.placed_at = etcd.revision_of(answer)
        return True

    def save_state(self, worker_id: str, healthy: bool, serving: Mapping[str, int]) -> None:
        self.etcd.txn([self._put("state", worker_id, {"healthy": healthy, "serving": dict(serving)})])

    def touch_many(self, seen: Iterable[tuple[float, str]]) -> None:
        self.etcd.write([self._put("seen", worker_id, {"at": at}) for at, worker_id in seen])

    def delete(self, worker_id: str) -> None:
        self.etcd.txn([etcd.delete(self._key(kind, worker_id)) for kind in WORKER_KEYS])

    async def changes(self) -> AsyncIterator[Change]:
        """The other coordinators' changes to workers since `load()`, in the order etcd committed them."""
        async for batch in self.etcd.watch(self.prefix, self.revision):
            for kv in batch:
                self.revision = max(self.revision, kv.mod_revision)
                if kv.key == self.placement:
                    self.placed_at = kv.mod_revision  # after the assignments of its transaction, passed on below
                    continue
                parsed = self._parse(kv)
                if parsed is None:
                    continue
                kind, worker_id, value = parsed
                if value is not None and value.get("by") == self.replica:
                    continue
                if kind == "worker" and value is None:
                    yield Change(worker_id, "worker", None)
                elif value is not None:
                    yield Change(worker_id, kind, value)  # type: ignore[arg-type]

    def load_secrets(self) -> dict[str, str]:
        return {kv.key.removeprefix(self.secrets): kv.value.decode() for kv in self.etcd.get_prefix(self.secrets)}

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
        return [(kv.key.removeprefix(self.mesh_issued), *_issue(kv.value))
                for kv in self.etcd.get_prefix(self.mesh_issued)]

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
