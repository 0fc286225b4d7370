"""Snapshots of the stores that cannot replicate, with a real Chroma, a real ArcadeDB and a real SeaweedFS:
taken while the server runs, copied to the snapshot bucket under an identity that reaches nothing else,
restored into a new holder's empty store."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import chromadb
import neo4j
import pytest
from chromadb.config import Settings
from minio import Minio
from minio.error import S3Error

from rma.replication import SNAPSHOT_BUCKET, SNAPSHOT_KEY_VARIABLE, SNAPSHOT_USER, snapshot_key
from rma.services import DRIVERS, chroma, seaweedfs, snapshots
from rma.services.base import Context, find_binary
from rma.services.chroma import DATA, DATABASE
from rma.services.neo4j import holding as neo4j_holding
from rma.worker.process import free_port
from services import test_s3_store
from services.test_graph_store import client as graph_client
from services.test_graph_store import context as graph_context
from services.test_graph_store import service_host
from services.test_s3_store import HOST, needs_weed, running
from services.test_stores import SECRET, Server

pytestmark = [needs_weed, pytest.mark.slow,
              pytest.mark.skipif(find_binary("chroma") is None, reason="no chroma binary (PyPI chromadb)")]
data_dir = test_s3_store.data_dir
no_sockets_left_in_tmp = test_s3_store.no_sockets_left_in_tmp
RECORDS = 300
DIMENSIONS = 8


@pytest.fixture
def s3(data_dir: Path) -> Iterator[Context]:
    """The pool's S3 (the SeaweedFS engine), in the data dir's folder that the fixture cleans."""
    ctx = test_s3_store.store(data_dir)
    with running(ctx):
        yield ctx


def snapshot_env(s3: Context) -> dict[str, str]:
    """What the coordinator and the worker give chromadb where snapshots are taken."""
    return {snapshots.ENDPOINT_VARIABLE: f"{s3.host}:{s3.port}", SNAPSHOT_KEY_VARIABLE: snapshot_key(SECRET)}


@contextmanager
def holder(folder: Path, env: dict[str, str]) -> Iterator[chromadb.HttpClient]:  # type: ignore[valid-type]
    """A chromadb holder in `folder`, prepared as the supervisor prepares it (a restore where its store is empty)."""
    ctx = Context(HOST, free_port(HOST), folder, secret=SECRET, env=env)
    server = Server(DRIVERS["chromadb"], ctx)
    try:
        assert server.wait_healthy(60), "chroma never answered"
        yield chromadb.HttpClient(host=HOST, port=ctx.port, settings=Settings(anonymized_telemetry=False))
    finally:
        server.stop()


def add(client: chromadb.HttpClient, first: int, count: int) -> None:  # type: ignore[valid-type]
    letters = client.get_or_create_collection("letters")
    ids = range(first, first + count)
    letters.add(ids=[f"letter-{i}" for i in ids], embeddings=[[float(i)] * DIMENSIONS for i in ids],
                documents=[f"letter {i} about a debt" for i in ids])


def ids(client: chromadb.HttpClient) -> set[str]:  # type: ignore[valid-type]
    return set(client.get_collection("letters").get(include=[])["ids"])


def snapshot(holding: snapshots.Holding, env: dict[str, str]) -> float:
    """One snapshot of `holding`, as its companion takes it every interval."""
    pid = snapshots.server_pid(holding.marker)
    assert pid is not None, f"no server found for {holding.store}"
    return snapshots.copy_off(snapshots.Target.from_env(env), holding, pid)


def snapshots_in(s3: Context) -> list[str]:
    s3_client = Minio(f"{s3.host}:{s3.port}", "rma", SECRET, secure=False, region=seaweedfs.REGION)
    return [o.object_name or "" for o in s3_client.list_objects(SNAPSHOT_BUCKET, recursive=True)]


def test_a_new_holder_restores_every_record_of_the_newest_snapshot_and_only_those(data_dir: Path,
                                                                                    s3: Context) -> None:
    env = snapshot_env(s3)
    with holder(data_dir / "first", env) as client:
        add(client, 0, RECORDS)
        taken = snapshot(chroma.holding(data_dir / "first"), env)
        assert DRIVERS["chromadb"].snapshot_at(data_dir / "first") == taken
        add(client, RECORDS, 1)  # written after the snapshot: what a restore loses
        assert len(ids(client)) == RECORDS + 1
    with holder(data_dir / "second", env) as client:
        assert ids(client) == {f"letter-{i}" for i in range(RECORDS)}
        assert client.get_collection("letters").query(query_embeddings=[[7.0] * DIMENSIONS],
                                                      n_results=1)["ids"] == [["letter-7"]]
        add(client, RECORDS, 5)  # the restored store takes writes
        assert len(ids(client)) == RECORDS + 5
    assert DRIVERS["chromadb"].snapshot_at(data_dir / "second") == pytest.approx(taken, abs=0.001)


def test_a_holder_with_a_store_keeps_it_and_the_bucket_keeps_the_newest_three(data_dir: Path, s3: Context) -> None:
    env = snapshot_env(s3)
    with holder(data_dir / "first", env) as client:
        add(client, 0, 10)
        for _ in range(snapshots.KEEP + 2):
            snapshot(chroma.holding(data_dir / "first"), env)
            time.sleep(0.01)
        add(client, 10, 10)
    assert len(snapshots_in(s3)) == snapshots.KEEP
    with holder(data_dir / "first", env) as client:  # restarted with its store: no restore over it
        assert len(ids(client)) == 20
    assert (data_dir / "first" / DATA / DATABASE).exists()


def test_a_holder_back_after_another_took_over_serves_the_newer_copy_and_keeps_its_own_aside(
        data_dir: Path, s3: Context) -> None:
    env = snapshot_env(s3)
    with holder(data_dir / "first", env) as client:
        add(client, 0, 10)
        snapshot(chroma.holding(data_dir / "first"), env)
        add(client, 10, 1)  # never in a snapshot: kept aside on the old holder's disk, not deleted
    with holder(data_dir / "second", env) as client:  # restored after the grace, and written to
        add(client, 20, 5)
        snapshot(chroma.holding(data_dir / "second"), env)
    with holder(data_dir / "first", env) as client:  # the old holder, back late with its copy
        assert ids(client) == {f"letter-{i}" for i in (*range(10), *range(20, 25))}
    [aside] = (data_dir / "first").glob(f"{DATA}.superseded-*")
    assert (aside / DATABASE).exists()


def test_the_snapshot_identity_reaches_its_bucket_and_nothing_else(data_dir: Path, s3: Context) -> None:
    env = snapshot_env(s3)
    with holder(data_dir / "first", env):
        snapshot(chroma.holding(data_dir / "first"), env)
    own = Minio(f"{s3.host}:{s3.port}", SNAPSHOT_USER, snapshot_key(SECRET), secure=False, region=seaweedfs.REGION)
    assert len(list(own.list_objects(SNAPSHOT_BUCKET, recursive=True))) == 1
    with pytest.raises(S3Error, match="AccessDenied"):
        list(own.list_objects(seaweedfs.HEALTH_BUCKET))
    with pytest.raises(S3Error, match="AccessDenied"):
        own.make_bucket("letters")
    forged = Minio(f"{s3.host}:{s3.port}", SNAPSHOT_USER, "guessed", secure=False, region=seaweedfs.REGION)
    with pytest.raises(S3Error, match="SignatureDoesNotMatch|InvalidAccessKeyId"):
        list(forged.list_objects(SNAPSHOT_BUCKET))


def test_a_snapshot_that_escapes_its_folder_is_refused_and_writes_nothing(data_dir: Path, s3: Context) -> None:
    """Whoever holds the snapshot key could plant a tar: one reaching out of the restore folder fails the restore."""
    env = snapshot_env(s3)
    planted = io.BytesIO()
    with tarfile.open(fileobj=planted, mode="w:gz") as tar:
        entry = tarfile.TarInfo("../../escaped")
        entry.size = 2
        tar.addfile(entry, io.BytesIO(b"no"))
    own = Minio(f"{s3.host}:{s3.port}", SNAPSHOT_USER, snapshot_key(SECRET), secure=False, region=seaweedfs.REGION)
    own.make_bucket(SNAPSHOT_BUCKET)
    own.put_object(SNAPSHOT_BUCKET, f"chromadb/{int(time.time() * 1000)}{snapshots.SUFFIX}",
                   io.BytesIO(planted.getvalue()), len(planted.getvalue()))
    folder = (data_dir / "victim").resolve()
    folder.mkdir(parents=True)
    with pytest.raises(tarfile.OutsideDestinationError):
        snapshots.restore(snapshots.Target.from_env(env), chroma.holding(folder))
    assert not (folder / DATA).exists() and not (folder.parent / "escaped").exists()
    assert [p.name for p in folder.iterdir()] == []


def test_a_new_arcadedb_holder_restores_the_graph_its_newest_snapshot_had(data_dir: Path, s3: Context) -> None:
    env = snapshot_env(s3)
    host = service_host()

    @contextmanager
    def graph(folder: Path) -> Iterator[neo4j.Session]:
        ctx = replace(graph_context(folder, host, free_port(host)), env=env)
        server = Server(DRIVERS["neo4j"], ctx)
        try:
            assert server.wait_healthy(90), "ArcadeDB never answered over Bolt"
            with graph_client(ctx) as driver, driver.session() as session:
                yield session
        finally:
            server.stop()

    with graph(data_dir / "graph-first") as session:
        session.run("UNWIND range(0, $n - 1) AS i CREATE (:Debt {n: i})", n=RECORDS)
        taken = snapshot(neo4j_holding(data_dir / "graph-first"), env)
        session.run("CREATE (:Debt {n: -1})")  # after the snapshot: what a restore loses
    with graph(data_dir / "graph-second") as session:
        assert session.run("MATCH (d:Debt) RETURN count(d) AS c").single()["c"] == RECORDS
        session.run("CREATE (:Debt {n: -2})")  # the restored graph takes writes
        assert session.run("MATCH (d:Debt) RETURN count(d) AS c").single()["c"] == RECORDS + 1
    assert DRIVERS["neo4j"].snapshot_at(data_dir / "graph-second") == pytest.approx(taken, abs=0.001)
