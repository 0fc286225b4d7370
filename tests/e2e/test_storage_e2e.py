"""Tier-3 stores end to end: a real coordinator, a real storage worker, real servers, real clients.

Clients connect with what discovery hands out (loopback callers are admins without RMA_ADMIN_TOKEN).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chromadb
import httpx
import psycopg
import pytest
import redis
from chromadb.config import Settings

from procs import RmaProcess, start_coordinator, start_worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]
INTERVAL = 1.0
STORES = ("redis", "postgres", "chromadb")
# The venv's own scripts (`chroma`), even when the tests run without activating it.
PATH = os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", "")))


@pytest.fixture
def data_root(tmp_path: Path, processes: list[RmaProcess]) -> Iterator[Path]:
    """Worker data dirs a root worker's `postgres` account can reach: pytest's own are root's alone (0700)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="rma-e2e-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        for proc in reversed(processes):  # before their data goes: a store whose files vanish panics
            proc.stop(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


def replicas_on(url: str, worker_id: str) -> dict[str, dict[str, Any]] | None:
    """Every store's replica on `worker_id`, once all are healthy there."""
    found = {}
    for service in STORES:
        response = httpx.get(f"{url}/api/services/discover/{service}", timeout=2)
        mine = [r for r in response.json().get("workers", []) if r["worker_id"] == worker_id]
        if response.status_code != 200 or not mine:
            return None
        found[service] = mine[0]
    return found


def write_everything(stores: dict[str, dict[str, Any]]) -> None:
    with psycopg.connect(stores["postgres"]["connection_url"], connect_timeout=5) as conn:
        conn.execute("CREATE TABLE cases (id int PRIMARY KEY, creditor text)")
        conn.execute("INSERT INTO cases VALUES (42, 'Council Tax £1,240')")
    redis.Redis.from_url(stores["redis"]["connection_url"]).set("client:42:creditor", "Council Tax £1,240")
    manuals = chroma_client(stores["chromadb"]).create_collection("manuals", embedding_function=None)
    manuals.add(ids=["debt-relief", "council-tax"], embeddings=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                documents=["Debt relief orders", "Council tax arrears"])


def read_everything(stores: dict[str, dict[str, Any]]) -> None:
    with psycopg.connect(stores["postgres"]["connection_url"], connect_timeout=5) as conn:
        assert conn.execute("SELECT creditor FROM cases WHERE id = 42").fetchone() == ("Council Tax £1,240",)
    assert redis.Redis.from_url(stores["redis"]["connection_url"]).get("client:42:creditor") == \
        "Council Tax £1,240".encode()
    manuals = chroma_client(stores["chromadb"]).get_collection("manuals", embedding_function=None)
    nearest = manuals.query(query_embeddings=[[0.1, 0.9, 0.0]], n_results=1)
    assert nearest["ids"] == [["council-tax"]] and nearest["documents"] == [["Council tax arrears"]]


def chroma_client(replica: dict[str, Any]) -> chromadb.HttpClient:  # type: ignore[valid-type]
    return chromadb.HttpClient(host=replica["host"], port=replica["port"],
                               settings=Settings(anonymized_telemetry=False))


def refuses_wrong_passwords(stores: dict[str, dict[str, Any]]) -> None:
    pg, rd = stores["postgres"], stores["redis"]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=pg["host"], port=pg["port"], user="rma", password="guess", dbname="rma", connect_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=rd["host"], port=rd["port"], password="guess").ping()
    with pytest.raises(redis.AuthenticationError):  # NOAUTH: no password is no better
        redis.Redis(host=rd["host"], port=rd["port"]).get("client:42:creditor")


def test_stores_keep_their_data_through_a_killed_worker_and_refuse_wrong_passwords(
        processes: list[RmaProcess], tmp_path: Path, data_root: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=INTERVAL)
    processes.append(coordinator)
    worker = start_worker(processes, tmp_path, url, "storage", "w-store", data_root)
    stores = wait_until(lambda: replicas_on(url, "w-store"), 60, what="redis, postgres and chroma healthy on w-store")
    write_everything(stores)
    refuses_wrong_passwords(stores)

    worker.kill9()
    start_worker(processes, tmp_path, url, "storage", "w-store", data_root)  # same id, same data dir
    stores = wait_until(lambda: replicas_on(url, "w-store") if _rejoined(url) else None, 60,
                        what="the stores back on the restarted w-store")
    read_everything(stores)
    refuses_wrong_passwords(stores)
    secrets = {r["secret"] for r in stores.values()}
    logs = [*(data_root / "w-store" / "logs").glob("*.log"), *tmp_path.glob("*.log")]
    assert len(logs) >= 5 and not any(secret in path.read_text(errors="replace") for path in logs for secret in secrets)


def _rejoined(url: str) -> bool:
    events = httpx.get(f"{url}/api/admin/events", timeout=2).json()["events"]
    return any(e["kind"] == "rejoined" and e["worker_id"] == "w-store" for e in events)


@pytest.mark.skipif(bool(shutil.which("minio", path=PATH)), reason="this machine has a minio binary")
def test_storage_worker_without_minio_is_never_assigned_it_and_the_gap_says_why(
        processes: list[RmaProcess], tmp_path: Path, data_root: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=INTERVAL)
    processes.append(coordinator)
    start_worker(processes, tmp_path, url, "storage", "w-store", data_root)

    def minio_gap() -> dict[str, Any] | None:
        gaps = httpx.get(f"{url}/api/admin/gaps", timeout=2).json()["gaps"]
        gap = next(g for g in gaps if g["service"] == "minio")
        return gap if "engine minio not available" in gap.get("reason", "") else None

    gap = wait_until(minio_gap, 20, what="the gap report's reason for minio")
    assert gap["status"] == "critical" and gap["current_workers"] == 0
    worker = httpx.get(f"{url}/api/admin/workers", timeout=2).json()["workers"][0]
    assert "minio" not in worker["capabilities"]["engines"] and "minio" not in worker["assigned_services"]
