"""A store without replication (chromadb, neo4j on ArcadeDB) losing its holder: the snapshot, the grace, the
restore on a survivor.

For tests and bench/: a `store_pool` whose coordinator snapshots often and waits a short grace, a client of
each store writing records through discovery (`Letters`, `Debts`), and `lose_the_holder`, which kills the
holder's machine and times what follows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import chromadb
import httpx
import neo4j
from chromadb.config import Settings

from procs import wait_until
from store_failover import StorePool, store_pool

SNAPSHOT_INTERVAL_S = 2.0
RESTORE_GRACE_S = 10.0
COLLECTION = "letters"
DIMENSIONS = 8


@contextlib.contextmanager
def snapshot_pool(folder: Path, machines: int = 2) -> Iterator[StorePool]:
    """A store pool with two S3 copies and a holder of each snapshotted store serving."""
    env = {"RMA_SNAPSHOT_INTERVAL_S": f"{SNAPSHOT_INTERVAL_S:g}", "RMA_RESTORE_GRACE_S": f"{RESTORE_GRACE_S:g}"}
    with store_pool(folder, machines, env) as pool:
        wait_until(lambda: len(pool.roles("minio")) == 2 and pool.primary("minio")
                   and all(holder(pool, store.service) for store in STORES), 180, 0.5,
                   what="two S3 copies and a holder of each snapshotted store")
        yield pool


def holder(pool: StorePool, service: str) -> str | None:
    """The worker discovery names for `service`, a store with one copy."""
    workers = list(pool.roles(service))
    return workers[0] if len(workers) == 1 else None


class Records:
    """A store's client: `adder` opens one connection and adds numbered records on it, `records` reads them."""

    service: str

    def adder(self, pool: StorePool) -> contextlib.AbstractContextManager[Callable[[int, int], None]]:
        raise NotImplementedError

    def records(self, pool: StorePool) -> set[int]:
        raise NotImplementedError

    def write(self, pool: StorePool, first: int, count: int) -> None:
        with self.adder(pool) as add:
            add(first, count)


class Letters(Records):
    """chromadb: a collection of letters' embeddings, one record per letter."""

    service = "chromadb"

    def _client(self, pool: StorePool) -> chromadb.HttpClient:  # type: ignore[valid-type]
        replica = pool.discover(self.service)["workers"][0]
        return chromadb.HttpClient(host=replica["host"], port=replica["port"],
                                   settings=Settings(anonymized_telemetry=False))

    @contextlib.contextmanager
    def adder(self, pool: StorePool) -> Iterator[Callable[[int, int], None]]:
        """add(first, count) on one connection to the holder discovery names now."""
        letters = self._client(pool).get_or_create_collection(COLLECTION)

        def add(first: int, count: int) -> None:
            ids = range(first, first + count)
            letters.add(ids=[f"letter-{i}" for i in ids], embeddings=[[float(i)] * DIMENSIONS for i in ids],
                        documents=[f"letter {i}: a council tax arrears letter" for i in ids])
        yield add

    def records(self, pool: StorePool) -> set[int]:
        """The numbers of the letters the holder serves (empty while none answers)."""
        try:
            ids = self._client(pool).get_collection(COLLECTION).get(include=[])["ids"]
            return {int(i.removeprefix("letter-")) for i in ids}
        except Exception:  # noqa: BLE001 - no holder, a holder starting, a store without the collection
            return set()


class Debts(Records):
    """neo4j: a graph of debts, one node per debt, over Bolt."""

    service = "neo4j"

    @contextlib.contextmanager
    def _session(self, pool: StorePool) -> Iterator[neo4j.Session]:
        url = urlsplit(pool.discover(self.service)["workers"][0]["connection_url"])
        with neo4j.GraphDatabase.driver(f"bolt://{url.hostname}:{url.port}", connection_timeout=2,
                                        auth=(unquote(url.username or ""), unquote(url.password or ""))) as driver, \
                driver.session() as session:
            yield session

    @contextlib.contextmanager
    def adder(self, pool: StorePool) -> Iterator[Callable[[int, int], None]]:
        """add(first, count) on one session with the holder discovery names now: one transaction per call."""
        with self._session(pool) as session:
            def add(first: int, count: int) -> None:
                session.run("UNWIND range($first, $last) AS i CREATE (:Debt {n: i})", first=first,
                            last=first + count - 1).consume()
            yield add

    def records(self, pool: StorePool) -> set[int]:
        """The numbers of the debts the holder serves (empty while none answers)."""
        try:
            with self._session(pool) as session:
                return {row["n"] for row in session.run("MATCH (d:Debt) RETURN d.n AS n")}
        except Exception:  # noqa: BLE001 - no holder, a holder starting
            return set()


STORES: tuple[Records, ...] = (Letters(), Debts())


def gap(pool: StorePool, service: str) -> dict[str, Any]:
    gaps = httpx.get(f"{pool.url}/api/admin/gaps", timeout=2).json()["gaps"]
    return next(g for g in gaps if g["service"] == service)


def snapshot_after(pool: StorePool, service: str, moment: float) -> None:
    """Wait until the gap report shows a snapshot of `service` taken after `moment` (unix time)."""
    def taken() -> bool:
        age = gap(pool, service)["snapshot_age_s"]
        return age is not None and time.time() - age > moment
    wait_until(taken, 10 * SNAPSHOT_INTERVAL_S, 0.2, what=f"a snapshot of what {service} was written")


@dataclass
class Restore:
    holder: str  # whose machine was killed
    survivor: str  # who restored the store
    waited_reason: str  # the gap report's reason during the grace
    waited_s: float  # from the kill to the grace's end (the heartbeat grace, then RESTORE_GRACE_S)
    restore_s: float  # from the grace's end to the restored store answering with the snapshot's records
    kept: int  # records served after the restore


def lose_the_holder(pool: StorePool, store: Records, written: int) -> Restore:
    """Kill the holder of `store`'s `written` records (all in a snapshot), wait out the grace, time the restore."""
    victim = holder(pool, store.service)
    assert victim is not None
    killed_at = pool.machines[victim].kill9()
    deadline = killed_at + RESTORE_GRACE_S + 120
    reason, grace_ended = "", None
    while time.monotonic() < deadline:
        said = gap(pool, store.service).get("reason", "")
        if "waiting for its holder" in said:
            reason = said
        elif reason and grace_ended is None:
            grace_ended = time.monotonic()
        if grace_ended is not None and holder(pool, store.service) not in (None, victim) \
                and len(store.records(pool)) >= written:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no restore of {written} {store.service} records on a survivor (the gaps said: "
                             f"{reason!r})")
    restored = time.monotonic()
    survivor = holder(pool, store.service)
    assert survivor is not None
    return Restore(victim, survivor, reason, grace_ended - killed_at, restored - grace_ended,
                   len(store.records(pool)))
