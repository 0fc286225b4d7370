"""Snapshots of a store that cannot replicate, in the pool's S3: taken consistently, copied off the machine,
restored by a new holder (chromadb, and neo4j on ArcadeDB).

Neither Chroma 1.x (outside its Kubernetes distribution) nor the ArcadeDB that PyPI ships replicates, so the
holder's store is copied whole: the server is paused (SIGSTOP) while a gzipped tar of its folder is written
beside it (tens of milliseconds for thousands of records; it grows with the store), which makes the copy
what a crash at that instant would leave, and both engines recover from a crash (ArcadeDB replays its WAL).
The tar goes to the snapshot bucket of the pool's S3 (on two machines where S3 replicates), under an
identity that reaches that bucket only (rma.replication), named by service and time. The newest few are kept.

Run as a module, it is the companion that takes one every interval beside the server:
`python -m rma.services.snapshots SERVICE STORE_FOLDER STATE_FOLDER MARKER`, where MARKER is an argument
the server's command line holds exactly; it reads where to from the state folder's TARGET, never from its
command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import sys
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from rma.files import write_private
from rma.replication import (
    SNAPSHOT_BUCKET,
    SNAPSHOT_INTERVAL_VARIABLE,
    SNAPSHOT_KEY_VARIABLE,
    SNAPSHOT_USER,
)
from rma.services.accounts import STORE_ACCOUNT, service_account
from rma.services.base import Launch

if TYPE_CHECKING:
    import minio

ENDPOINT_VARIABLE = "MINIO_ENDPOINT"  # the seed's: where the pool's S3 is, host:port
SUFFIX = ".tar.gz"  # object names: SERVICE/ + milliseconds since the epoch + "-" + lineage + SUFFIX
KEEP = 3  # snapshots kept; older ones are removed after each new one
STATE = "snapshot.json"  # in the state folder: when the newest snapshot was copied off, for the heartbeat
TARGET = "snapshot-target.json"  # in the state folder, 0600: where snapshots go (Target)
LINEAGE = "lineage.json"  # in the state folder: this copy's lineage (see _superseded)
ARCHIVE_ROOT = "store"  # the folder name inside the tar
DEFAULT_INTERVAL_S = 300.0
TIMEOUT_S = 10  # each S3 request


@dataclass(frozen=True)
class Target:
    """Where snapshots go: the pool's S3 (host:port, "" while none serves), the snapshot identity's key, how often.

    The worker writes it to the state folder at the start and whenever the service's config changes (S3's
    primary moved), and the companion reads it every round, so snapshots follow S3 wherever it serves.
    """

    endpoint: str
    key: str
    interval_s: float = DEFAULT_INTERVAL_S

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Target:
        try:
            every = max(1.0, float(env.get(SNAPSHOT_INTERVAL_VARIABLE, DEFAULT_INTERVAL_S)))
        except ValueError:
            every = DEFAULT_INTERVAL_S
        return cls(env.get(ENDPOINT_VARIABLE, ""), env.get(SNAPSHOT_KEY_VARIABLE, ""), every)

    def save(self, state: Path) -> None:
        write_private(state / TARGET, json.dumps(dataclasses.asdict(self)))

    @classmethod
    def load(cls, state: Path) -> Target:
        return cls(**json.loads((state / TARGET).read_text()))

    def client(self) -> minio.Minio:
        """The snapshot identity's S3 client; it gives up on a request after TIMEOUT_S."""
        import minio  # the storage extra's, as chromadb is
        import urllib3

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=TIMEOUT_S, read=TIMEOUT_S),
                                   retries=urllib3.Retry(total=1, backoff_factor=0.2))
        return minio.Minio(self.endpoint, SNAPSHOT_USER, self.key, secure=False, region="us-east-1",
                           http_client=http)


def enabled(env: Mapping[str, str]) -> bool:
    """Whether the coordinator turned snapshots on for this holder (it gives the key where S3 replicates)."""
    return bool(env.get(SNAPSHOT_KEY_VARIABLE))


