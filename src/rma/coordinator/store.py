"""Where the coordinator keeps the pool: the `Store` every registry backend implements, and the choice of one.

Two backends behave the same (tests/coordinator/test_stores.py runs one suite against both):
SQLite (`sqlite:///path`, the embedded default for one coordinator and `rma up`) and etcd
(`etcd://host:2379,host:2379`), a replicated store the coordinator's replicas share. Writes
are few and never one per heartbeat: registrations, assignment changes and what a worker serves
as they happen, heartbeat times in batches (`touch_many`), each worker's at most every SEEN_RESOLUTION_S.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit


@dataclass(frozen=True)
class MeshNode:
    """A worker's place on the mesh: its overlay address, the public key the CA signs, where it is reached."""

    worker_id: str
    address: str
    public_key: str
    underlay: str  # the host the worker was admitted at: an edge worker's lighthouse listens there
    kind: str


@dataclass(frozen=True)
class Revoked:
    fingerprint: str
    worker_id: str
    public_key: str
    revoked_at: float


@dataclass(frozen=True)
class StoredWorker:
    worker_id: str
    token_hash: str
    kind: str
    host: str
    tunnel_url: str | None
    capabilities: str  # JSON, as the worker's capabilities model writes it
    assigned: tuple[str, ...]
    holds_data: frozenset[str]
    registered_at: float
    last_seen: float
    # What it served when last written (service → routable port): a restarted coordinator routes to it at once.
    serving: Mapping[str, int] = field(default_factory=dict)


class Store(Protocol):
    """The registry's persistent half. `shared`: other coordinators may use the same store (replicas)."""

    shared: bool

    def load(self) -> list[StoredWorker]: ...
    def save(self, worker: StoredWorker) -> bool:
        """A worker's registration. False: kept without its assignment, which lost a race (see `save_assignment`)."""
    def save_assignment(self, worker_id: str, assigned: Iterable[str], holds_data: Iterable[str]) -> bool:
        """A worker's new assignment. False: another coordinator on the store changed the pool's placement since
        this one last heard, so this one was not kept; the caller keeps the old and plans again with the news."""
    def save_state(self, worker_id: str, healthy: bool, serving: Mapping[str, int]) -> None:
        """Whether the worker is up, and the services it serves at their routable ports (written when it changes,
        by the coordinator it beats to)."""
    def touch_many(self, seen: Iterable[tuple[float, str]]) -> None:
        """Many workers' last heartbeat times, (last_seen, worker_id), in as few writes as the store allows."""
    def delete(self, worker_id: str) -> None: ...
    def changes(self) -> AsyncIterator[list[Change]]:
        """The other coordinators' changes to the workers since `load()`, in batches, for ever (none on an
        unshared store). Take in a whole batch before planning: see `Registry.caught_up`."""
    def primaries(self) -> AsyncIterator[tuple[str, str | None]]:
        """(store, worker id) each time a replicated store's engine elects its primary, or (store, None) while it
        has none; the first for each store as it is now. Nothing on an unshared store (no store replicates)."""
    def load_secrets(self) -> dict[str, str]: ...
    def claim_secret(self, service: str, secret: str) -> str:
        """Keep `secret` as the service's unless it has one already; the one kept either way, so two
        coordinators on one store never hand out two secrets for a store."""
    def load_mesh(self) -> tuple[list[MeshNode], list[Revoked]]: ...
    def save_mesh_node(self, node: MeshNode) -> None: ...
    def save_issued(self, fingerprint: str, worker_id: str, expires: float, now: float) -> None:
        """A certificate the CA signed: what revoking its worker must list, until it expires (then it goes, so
        renewals every half life do not grow the store)."""
    def issued(self, worker_id: str, now: float) -> list[str]:
        """The fingerprints of the worker's certificates that have not expired."""
    def revoke_mesh_node(self, worker_id: str, revoked: Iterable[Revoked]) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Change:
    """A change another coordinator made to a shared store, for this one's registry to take in."""

    worker_id: str
    kind: Literal["worker", "assigned", "seen", "state"]
    value: dict[str, Any] | float | None  # None: the worker was deleted (it left the pool)


def store_location(url: str | None, data_dir: Path) -> Path | list[str]:
    """Where `url` (RMA_STORE_URL) keeps the pool: a SQLite file (none: in `data_dir`), or etcd's client URLs.
    ValueError says what a store URL looks like."""
    if not url:
        return data_dir / "registry.sqlite3"
    parts = urlsplit(url)
    if parts.scheme == "sqlite" and parts.path and not parts.netloc:
        return Path(parts.path)
    if parts.scheme == "etcd" and parts.netloc and parts.path in ("", "/") and "@" not in parts.netloc:
        members = [member.strip() for member in parts.netloc.split(",")]
        if all(_host_port(member) for member in members):
            return [f"http://{member}" for member in members]
    raise ValueError(f"a store URL is sqlite:///path/to/registry.sqlite3 or etcd://host:port[,host:port...], "
                     f"got {url!r}")


def open_store(url: str | None, data_dir: Path) -> Store:
    """The store `url` names (see `store_location`)."""
    from rma.coordinator.etcd import Etcd
    from rma.coordinator.etcd_store import EtcdStore
    from rma.coordinator.sqlite_store import SqliteStore

    location = store_location(url, data_dir)
    return SqliteStore(location) if isinstance(location, Path) else EtcdStore(Etcd(location))


def _host_port(member: str) -> bool:
    host, _, port = member.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536
