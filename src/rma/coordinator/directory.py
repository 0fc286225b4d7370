"""What the registry's state says to its readers: each service's healthy replicas, a replicated store's primary,
the engine a worker runs a service with, and where the stores are. Reads only; `Registry` keeps the state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from rma.catalog import BY_NAME
from rma.coordinator.record import WorkerRecord, bracket
from rma.coordinator.secrets import STORE_VARIABLES, NamedStores
from rma.placement import engine_for
from rma.replication import ELECTED

# A service's engines in use are read off this many of its replicas: a catalogue service has two engines at most.
ENGINES_LOOKED_AT = 64


class Directory:
    """The read side of `Registry`, which sets every attribute below."""

    workers: dict[str, WorkerRecord]
    serving_index: dict[str, set[str]]  # service → ids of healthy workers serving it
    replicated: frozenset[str]
    primaries: dict[str, str]
    named_stores: NamedStores
    generation: int
    clock: Callable[[], float]
    failure_cooldown: float
    _store_env: tuple[int, dict[str, str]]

    def engine_of(self, service: str, worker_id: str) -> str | None:
        """The engine the worker runs the service with: the one its service config names."""
        view = self.workers[worker_id].view(self.clock(), self.failure_cooldown)
        engine = engine_for(BY_NAME[service], view).engine
        return engine.name if engine is not None else None

    def _health_path(self, service: str, worker_id: str) -> str:
        """Where routers check this replica: its engine's own path (SeaweedFS in the minio slot), else the
        catalogue's; the engine is looked up only for services that have such an engine."""
        known = BY_NAME[service]
        if all(engine.health is None for engine in known.engines):
            return known.health.path
        return known.health_of(self.engine_of(service, worker_id)).path

    def engines_serving(self, service: str) -> list[str]:
        """The engines the service's healthy replicas run (seaweedfs for minio, llama-cpp for llm-inference)."""
        found = {self.engine_of(service, w) for w in itertools.islice(self.serving_index[service], ENGINES_LOOKED_AT)}
        return sorted(e for e in found if e is not None)

    def replicas(self, service: str) -> list[dict[str, Any]]:
        """Healthy replicas of a service, least loaded first; a replicated store's primary first, each with its role."""
        replicas = self.routing_table([service])[service]
        if service in self.replicated:
            # An engine's election names its primary only once it has elected one; the coordinator names the rest's.
            elected = BY_NAME[service].replication in ELECTED
            primary = self.primaries.get(service) if elected else self.primary_of(service)
            for replica in replicas:
                replica["role"] = "primary" if replica["worker_id"] == primary else "replica"
            replicas.sort(key=lambda r: r["role"] != "primary")
        return replicas

    def routing_table(self, services: Iterable[str] = BY_NAME) -> dict[str, list[dict[str, Any]]]:
        """Each service's healthy replicas (the worker is up and reports it serving), least loaded first."""
        table: dict[str, list[dict[str, Any]]] = {}
        for service in services:
            replicas = []
            for worker_id in self.serving_index[service]:
                record = self.workers[worker_id]
                status = record.services_status.get(service)
                port = record.port_of(service)
                if port is None:  # never so while indexed as serving (WorkerRecord.serving needs a port)
                    continue
                replicas.append({
                    "worker_id": worker_id, "host": record.host, "port": port,
                    "health_path": self._health_path(service, worker_id),
                    "url": f"http://{bracket(record.host)}:{port}", "load": record.load,
                    "state": status.state if status is not None else "running",
                    "last_heartbeat": record.last_seen,
                })
            replicas.sort(key=lambda r: (r["load"], r["worker_id"]))
            table[service] = replicas
        return table

    def store_env(self) -> dict[str, str]:
        """The seed's variables that tell services where the stores are: one serving replica per store.

        Rebuilt whenever the pool changes (any registration may change it), from a replicated store's primary,
        else the replica `named_stores` keeps per store, so it reads one worker per store however many serve it.
        """
        generation, env = self._store_env
        if generation != self.generation:
            env = {}
            for service, variables in STORE_VARIABLES.items():
                worker_id = self.primary_of(service)
                address = self.address_of(service, worker_id) if worker_id is not None else None
                if address is not None:
                    env.update(variables(*address))
            self._store_env = (self.generation, env)
        return env

    def primary_of(self, service: str) -> str | None:
        """The copy of a replicated store that is primary: the one its engine elected while it serves, else the
        one named (the first copy, before any election); None while none serves."""
        serving = self.serving_index[service]
        primary = self.primaries.get(service)
        return primary if primary in serving else self.named_stores.named(service, serving)

    def address_of(self, service: str, worker_id: str) -> tuple[str, int] | None:
        record = self.workers[worker_id]
        port = record.port_of(service)
        return (record.host, port) if port is not None else None

    def serving_at(self, service: str, host: str, port: int) -> str | None:
        """The serving replica of `service` at host:port (what an engine's own election names), if any."""
        return next((w for w in self.serving_index[service] if self.address_of(service, w) == (host, port)), None)
