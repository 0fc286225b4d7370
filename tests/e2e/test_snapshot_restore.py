"""The stores that cannot replicate (chromadb, neo4j on ArcadeDB) on a pool whose S3 does: the holder's machine
dies (`kill -9` of the worker and its engines), the coordinator waits the grace for it, then a survivor
restores the newest snapshot from the S3 copy that outlived the holder, with every record the snapshot had."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import wait_until
from snapshot_restore import STORES, Records, gap, lose_the_holder, snapshot_after, snapshot_pool
from store_failover import StorePool, patroni_missing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
if (reason := patroni_missing()) is not None:
    pytestmark.append(pytest.mark.skip(reason=reason))

WRITTEN = 200


def back(pool: StorePool, worker_id: str) -> dict[str, Any] | None:
    """`worker_id` as the coordinator lists it, once it is back and serves redis again (it has settled)."""
    workers = httpx.get(f"{pool.url}/api/admin/workers", timeout=2).json()["workers"]
    return next((w for w in workers if w["worker_id"] == worker_id and w["healthy"]
                 and w["services_status"].get("redis", {}).get("state") == "healthy"), None)


@pytest.mark.parametrize("store", STORES, ids=[store.service for store in STORES])
def test_a_dead_holder_is_waited_for_then_its_newest_snapshot_is_restored_on_the_survivor(
        tmp_path: Path, store: Records) -> None:
    service = store.service
    with snapshot_pool(tmp_path) as pool:
        store.write(pool, 0, WRITTEN)
        snapshot_after(pool, service, time.time())
        assert gap(pool, service)["snapshot_age_s"] < 10
        restore = lose_the_holder(pool, store, WRITTEN)
        assert f"waiting for its holder {restore.holder} to return" in restore.waited_reason
        assert restore.kept == WRITTEN
        assert len(store.records(pool)) == WRITTEN
        store.write(pool, WRITTEN, 10)  # the restored store takes writes, and snapshots them in its turn
        snapshot_after(pool, service, time.time())

        pool.machines[restore.holder].start(pool.url)  # the old holder, back late: clients stay with the restored one
        returned = wait_until(lambda: back(pool, restore.holder), 120, 0.5, what="the old holder back")
        assert service not in returned["assigned_services"]  # its copy stays on its disk, serving no one
        assert [r["worker_id"] for r in pool.discover(service)["workers"]] == [restore.survivor]
        assert len(store.records(pool)) == WRITTEN + 10
