"""The registry in etcd, which the coordinator's replicas share: the same `Store` as SQLite's, and its changes.

One key per fact, under /rma/: a worker's record (written at registration), its assignment and
its state (up or down, what it serves: each written when it changes, by the coordinator the
worker beats to) and its last heartbeat time (at most every SEEN_RESOLUTION_S per worker), so a
heartbeat is never a write; states and heartbeat times are written behind (`WriteBehind`). Each
value names the coordinator that wrote it, so `changes()` passes on only the others' writes.

Placement is serialised through one key, /rma/placement: every assignment is written in a
transaction that also bumps it, on the condition that nobody bumped it since this coordinator
last heard (from its own write, or from the watch). Two coordinators planning against the same
pool cannot both win, so no gap is filled twice. A store's secret is claimed with a transaction
that puts it only where none is, so two replicas never make two secrets.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import asdict
from typing import Any

from rma.coordinator import etcd
from rma.coordinator.etcd import Etcd, EtcdError, KeyValue
from rma.coordinator.store import Change, MeshNode, Revoked, StoredWorker
from rma.replication import PATRONI_LEADER_KEY

log = logging.getLogger("rma.coordinator")

WRITE_BEHIND_S = 0.02
PREFIX = "/rma/"  # one pool's keys; another pool may share the cluster under another prefix
WORKER_KEYS = ("worker", "assigned", "seen", "state")  # a worker's keys: {prefix}{kind}/{worker_id}


class WriteBehind:
    """Puts no caller waits for (states, heartbeat times), the latest per key, written in transactions from a
    thread of their own every WRITE_BEHIND_S: a coordinator taking over another's workers answers their
    heartbeats at once, not one store round trip each. A kill -9 loses at most that much, which the
    workers' next heartbeats write again."""

    def __init__(self, endpoints: list[str]) -> None:
        self.etcd = Etcd(endpoints)  # its own connections: the coordinator's are used from its event loop
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._open = True
        self._thread = threading.Thread(target=self._run, name="etcd-write-behind", daemon=True)
        self._thread.start()

    def put(self, key: str, operation: dict[str, Any]) -> None:
        with self._lock:
            self._pending[key] = operation
        self._wake.set()

    def forget(self, keys: Iterable[str]) -> None:
        """Drop what is waiting for `keys` (their worker left: nothing of it may be written after)."""
        with self._lock:
            for key in keys:
                self._pending.pop(key, None)

    def _run(self) -> None:
        while self._open:
            self._wake.wait()
            self._wake.clear()
            time.sleep(WRITE_BEHIND_S)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            operations, self._pending = list(self._pending.values()), {}
        try:
            self.etcd.write(operations)
        except EtcdError as error:
            log.warning("%d writes to etcd lost (%s); the workers' next heartbeats write them again",
                        len(operations), error)

    def close(self) -> None:
        self._open = False
        self._wake.set()
        self._thread.join(5)
        self.flush()
        self.etcd.close()


class EtcdStore:
    shared = True

    def __init__(self, client: Etcd, prefix: str = PREFIX, replica: str | None = None) -> None:
        self.etcd = client
        self.prefix = prefix
        self.replica = replica or secrets.token_hex(6)  # this coordinator, as its writes name it
        self.secrets, self.placement = f"{prefix}secrets/", f"{prefix}placement"
        self.mesh_nodes, self.mesh_issued = f"{prefix}mesh/nodes/", f"{prefix}mesh/issued/"
        self.mesh_revoked = f"{prefix}mesh/revoked/"
        self.behind = WriteBehind(client.endpoints)
        self.revision = 0  # the store's revision this coordinator's view is at (its load, then the watch)
        self.placed_at = 0  # /rma/placement's revision as this coordinator last heard
        self.latest_placed = 0  # the newest a lost race told of: this coordinator's watch is behind until there

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
        """Write `always`, and the assignment if nobody placed since this coordinator last heard. While its watch
        has not yet brought the placements a lost race told of, it loses at once, asking etcd nothing."""
        if self.placed_at < self.latest_placed:
            if always:
                self.etcd.txn(always)
            return False
        assignment = self._put("assigned", worker_id, {"assigned": list(assigned), "holds_data": sorted(holds_data)})
        answer = self.etcd.txn([*always, assignment, etcd.put(self.placement, self.replica)],
                               compare=[etcd.modified(self.placement, self.placed_at)],
                               failure=[*always, etcd.get_operation(self.placement)])
        if not answer.get("succeeded"):
            held = etcd.key_values(answer["responses"][-1]["response_range"])
            self.latest_placed = max(self.latest_placed, held[0].mod_revision if held else 0)
            return False
        self.placed_at = self.latest_placed = etcd.revision_of(answer)
        return True

    def save_state(self, worker_id: str, healthy: bool, serving: Mapping[str, int]) -> None:
        self.behind.put(self._key("state", worker_id),
                        self._put("state", worker_id, {"healthy": healthy, "serving": dict(serving)}))

    def touch_many(self, seen: Iterable[tuple[float, str]]) -> None:
        for at, worker_id in seen:
            self.behind.put(self._key("seen", worker_id), self._put("seen", worker_id, {"at": at}))

    def delete(self, worker_id: str) -> None:
        keys = [self._key(kind, worker_id) for kind in WORKER_KEYS]
        self.behind.forget(keys)
        self.etcd.txn([etcd.delete(key) for key in keys])

    async def changes(self) -> AsyncIterator[list[Change]]:
        """The other coordinators' changes to workers since `load()`, a batch per etcd watch answer, in the order
        etcd committed them. The placement revision a batch reaches is taken before it is passed on: nothing
        writes while the registry takes in a batch, and it plans again only once it has taken in the whole."""
        async for batch in self.etcd.watch(self.prefix, self.revision):
            changes = []
            for kv in batch:
                self.revision = max(self.revision, kv.mod_revision)
                if kv.key == self.placement:
                    self.placed_at = max(self.placed_at, kv.mod_revision)
                elif (parsed := self._parse(kv)) is not None:
                    kind, worker_id, value = parsed
                    if value is None and kind == "worker" or value is not None and value.get("by") != self.replica:
                        changes.append(Change(worker_id, kind, value))  # type: ignore[arg-type]
            if changes:
                yield changes

    async def primaries(self) -> AsyncIterator[tuple[str, str | None]]:
        """Patroni's leader key for postgres (the member holding it is the primary, named by worker id), as it is
        and as it changes: it goes when the leader's lease runs out, and the member that wins the race puts it."""
        snapshot, revision = self.etcd.snapshot(PATRONI_LEADER_KEY)
        leader = next((kv for kv in snapshot if kv.key == PATRONI_LEADER_KEY), None)
        yield "postgres", leader.value.decode() if leader is not None else None
        async for batch in self.etcd.watch(PATRONI_LEADER_KEY, revision):
            for kv in batch:
                if kv.key == PATRONI_LEADER_KEY:
                    yield "postgres", None if kv.deleted else kv.value.decode()

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
        self.behind.close()
        self.etcd.close()


def _issue(value: bytes) -> tuple[str, float]:
    record = json.loads(value)
    return record["worker_id"], float(record["expires"])
