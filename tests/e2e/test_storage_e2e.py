"""Tier-3 stores end to end: a real coordinator, a real storage worker, real servers, real clients.

Clients connect with what discovery hands out (loopback callers are admins without RMA_ADMIN_TOKEN):
redis-py, psycopg, chromadb, the minio SDK (the S3 slot, SeaweedFS here) and the neo4j driver (the graph
slot, ArcadeDB here).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import chromadb
import httpx
import minio
import neo4j
import psycopg
import pytest
import redis
from chromadb.config import Settings

from procs import RmaProcess, start_coordinator, start_worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
INTERVAL = 1.0
STORES = ("redis", "postgres", "chromadb", "minio", "neo4j")
LETTER = "Dear Ms Patel, you owe £412.50 to British Gas.".encode() * 2000


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
    s3 = s3_client(stores["minio"]["connection_url"])
    s3.make_bucket("letters")
    s3.put_object("letters", "client-42/british-gas.txt", io.BytesIO(LETTER), len(LETTER))
    with graph(stores["neo4j"]["connection_url"]) as session:
        session.run("CREATE (:Client {id: 42})-[:OWES]->(:Debt {amount: 412.5})-[:TO]->(:Creditor {name: $name})",
                    name="British Gas").consume()


def read_everything(stores: dict[str, dict[str, Any]]) -> None:
    with psycopg.connect(stores["postgres"]["connection_url"], connect_timeout=5) as conn:
        assert conn.execute("SELECT creditor FROM cases WHERE id = 42").fetchone() == ("Council Tax £1,240",)
    assert redis.Redis.from_url(stores["redis"]["connection_url"]).get("client:42:creditor") == \
        "Council Tax £1,240".encode()
    manuals = chroma_client(stores["chromadb"]).get_collection("manuals", embedding_function=None)
    nearest = manuals.query(query_embeddings=[[0.1, 0.9, 0.0]], n_results=1)
    assert nearest["ids"] == [["council-tax"]] and nearest["documents"] == [["Council tax arrears"]]
    answer = s3_client(stores["minio"]["connection_url"]).get_object("letters", "client-42/british-gas.txt")
    try:
        assert answer.read() == LETTER
    finally:
        answer.close()
        answer.release_conn()
    with graph(stores["neo4j"]["connection_url"]) as session:
        owed = session.run("MATCH (:Client {id: 42})-[:OWES]->(d:Debt)-[:TO]->(c:Creditor) "
                           "RETURN d.amount AS amount, c.name AS creditor").single()
    assert owed is not None and (owed["amount"], owed["creditor"]) == (412.5, "British Gas")


def s3_client(url: str, secret: str | None = None) -> minio.Minio:
    """The minio SDK for discovery's s3://key:secret@host:port (or with another secret)."""
    parts = urlsplit(url)
    return minio.Minio(f"{parts.hostname}:{parts.port}", access_key=unquote(parts.username or ""),
                       secret_key=secret or unquote(parts.password or ""), secure=False)


@contextlib.contextmanager
def graph(url: str, secret: str | None = None) -> Iterator[neo4j.Session]:
    """A Bolt session for discovery's bolt://user:secret@host:7687 (or with another secret)."""
    parts = urlsplit(url)
    auth = (unquote(parts.username or ""), secret or unquote(parts.password or ""))
    with neo4j.GraphDatabase.driver(f"bolt://{parts.hostname}:{parts.port}", auth=auth) as driver, \
            driver.session() as session:
        yield session


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
    with pytest.raises(minio.error.S3Error, match="SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied"):
        s3_client(stores["minio"]["connection_url"], secret="guess").list_buckets()
    anonymous = httpx.get(f"{stores['minio']['url']}/letters/client-42/british-gas.txt", timeout=5)
    assert anonymous.status_code == 403, anonymous.text
    with pytest.raises(neo4j.exceptions.AuthError), graph(stores["neo4j"]["connection_url"], secret="guess") as bad:
        bad.run("RETURN 1").consume()


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
