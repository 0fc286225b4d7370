"""chromadb's snapshots and restore, with real workers, real engines and a real kill.

Chroma 1.x cannot replicate: its holder copies a snapshot to the pool's S3 (replicated by filer.sync) every
interval, and after the holder's machine dies the coordinator waits a grace, then a survivor restores the
newest snapshot. tests/snapshot_restore.py builds the pool (two storage workers, snapshots every 2 s, a
10 s grace). It prints:

1. the snapshot: its size for the store, and how long the server was paused to take it (from the holder's
   snapshot.json); a writer's median and longest wait for one record with snapshots, against the same
   holder with its snapshot companion stopped, side by side;
2. kill -9 of the holder's machine while the writer writes: seconds until the coordinator gives up waiting
   (the heartbeat grace and then RMA_RESTORE_GRACE_S), then seconds until the survivor serves the restored
   store; acknowledged records lost (those written after the newest snapshot: the window is the interval).

Run (as root or not): .venv/bin/python bench/chroma_restore.py
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
    client,
    holder,
    lose_the_holder,
    records,
    snapshot_after,
    snapshot_pool,
    write,
)
from store_failover import StorePool, patroni_missing  # noqa: E402

STORE_RECORDS = 20_000  # the store's size before the writer starts
BATCH = 500
STEADY_S = 12.0  # the writer alone, through several snapshots


class RecordWriter:
    """Adds one record per request to the holder discovery names, until stopped or the holder is gone."""

    def __init__(self, pool: StorePool, first: int) -> None:
        self.pool, self.next_id = pool, first
        self.acknowledged: list[int] = []
        self.waits: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        letters = client(self.pool).get_collection("letters")
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                letters.add(ids=[f"letter-{self.next_id}"], embeddings=[[float(self.next_id)] * 8],
                            documents=[f"letter {self.next_id}"])
            except Exception:  # noqa: BLE001 - the holder's machine is gone: nothing more is acknowledged
                return
            self.waits.append(time.monotonic() - began)
            self.acknowledged.append(self.next_id)
            self.next_id += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def companion_paused(pool: StorePool, worker_id: str) -> Iterator[None]:
    """No snapshots meanwhile: the holder's snapshot companion stopped (SIGSTOP), and let go on afterwards."""
    folder = str(pool.machines[worker_id].data_dir)
    [companion] = [p for p in psutil.process_iter(["cmdline"])
                   if "rma.services.chroma_snapshots" in (cmdline := " ".join(p.info["cmdline"] or ()))
                   and folder in cmdline]
    companion.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        companion.send_signal(signal.SIGCONT)


def snapshot_state(pool: StorePool, worker_id: str) -> dict[str, float]:
    [state] = pool.machines[worker_id].data_dir.glob("services/chromadb/snapshot.json")
    figures: dict[str, float] = json.loads(state.read_text())
    return figures


def main() -> None:
    reason = patroni_missing()
    if reason:
        sys.exit(reason)
    with tempfile.TemporaryDirectory() as folder, snapshot_pool(Path(folder)) as pool:
        for first in range(0, STORE_RECORDS, BATCH):
            write(pool, first, BATCH)
        snapshot_after(pool, time.time())
        victim = holder(pool)
        assert victim is not None
        writer = RecordWriter(pool, STORE_RECORDS)
        writer.start()
        with companion_paused(pool, victim):
            time.sleep(STEADY_S)
        alone = list(writer.waits)
        time.sleep(STEADY_S)
        steady = writer.waits[len(alone):]
        state = snapshot_state(pool, victim)
        restore = lose_the_holder(pool, STORE_RECORDS)
        writer.stop()
        held = records(pool)
        lost = [i for i in writer.acknowledged if f"letter-{i}" not in held]
    print(f"chromadb snapshots every {SNAPSHOT_INTERVAL_S:g} s of a store of {STORE_RECORDS:,} records "
          f"(8 dimensions, a short document each): {state['bytes'] / 1e6:.1f} MB, the server paused "
          f"{state['paused_s'] * 1000:.0f} ms per snapshot")
    print(f"a writer adding one record at a time, {STEADY_S:g} s each: with snapshots median "
          f"{statistics.median(steady) * 1000:.1f} ms, longest {max(steady) * 1000:.0f} ms ({len(steady)} records); "
          f"without (the companion stopped) median {statistics.median(alone) * 1000:.1f} ms, longest "
          f"{max(alone) * 1000:.0f} ms ({len(alone)} records)")
    print(f"kill -9 of the holder: the coordinator waited {restore.waited_s:.1f} s (heartbeat grace + "
          f"RMA_RESTORE_GRACE_S={RESTORE_GRACE_S:g}), then the survivor served the restored store in "
          f"{restore.restore_s:.1f} s with {restore.kept:,} records; acknowledged records lost "
          f"{len(lost)} of {len(writer.acknowledged)} written under load (written after the newest snapshot)")


if __name__ == "__main__":
    main()