@dataclass(frozen=True)
class Holding:
    """One holder's store: what to copy, where its state files are, and how its server is recognised."""

    service: str  # the snapshots' prefix in the bucket
    store: Path  # the folder copied whole, restored into when missing
    state: Path  # TARGET and STATE, and the archive on its way
    marker: str  # an argument the server's command line holds exactly (its store's path)

    @property
    def prefix(self) -> str:
        return f"{self.service}/"

    @property
    def archive(self) -> Path:
        """A snapshot on its way to S3 or from it."""
        return self.state / f".{ARCHIVE_ROOT}{SUFFIX}.part"

    def companions(self, env: Mapping[str, str]) -> tuple[Launch, ...]:
        """The companion that snapshots the store, where snapshots are on; no secret on its command line."""
        argv = (sys.executable, "-m", "rma.services.snapshots", self.service, str(self.store), str(self.state),
                self.marker)
        return (Launch(argv, cwd=self.state),) if enabled(env) else ()


class Snapshotted:
    """What a snapshotted store's driver adds (beside ServiceDriver): its state folder is its data dir."""

    def reconfigure(self, data_dir: Path, env: Mapping[str, str]) -> None:
        """S3's primary moved (or S3 began serving): the companion's next snapshot goes there."""
        if enabled(env):
            Target.from_env(env).save(data_dir.resolve())

    def snapshot_at(self, data_dir: Path) -> float | None:
        return last_taken(data_dir.resolve())


def prepare(env: Mapping[str, str], holding: Holding, holds: str) -> None:
    """Where snapshots are on: save their target, and, while S3 is known, restore the newest snapshot into a
    store that lacks `holds` (what a store that has ever started has) or that a newer holder superseded. An
    empty folder is replaced; a superseded store is moved aside, never deleted; a store with files but not
    `holds` is never touched."""
    if not enabled(env):
        return
    target = Target.from_env(env)
    target.save(holding.state)
    if not target.endpoint:
        return
    store = holding.store
    if (store / holds).exists():
        if not _superseded(target, holding):
            return
        store.rename(store.with_name(f"{store.name}.superseded-{int(time.time())}"))
    elif store.exists():
        store.rmdir()
    if restore(target, holding) is None:
        _begin_lineage(holding.state)


def _superseded(target: Target, holding: Holding) -> bool:
    """Whether another holder took the store over after this one's copy began: its snapshot is the newest.

    Each copy has a lineage, begun when it is created or restored, and every snapshot names its own. A holder
    back after the grace finds the restored copy's snapshots, newer than its own lineage: its copy is stale
    (it may have writes the snapshots lack, which is why it is moved aside and not deleted). A holder back
    within the grace finds its own lineage newest, and keeps its copy.
    """
    own = _lineage(holding.state)
    if own is None:
        _begin_lineage(holding.state)  # a copy from before lineages: nothing newer than now supersedes it
        return False
    try:
        names = _names(target.client(), holding.prefix)
    except Exception:  # noqa: BLE001 - S3 unreachable: the copy this holder has is served, as without snapshots
        return False
    newest = _parsed(names[-1], holding.prefix) if names else None
    return newest is not None and newest[1] != own[0] and newest[0] / 1000 > own[1]


def _lineage(state: Path) -> tuple[str, float] | None:
    """This copy's lineage and when it began."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        lineage = json.loads((state / LINEAGE).read_text())
        return str(lineage["id"]), float(lineage["began"])
    return None


def _begin_lineage(state: Path) -> str:
    lineage = secrets.token_hex(8)
    (state / LINEAGE).write_text(json.dumps({"id": lineage, "began": time.time()}))
    return lineage


def server_pid(marker: str) -> int | None:
    """The server whose command line holds `marker`, run by this user or the stores' account."""
    account = service_account(STORE_ACCOUNT)
    users = {os.getuid(), account.pw_uid} if account else {os.getuid()}
    for process in psutil.process_iter(["cmdline", "uids"]):
        if marker in (process.info["cmdline"] or ()) and process.info["uids"].real in users \
                and process.pid != os.getpid():
            return int(process.pid)
    return None


def take(store: Path, pid: int, archive: Path) -> float:
    """Write a gzipped tar of `store` to `archive` while its server `pid` is paused: what a crash at that
    instant would leave. Seconds the server was paused."""
    os.kill(pid, signal.SIGSTOP)
    paused = time.monotonic()
    try:
        with tarfile.open(archive, mode="w:gz", compresslevel=1) as tar:
            tar.add(store, arcname=ARCHIVE_ROOT)
    finally:
        os.kill(pid, signal.SIGCONT)
    return time.monotonic() - paused


