"""The stores that cannot replicate (chromadb, neo4j on ArcadeDB): snapshots and restore, with real workers,
real engines and a real kill.

Their holder copies a snapshot to the pool's S3 (replicated by filer.sync) every interval, and after the
holder's machine dies the coordinator waits a grace, then a survivor restores the newest snapshot.
tests/snapshot_restore.py builds the pool (two storage workers, snapshots every 2 s, a 10 s grace). For each
store it prints:

1. the snapshot: its size for the store, and how long the server was paused to take it (from the holder's
   snapshot.json); a writer's records and median wait with snapshots, against the same holder with its
   snapshot companion stopped, side by side;
2. kill -9 of the holder's machine while the writer writes: seconds until the coordinator gives up waiting
   (the heartbeat grace and then RMA_RESTORE_GRACE_S), then seconds until the survivor serves the restored
   store; acknowledged records lost (those written after the newest snapshot: the window is the interval).

Run (as root or not): .venv/bin/python bench/store_snapshots.py
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' pool harness

from snapshot_restore import (  # noqa: E402
    RESTORE_GRACE_S,
    SNAPSHOT_INTERVAL_S,
    STORES,
    Records,
    holder,
    lose_the_holder,
    snapshot_after,
    snapshot_pool,
)
from store_failover import StorePool, patroni_missing  # noqa: E402

STORE_RECORDS = 20_000  # the store's size before the writer starts
BATCH = 500
STEADY_S = 12.0  # the writer alone, through several snapshots


class RecordWriter:
    """Adds one record per request to the holder discovery names, until stopped or the holder is gone."""

    def __init__(self, pool: StorePool, store: Records, first: int) -> None:
        self.pool, self.store, self.next_id = pool, store, first
        self.acknowledged: list[int] = []
        self.waits: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception), self.store.adder(self.pool) as add:
            while not self._stop.is_set():
                began = time.monotonic()
                add(self.next_id, 1)  # raises once the holder's machine is gone: nothing more is acknowledged
                self.waits.append(time.monotonic() - began)
                self.acknowledged.append(self.next_id)
                self.next_id += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def companion_paused(pool: StorePool, worker_id: str, service: str) -> Iterator[None]:
    """No snapshots meanwhile: the holder's snapshot companion stopped (SIGSTOP), and let go on afterwards."""
    folder = str(pool.machines[worker_id].data_dir)
    [companion] = [p for p in psutil.process_iter(["cmdline"]) if (argv := p.info["cmdline"] or [])[2:4]
                   == ["rma.services.snapshots", service] and folder in " ".join(argv)]
    companion.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        companion.send_signal(signal.SIGCONT)


def snapshot_state(pool: StorePool, worker_id: str, service: str) -> dict[str, float]:
    [state] = pool.machines[worker_id].data_dir.glob(f"services/{service}/snapshot.json")
    figures: dict[str, float] = json.loads(state.read_text())
    return figures


def measure(store: Records) -> None:
    service = store.service
    with tempfile.TemporaryDirectory() as folder, snapshot_pool(Path(folder)) as pool:
        with store.adder(pool) as add:
            for first in range(0, STORE_RECORDS, BATCH):
                add(first, BATCH)
        snapshot_after(pool, service, time.time())
        victim = holder(pool, service)
        assert victim is not None
        writer = RecordWriter(pool, store, STORE_RECORDS)
        writer.start()
        with companion_paused(pool, victim, service):
            time.sleep(STEADY_S)
        alone = list(writer.waits)
        time.sleep(STEADY_S)
        steady = writer.waits[len(alone):]
        state = snapshot_state(pool, victim, service)
        restore = lose_the_holder(pool, store, STORE_RECORDS)
        writer.stop()
        held = store.records(pool)
        lost = [i for i in writer.acknowledged if i not in held]
    print(f"{service}: snapshots every {SNAPSHOT_INTERVAL_S:g} s of a store of {STORE_RECORDS:,} records: "
          f"{state['bytes'] / 1e6:.1f} MB, the server paused {state['paused_s'] * 1000:.0f} ms per snapshot")
    print(f"  a writer adding one record at a time, {STEADY_S:g} s each: with snapshots {len(steady)} records, "
          f"median {statistics.median(steady) * 1000:.1f} ms, longest {max(steady) * 1000:.0f} ms; without (the "
          f"companion stopped) {len(alone)} records, median {statistics.median(alone) * 1000:.1f} ms, longest "
          f"{max(alone) * 1000:.0f} ms")
    print(f"  kill -9 of the holder: the coordinator waited {restore.waited_s:.1f} s (heartbeat grace + "
          f"RMA_RESTORE_GRACE_S={RESTORE_GRACE_S:g}), then the survivor served the restored store in "
          f"{restore.restore_s:.1f} s with {restore.kept:,} records; acknowledged records lost "
          f"{len(lost)} of {len(writer.acknowledged)} written under load (written after the newest snapshot)")


def main() -> None:
    reason = patroni_missing()
    if reason:
        sys.exit(reason)
    for store in STORES:
        measure(store)


if __name__ == "__main__":
    main()
