"""chromadb's snapshots in the pool's S3: taken consistently, copied off the machine, restored by a new holder.

Chroma 1.x has no replication outside its Kubernetes distribution, so the holder's store is copied whole:
the server is paused (SIGSTOP) while a gzipped tar of its folder is written beside it (15 ms for a few
hundred records; it grows with the store), which makes the copy what a crash would leave, and Chroma
recovers from a crash. The tar
goes to the snapshot bucket of the pool's S3 (on two machines where S3 replicates) under an identity that
reaches that bucket only (rma.replication). The newest few are kept.

Run as a module, it is the companion that takes one every interval beside the server:
`python -m rma.services.chroma_snapshots STORE_FOLDER STATE_FOLDER`; it reads where to from the state
folder's TARGET, never from its command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
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

if TYPE_CHECKING:
    import minio

ENDPOINT_VARIABLE = "MINIO_ENDPOINT"  # the seed's: where the pool's S3 is, host:port
PREFIX = "chromadb/"  # object names: PREFIX + milliseconds since the epoch + SUFFIX
SUFFIX = ".tar.gz"
KEEP = 3  # snapshots kept; older ones are removed after each new one
STATE = "snapshot.json"  # in the state folder: when the newest snapshot was copied off, for the heartbeat
TARGET = "snapshot-target.json"  # in the state folder, 0600: where snapshots go (Target)
ARCHIVE_ROOT = "chroma"  # the folder name inside the tar
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


def server_pid(store: Path) -> int | None:
    """The Chroma server serving `store` (`chroma run --path STORE`), run by this user."""
    wanted = str(store)
    for process in psutil.process_iter(["cmdline", "uids"]):
        argv = process.info["cmdline"] or []
        if "run" in argv and "--path" in argv and argv.index("--path") + 1 < len(argv) \
                and argv[argv.index("--path") + 1] == wanted and process.info["uids"].real == os.getuid():
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


def copy_off(target: Target, store: Path, state: Path, pid: int) -> float:
    """Take a snapshot, put it in the bucket, keep the newest KEEP; the moment it was taken."""
    s3 = target.client()
    archive = state / f".{ARCHIVE_ROOT}{SUFFIX}.part"
    taken = time.time()
    try:
        paused = take(store, pid, archive)
        if not s3.bucket_exists(SNAPSHOT_BUCKET):
            s3.make_bucket(SNAPSHOT_BUCKET)
        s3.fput_object(SNAPSHOT_BUCKET, f"{PREFIX}{int(taken * 1000)}{SUFFIX}", str(archive))
        size = archive.stat().st_size
    finally:
        archive.unlink(missing_ok=True)
    for old in _names(s3)[:-KEEP]:
        s3.remove_object(SNAPSHOT_BUCKET, old)
    (state / STATE).write_text(json.dumps({"at": taken, "bytes": size, "paused_s": round(paused, 4)}))
    return taken


def _names(s3: minio.Minio) -> list[str]:
    """The snapshots in the bucket, oldest first (their names are their times)."""
    if not s3.bucket_exists(SNAPSHOT_BUCKET):
        return []
    names = [o.object_name for o in s3.list_objects(SNAPSHOT_BUCKET, prefix=PREFIX) if o.object_name]
    return sorted((n for n in names if n.removeprefix(PREFIX).removesuffix(SUFFIX).isdigit()),
                  key=lambda n: int(n.removeprefix(PREFIX).removesuffix(SUFFIX)))


def restore(target: Target, store: Path, state: Path) -> float | None:
    """Fill an empty `store` from the newest snapshot; when it was taken, or None when there is none."""
    s3 = target.client()
    names = _names(s3)
    if not names:
        return None
    archive = state / f".{ARCHIVE_ROOT}{SUFFIX}.part"
    unpacked = state / f".{ARCHIVE_ROOT}.restoring"
    shutil.rmtree(unpacked, ignore_errors=True)
    try:
        s3.fget_object(SNAPSHOT_BUCKET, names[-1], str(archive))
        with tarfile.open(archive, mode="r:gz") as tar:
            tar.extractall(unpacked, filter="data")  # no absolute paths, links out or devices: a hostile tar fails
        size = archive.stat().st_size
        (unpacked / ARCHIVE_ROOT).rename(store)
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
    taken = int(names[-1].removeprefix(PREFIX).removesuffix(SUFFIX)) / 1000
    (state / STATE).write_text(json.dumps({"at": taken, "bytes": size, "restored": True}))
    return taken


def last_taken(state: Path) -> float | None:
    """When the newest snapshot this holder copied off (or restored from) was taken."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return float(json.loads((state / STATE).read_text())["at"])
    return None


def main(argv: list[str]) -> None:
    """Every interval, snapshot the server of STORE_FOLDER to the target in STATE_FOLDER; a failure is logged
    and tried again next time."""
    store, state = Path(argv[0]), Path(argv[1])
    while True:
        target = Target.load(state)
        time.sleep(target.interval_s)
        target = Target.load(state)
        pid = server_pid(store)
        if not target.endpoint or pid is None:
            print(f"chromadb snapshot: waiting for {'the server' if pid is None else 'the pool S3'}", file=sys.stderr,
                  flush=True)
            continue
        try:
            copy_off(target, store, state, pid)
        except Exception as error:  # noqa: BLE001 - S3 away, disk full: the next interval tries again
            print(f"chromadb snapshot failed: {type(error).__name__}: {str(error)[:300]}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