def copy_off(target: Target, holding: Holding, pid: int) -> float:
    """Take a snapshot, put it in the bucket, keep the newest KEEP; the moment it was taken."""
    s3 = target.client()
    archive = holding.archive
    taken = time.time()
    try:
        paused = take(holding.store, pid, archive)
        if not s3.bucket_exists(SNAPSHOT_BUCKET):
            s3.make_bucket(SNAPSHOT_BUCKET)
        lineage = own[0] if (own := _lineage(holding.state)) else _begin_lineage(holding.state)
        s3.fput_object(SNAPSHOT_BUCKET, f"{holding.prefix}{int(taken * 1000)}-{lineage}{SUFFIX}", str(archive))
        size = archive.stat().st_size
    finally:
        archive.unlink(missing_ok=True)
    for old in _names(s3, holding.prefix)[:-KEEP]:
        s3.remove_object(SNAPSHOT_BUCKET, old)
    (holding.state / STATE).write_text(json.dumps({"at": taken, "bytes": size, "paused_s": round(paused, 4)}))
    return taken


def _names(s3: minio.Minio, prefix: str) -> list[str]:
    """One service's snapshots in the bucket, oldest first (their names are their times)."""
    if not s3.bucket_exists(SNAPSHOT_BUCKET):
        return []
    named = [(parsed, o.object_name) for o in s3.list_objects(SNAPSHOT_BUCKET, prefix=prefix)
             if o.object_name and (parsed := _parsed(o.object_name, prefix)) is not None]
    return [name for _, name in sorted(named)]


def _parsed(name: str, prefix: str) -> tuple[int, str] | None:
    """A snapshot's name → (milliseconds since the epoch when it was taken, its lineage); None: not one."""
    taken, _, lineage = name.removeprefix(prefix).removesuffix(SUFFIX).partition("-")
    return (int(taken), lineage) if taken.isdigit() else None


def restore(target: Target, holding: Holding) -> float | None:
    """Fill the missing store from the newest snapshot; when it was taken, or None when there is none."""
    s3 = target.client()
    names = _names(s3, holding.prefix)
    if not names:
        return None
    archive = holding.archive
    unpacked = holding.state / f".{ARCHIVE_ROOT}.restoring"
    shutil.rmtree(unpacked, ignore_errors=True)
    try:
        s3.fget_object(SNAPSHOT_BUCKET, names[-1], str(archive))
        with tarfile.open(archive, mode="r:gz") as tar:
            tar.extractall(unpacked, filter="data")  # no absolute paths, links out or devices: a hostile tar fails
        size = archive.stat().st_size
        (unpacked / ARCHIVE_ROOT).rename(holding.store)
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
    taken = (_parsed(names[-1], holding.prefix) or (0, ""))[0] / 1000
    (holding.state / STATE).write_text(json.dumps({"at": taken, "bytes": size, "restored": True}))
    _begin_lineage(holding.state)  # a new copy: whatever its source's holder still has is superseded
    return taken


def last_taken(state: Path) -> float | None:
    """When the newest snapshot this holder copied off (or restored from) was taken."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return float(json.loads((state / STATE).read_text())["at"])
    return None


def main(argv: list[str]) -> None:
    """Every interval, snapshot the server to the target in STATE_FOLDER; a failure is logged and tried again
    next time."""
    holding = Holding(argv[0], Path(argv[1]), Path(argv[2]), argv[3])
    while True:
        time.sleep(Target.load(holding.state).interval_s)
        target = Target.load(holding.state)
        pid = server_pid(holding.marker)
        if not target.endpoint or pid is None:
            print(f"{holding.service} snapshot: waiting for {'the server' if pid is None else 'the pool S3'}",
                  file=sys.stderr, flush=True)
            continue
        try:
            copy_off(target, holding, pid)
        except Exception as error:  # noqa: BLE001 - S3 away, disk full: the next interval tries again
            print(f"{holding.service} snapshot failed: {type(error).__name__}: {str(error)[:300]}", file=sys.stderr,
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
