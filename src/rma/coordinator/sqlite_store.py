"""The registry on one coordinator's disk: one SQLite file in WAL mode under the data dir.

Registrations and assignment changes are committed at once, one row each, so a `kill -9`
loses nothing and the cost does not grow with the number of workers. Heartbeats only move
`last_seen`, which is written in batches (`touch_many`), never once per beat.

The file holds the stores' secrets and the workers' token hashes: it and the -wal and -shm
files SQLite keeps beside it are readable by their owner alone (0600); a data dir the
coordinator creates is 0700.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

from rma.coordinator.store import Change, MeshNode, Revoked, StoredWorker

SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    worker_id     TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL,
    kind          TEXT NOT NULL,
    host          TEXT NOT NULL,
    tunnel_url    TEXT,
    capabilities  TEXT NOT NULL,
    assigned      TEXT NOT NULL,
    holds_data    TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen     REAL NOT NULL,
    serving       TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS secrets (
    service TEXT PRIMARY KEY,
    secret  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mesh_nodes (
    worker_id  TEXT PRIMARY KEY,
    address    TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL,
    underlay   TEXT NOT NULL,
    kind       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mesh_issued (
    fingerprint TEXT PRIMARY KEY,
    worker_id   TEXT NOT NULL,
    expires     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mesh_revoked (
    fingerprint TEXT PRIMARY KEY,
    worker_id   TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    revoked_at  REAL NOT NULL
)
"""


# SQLite's companions of a database file; in WAL mode it makes them with the database file's mode.
COMPANIONS = ("-wal", "-shm", "-journal")
PRIVATE = 0o600


class SqliteStore:
    """The embedded default: one coordinator (and `rma up`); `shared` is False, so no replica is placed."""

    shared = False

    def __init__(self, path: Path) -> None:
        _private_file(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed row survives a process crash (kill -9).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(workers)")}
        if "serving" not in columns:  # a registry from before services' states were kept
            self._db.execute("ALTER TABLE workers ADD COLUMN serving TEXT NOT NULL DEFAULT '{}'")

    def load(self) -> list[StoredWorker]:
        rows = self._db.execute(
            "SELECT worker_id, token_hash, kind, host, tunnel_url, capabilities, assigned, holds_data,"
            " registered_at, last_seen, serving FROM workers"
        ).fetchall()
        return [
            StoredWorker(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])),
                         frozenset(json.loads(r[7])), r[8], r[9], json.loads(r[10]))
            for r in rows
        ]

    def save(self, worker: StoredWorker) -> bool:
        self._db.execute(
            "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (worker.worker_id, worker.token_hash, worker.kind, worker.host, worker.tunnel_url,
             worker.capabilities, json.dumps(list(worker.assigned)),
             json.dumps(sorted(worker.holds_data)), worker.registered_at, worker.last_seen,
             json.dumps(dict(worker.serving))),
        )
        return True

    def save_state(self, worker_id: str, healthy: bool, serving: Mapping[str, int]) -> None:
        """Only what it serves: whether it is up, a restarted coordinator reads off its last heartbeat time."""
        self._db.execute("UPDATE workers SET serving = ? WHERE worker_id = ?", (json.dumps(dict(serving)), worker_id))

    def save_assignment(self, worker_id: str, assigned: Iterable[str], holds_data: Iterable[str]) -> bool:
        self._db.execute(
            "UPDATE workers SET assigned = ?, holds_data = ? WHERE worker_id = ?",
            (json.dumps(list(assigned)), json.dumps(sorted(holds_data)), worker_id),
        )
        return True  # one coordinator: nobody else places

    def touch_many(self, seen: Iterable[tuple[float, str]]) -> None:
        """Write many workers' last heartbeat times in one transaction."""
        self._db.execute("BEGIN")
        try:
            self._db.executemany("UPDATE workers SET last_seen = ? WHERE worker_id = ?", seen)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def changes(self) -> AsyncIterator[list[Change]]:
        """None: this coordinator is the file's only writer."""
        none: tuple[list[Change], ...] = ()
        for batch in none:
            yield batch

    async def primaries(self) -> AsyncIterator[tuple[str, str | None]]:
        """None: no store replicates on a pool of one coordinator (its engines elect leaders in etcd)."""
        none: tuple[tuple[str, str | None], ...] = ()
        for primary in none:
            yield primary

    def load_secrets(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT service, secret FROM secrets").fetchall())

    def claim_secret(self, service: str, secret: str) -> str:
        self._db.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (service, secret))
        held: str = self._db.execute("SELECT secret FROM secrets WHERE service = ?", (service,)).fetchone()[0]
        return held

    def load_mesh(self) -> tuple[list[MeshNode], list[Revoked]]:
        nodes = self._db.execute("SELECT worker_id, address, public_key, underlay, kind FROM mesh_nodes").fetchall()
        revoked = self._db.execute("SELECT fingerprint, worker_id, public_key, revoked_at FROM mesh_revoked").fetchall()
        return [MeshNode(*row) for row in nodes], [Revoked(*row) for row in revoked]

    def save_issued(self, fingerprint: str, worker_id: str, expires: float, now: float) -> None:
        """A certificate the CA signed: what revoking its worker must list, until it expires (then it goes, so
        renewals every half life do not grow the table)."""
        self._db.execute("DELETE FROM mesh_issued WHERE expires <= ?", (now,))
        self._db.execute("INSERT OR REPLACE INTO mesh_issued VALUES (?, ?, ?)", (fingerprint, worker_id, expires))

    def issued(self, worker_id: str, now: float) -> list[str]:
        """The fingerprints of the worker's certificates that have not expired."""
        return [row[0] for row in self._db.execute(
            "SELECT fingerprint FROM mesh_issued WHERE worker_id = ? AND expires > ?", (worker_id, now))]

    def save_mesh_node(self, node: MeshNode) -> None:
        self._db.execute("INSERT OR REPLACE INTO mesh_nodes VALUES (?, ?, ?, ?, ?)",
                         (node.worker_id, node.address, node.public_key, node.underlay, node.kind))

    def revoke_mesh_node(self, worker_id: str, revoked: Iterable[Revoked]) -> None:
        """Forget the worker's place on the mesh and list its certificates as revoked, in one transaction."""
        self._db.execute("BEGIN")
        try:
            self._db.execute("DELETE FROM mesh_nodes WHERE worker_id = ?", (worker_id,))
            self._db.execute("DELETE FROM mesh_issued WHERE worker_id = ?", (worker_id,))
            self._db.executemany("INSERT OR REPLACE INTO mesh_revoked VALUES (?, ?, ?, ?)",
                                 [(r.fingerprint, r.worker_id, r.public_key, r.revoked_at) for r in revoked])
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def delete(self, worker_id: str) -> None:
        self._db.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

    def close(self) -> None:
        self._db.close()


def _private_file(path: Path) -> None:
    """Make `path` (and any companions a crash left) owner-only before SQLite opens it."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE))
    for file in (path, *(path.with_name(path.name + suffix) for suffix in COMPANIONS)):
        if file.exists() and file.stat().st_mode & 0o777 != PRIVATE:
            file.chmod(PRIVATE)
