"""The files a worker keeps: every one that holds a secret is its owner's alone, and no log holds one."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import RmaProcess, start_coordinator, start_worker, wait_until
from rma.files import write_private
from rma.worker.config import Identity, load_identity, save_identity

# The stores with a password (chromadb has none). neo4j's engine here (ArcadeDB) takes the machine's one
# Bolt port, 7687, which another test run may hold; its password file's mode is checked in test_graph_store.
STORES = ("redis", "postgres", "minio")


def replicas(url: str, worker_id: str) -> dict[str, dict[str, Any]] | None:
    """Each store's replica on `worker_id`, with its secret, once all are healthy (loopback callers are admins)."""
    found = {}
    for service in STORES:
        mine = [r for r in httpx.get(f"{url}/api/services/discover/{service}", timeout=2).json().get("workers", [])
                if r["worker_id"] == worker_id]
        if not mine:
            return None
        found[service] = mine[0]
    return found


def holding(root: Path, secrets: set[str]) -> dict[Path, int]:
    """Every file under `root` whose bytes hold one of `secrets`, with its mode; links are not followed."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                continue
            body = path.read_bytes()
            if any(secret.encode() in body for secret in secrets):
                found[path.relative_to(root)] = stat.S_IMODE(info.st_mode)
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_file_with_a_secret_is_owner_only_and_no_log_has_one(processes: list[RmaProcess],
                                                                     tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path)
    processes.append(coordinator)
    start_worker(processes, tmp_path, url, "storage", "w-storage")
    stores = wait_until(lambda: replicas(url, "w-storage"), 120, what="the stores healthy on the storage worker")
    data_dir = tmp_path / "w-storage"
    token = json.loads((data_dir / "worker.json").read_text())["worker_token"]
    secrets = {token, *(replica["secret"] for replica in stores.values())}
    found = holding(data_dir, secrets)
    assert Path("worker.json") in found and Path("services/redis/redis-secret.conf") in found
    loose = {str(path): oct(mode) for path, mode in found.items() if mode & 0o077}
    assert not loose, "files holding a secret that others may read"
    logs = [path for path in found if any(part == "logs" or part.endswith(".log") for part in path.parts)]
    assert not logs, "a secret in a log"
    for log in (tmp_path / "w-storage.log", tmp_path / "coordinator.log"):  # the worker's and coordinator's own
        assert not any(secret in log.read_text(errors="replace") for secret in secrets), f"a secret in {log.name}"


def test_a_planted_link_is_replaced_never_followed(tmp_path: Path) -> None:
    """The store's account owns the folder (pgdata) a root worker writes into: its link must not redirect us."""
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    planted = tmp_path / "pg_hba.conf"
    planted.symlink_to(target)
    write_private(planted, "a secret")
    assert target.read_text() == "untouched"
    assert not planted.is_symlink() and planted.read_text() == "a secret"
    assert stat.S_IMODE(planted.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "pg_hba.conf"], "no temporary file left"


def test_a_stale_temporary_identity_does_not_loosen_the_token(tmp_path: Path) -> None:
    stale = tmp_path / "worker.json.tmp"
    stale.write_text("")
    stale.chmod(0o644)
    save_identity(tmp_path, Identity("w-1", "t0ken"))
    assert stat.S_IMODE((tmp_path / "worker.json").stat().st_mode) == 0o600
    assert load_identity(tmp_path) == Identity("w-1", "t0ken")
