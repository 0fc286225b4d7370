"""The registry on disk holds the stores' secrets and the workers' token hashes: only its owner reads it."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rma.coordinator.sqlite_store import SqliteStore


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most shells have (022), under which new files are world-readable unless made otherwise."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_the_registry_and_its_wal_and_shm_files_are_the_owners_alone(tmp_path: Path, usual_umask: None) -> None:
    store = SqliteStore(tmp_path / "data" / "registry.sqlite3")
    store.claim_secret("redis", "s3cret")
    found = modes(tmp_path / "data")
    # WAL mode: SQLite keeps the -wal and -shm files beside the registry while it is open.
    assert set(found) == {"registry.sqlite3", "registry.sqlite3-wal", "registry.sqlite3-shm"}
    assert found == dict.fromkeys(found, 0o600)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    store.close()


def test_a_registry_made_readable_before_is_tightened(tmp_path: Path, usual_umask: None) -> None:
    SqliteStore(tmp_path / "registry.sqlite3").close()
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    for name in ("registry.sqlite3-wal", "registry.sqlite3-shm"):  # left by a crash, world-readable
        (tmp_path / name).touch(0o644)
    store = SqliteStore(tmp_path / "registry.sqlite3")
    assert store.load_secrets() == {}
    found = modes(tmp_path)
    assert found == dict.fromkeys(found, 0o600) and "registry.sqlite3-wal" in found
    store.close()



def test_a_registry_from_before_services_states_were_kept_opens_with_none(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE workers (worker_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, kind TEXT NOT NULL, "
                    "host TEXT NOT NULL, tunnel_url TEXT, capabilities TEXT NOT NULL, assigned TEXT NOT NULL, "
                    "holds_data TEXT NOT NULL, registered_at REAL NOT NULL, last_seen REAL NOT NULL)")
        old.execute("INSERT INTO workers VALUES ('s1', 'h', 'storage', '127.0.0.1', NULL, '{}', '[\"redis\"]', "
                    "'[]', 1.0, 2.0)")
    store = SqliteStore(path)
    [worker] = store.load()
    assert worker.assigned == ("redis",) and worker.serving == {}
    store.save_state("s1", True, {"redis": 6379})
    assert store.load()[0].serving == {"redis": 6379}
    store.close()
