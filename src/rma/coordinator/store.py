"""The registry's disk: one SQLite file in WAL mode under the data dir.

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
    last_seen     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    service TEXT PRIMARY KEY,
    secret  TEXT NOT NULL
)
"""


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


# SQLite's companions of a database file; in WAL mode it makes them with the database file's mode.
COMPANIONS = ("-wal", "-shm", "-journal")
PRIVATE = 0o600


class Store:
    def __init__(self, path: Path) -> None:
        _private_file(path)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed row survives a process crash (kill -9).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def load(self) -> list[StoredWorker]:
        rows = self._db.execute(
            "SELECT worker_id, token_hash, kind, host, tunnel_url, capabilities, assigned, holds_data,"
            " registered_at, last_seen FROM workers"
        ).fetchall()
        return [
            StoredWorker(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])),
                         frozenset(json.loads(r[7])), r[8], r[9])
            for r in rows
        ]

    def save(self, worker: StoredWorker) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (worker.worker_id, worker.token_hash, worker.kind, worker.host, worker.tunnel_url,
             worker.capabilities, json.dumps(list(worker.assigned)),
             json.dumps(sorted(worker.holds_data)), worker.registered_at, worker.last_seen),
        )

    def save_assignment(self, worker_id: str, assigned: Iterable[str], holds_data: Iterable[str]) -> None:
        self._db.execute(
            "UPDATE workers SET assigned = ?, holds_data = ? WHERE worker_id = ?",
            (json.dumps(list(assigned)), json.dumps(sorted(holds_data)), worker_id),
        )

    def touch_many(self, seen: Iterable[tuple[float, str]]) -> None:
        """Write many workers' last heartbeat times in one transaction."""
        self._db.execute("BEGIN")
        try:
            self._db.executemany("UPDATE workers SET last_seen = ? WHERE worker_id = ?", seen)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def load_secrets(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT service, secret FROM secrets").fetchall())

    def save_secret(self, service: str, secret: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO secrets VALUES (?, ?)", (service, secret))

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
