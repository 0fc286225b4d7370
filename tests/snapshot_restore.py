"""chromadb, the store without replication, losing its holder: the snapshot, the grace, the restore on a survivor.

For tests and bench/: a `store_pool` whose coordinator snapshots often and waits a short grace, a client
writing records through discovery, and `lose_the_holder`, which kills the holder's machine and times what
follows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import httpx
from chromadb.config import Settings

from procs import wait_until
from store_failover import StorePool, store_pool

SNAPSHOT_INTERVAL_S = 2.0
RESTORE_GRACE_S = 10.0
COLLECTION = "letters"
DIMENSIONS = 8


@contextlib.contextmanager
def snapshot_pool(folder: Path, machines: int = 2) -> Iterator[StorePool]:
    """A store pool with chromadb's holder and two S3 copies serving."""
    env = {"RMA_SNAPSHOT_INTERVAL_S": f"{SNAPSHOT_INTERVAL_S:g}", "RMA_RESTORE_GRACE_S": f"{RESTORE_GRACE_S:g}"}
    with store_pool(folder, machines, env) as pool:
        wait_until(lambda: len(pool.roles("minio")) == 2 and pool.primary("minio") and holder(pool), 180, 0.5,
                   what="two S3 copies and chromadb's holder")
        yield pool


def holder(pool: StorePool) -> str | None:
    """The worker discovery names for chromadb."""
    workers = pool.roles("chromadb")
    return next(iter(workers), None) if len(workers) == 1 else pool.primary("chromadb")


def client(pool: StorePool) -> chromadb.HttpClient:  # type: ignore[valid-type]
    replica = pool.discover("chromadb")["workers"][0]
    return chromadb.HttpClient(host=replica["host"], port=replica["port"],
                               settings=Settings(anonymized_telemetry=False))


def write(pool: StorePool, first: int, count: int) -> None:
    letters = client(pool).get_or_create_collection(COLLECTION)
    ids = range(first, first + count)
    letters.add(ids=[f"letter-{i}" for i in ids], embeddings=[[float(i)] * DIMENSIONS for i in ids],
                documents=[f"letter {i}: a council tax arrears letter" for i in ids])


def records(pool: StorePool) -> set[str]:
    """The ids chromadb's holder serves (empty while none answers)."""
    try:
        return set(client(pool).get_collection(COLLECTION).get(include=[])["ids"])
    except Exception:  # noqa: BLE001 - no holder, a holder starting, a store without the collection
        return set()


def gap(pool: StorePool, service: str = "chromadb") -> dict[str, Any]:
    gaps = httpx.get(f"{pool.url}/api/admin/gaps", timeout=2).json()["gaps"]
    return next(g for g in gaps if g["service"] == service)


def snapshot_after(pool: StorePool, moment: float) -> None:
    """Wait until the gap report shows a snapshot taken after `moment` (unix time)."""
    def taken() -> bool:
        age = gap(pool)["snapshot_age_s"]
        return age is not None and time.time() - age > moment
    wait_until(taken, 10 * SNAPSHOT_INTERVAL_S, 0.2, what="a snapshot of what was written")


@dataclass
class Restore:
    holder: str  # whose machine was killed
    survivor: str  # who restored the store
    waited_reason: str  # the gap report's reason during the grace
    waited_s: float  # from the kill to the grace's end (the heartbeat grace, then RESTORE_GRACE_S)
    restore_s: float  # from the grace's end to the restored store answering with the snapshot's records
    kept: int  # records served after the restore


def lose_the_holder(pool: StorePool, written: int) -> Restore:
    """Kill the holder of `written` records (all in a snapshot), wait out the grace, time the restore."""
    victim = holder(pool)
    assert victim is not None
    killed_at = pool.machines[victim].kill9()
    deadline = killed_at + RESTORE_GRACE_S + 120
    reason, grace_ended = "", None
    while time.monotonic() < deadline:
        said = gap(pool).get("reason", "")
        if "waiting for its holder" in said:
            reason = said
        elif reason and grace_ended is None:
            grace_ended = time.monotonic()
        if grace_ended is not None and holder(pool) not in (None, victim) and len(records(pool)) >= written:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no restore of {written} records on a survivor (the gaps said: {reason!r})")
    restored = time.monotonic()
    survivor = holder(pool)
    assert survivor is not None
    return Restore(victim, survivor, reason, grace_ended - killed_at, restored - grace_ended, len(records(pool)))
