"""What the coordinator tells a worker to run, encoded once per change rather than once per beat."""

from __future__ import annotations

import json
from typing import Any

from rma.catalog import BY_NAME
from rma.coordinator.mesh import MeshAuthority
from rma.coordinator.record import WorkerRecord
from rma.coordinator.registry import Registry
from rma.placement import engine_for
from rma.replication import (
    PRIMARY_VARIABLE,
    REPLICA_NAME_VARIABLE,
    SNAPSHOT_INTERVAL_VARIABLE,
    SNAPSHOT_KEY_VARIABLE,
    STORE_URL_VARIABLE,
    snapshot_key,
)


class Answers:
    def __init__(self, registry: Registry, heartbeat_interval: float, mesh: MeshAuthority | None = None,
                 store_url: str | None = None, snapshot_interval: float = 300.0) -> None:
        self.registry = registry
        self.heartbeat_interval = heartbeat_interval
        self.mesh = mesh
        # A coordinator replica's service config, and a replicated store's: the store to share (an address, never
        # a credential), where the store's engine elects its primary too.
        self.replica_env = {STORE_URL_VARIABLE: store_url} if store_url else {}
        self.snapshot_interval = snapshot_interval
        self._coordinators: tuple[int, tuple[str, ...]] = (-1, ())  # (registry generation, replica URLs)
        # worker id → ((token hash, assignment, store addresses, mesh version) it was built for, encoded answer)
        self._encoded: dict[str, tuple[tuple[object, ...], bytes]] = {}

    def assignment(self, record: WorkerRecord) -> dict[str, Any]:
        view = record.view(self.registry.clock(), self.registry.failure_cooldown)
        env = self.registry.store_env()
        configs = []
        for name in record.assigned:
            service = BY_NAME[name]
            engine = engine_for(service, view).engine
            configs.append({
                "name": name, "port": service.port, "priority": service.priority, "tier": service.tier,
                "kind": service.kind.value, "engine": engine.name if engine else None,
                "secret": self.registry.secrets.secret_for(name),
                "env": env | self._own_env(name, record.worker_id),
            })
        membership = self.mesh.membership(record.worker_id) if self.mesh is not None else None
        return {
            "worker_id": record.worker_id,
            "assigned_services": list(record.assigned),
            "service_configs": configs,
            "heartbeat_interval": self.heartbeat_interval,
            "mesh": membership.model_dump() if membership is not None else None,
            "coordinators": list(self.coordinators()),
        }

    def _own_env(self, service: str, worker_id: str) -> dict[str, str]:
        """What one service's config adds: a coordinator replica's store, a replicated store's store and member name."""
        if service == "coordinator":
            return self.replica_env
        if service in self.registry.snapshotted:  # where to copy its snapshots: its own bucket of the pool's S3
            s3_secret = self.registry.secrets.secret_for("minio")
            return {SNAPSHOT_KEY_VARIABLE: snapshot_key(s3_secret),
                    SNAPSHOT_INTERVAL_VARIABLE: f"{self.snapshot_interval:g}"} if s3_secret else {}
        if service not in self.registry.replicated:
            return {}
        env = self.replica_env | {REPLICA_NAME_VARIABLE: worker_id}
        primary = self.registry.primary_of(service)
        address = self.registry.address_of(service, primary) if primary not in (None, worker_id) else None
        if address is not None:  # a new copy starts as its replica (redis; Patroni finds its leader itself)
            env[PRIMARY_VARIABLE] = f"{address[0]}:{address[1]}"
        return env

    def coordinators(self) -> tuple[str, ...]:
        """The URLs of the coordinator replicas serving now, read again only when the pool changed (every
        heartbeat asks)."""
        generation, urls = self._coordinators
        if generation != self.registry.generation:
            table = self.registry.routing_table(("coordinator",))["coordinator"]
            urls = tuple(sorted(replica["url"] for replica in table))
            self._coordinators = (self.registry.generation, urls)
        return urls

    def encoded(self, record: WorkerRecord) -> bytes:
        """The heartbeat answer as JSON bytes, rebuilt only when what it says changed."""
        key = (record.token_hash, record.assigned, tuple(self.registry.store_env().items()),
               self.mesh.version(record.worker_id) if self.mesh is not None else None, self.coordinators())
        cached = self._encoded.get(record.worker_id)
        if cached is None or cached[0] != key:
            body = json.dumps(self.assignment(record) | {"status": "ok"}).encode()
            cached = self._encoded[record.worker_id] = (key, body)
        return cached[1]

    def forget(self, worker_id: str) -> None:
        self._encoded.pop(worker_id, None)
