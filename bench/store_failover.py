"""A replicated store's failover under write load, with real workers, real engines and real kills.

postgres under Patroni on the pool's etcd (tests/store_failover.py builds the pool: a coordinator, storage
workers on 127.0.0.2, …, a client committing one row at a time through discovery). For two storage workers,
then three:

1. kill -9 the machine holding the primary (its worker and every engine process): seconds from the kill to
   the first commit acknowledged on the new primary, found through discovery (goal: <= 8 s), and acknowledged
   commits lost (goal: 0, synchronous commit);
   (with three, also until the spare worker is the new standby, cloned from the new primary);
2. replication lag under the load: bytes of WAL the standbys have not replayed, sampled on the primary;
3. the cost of safety: commits per second with a synchronous standby, against the same primary once its
   standby's machine is killed (no replica), side by side in one run.

4. redis under Sentinel, five runs: seconds from kill -9 of the primary's machine to the first write on the
   promoted copy (goal: <= 3 s), and writes lost of those a replica had acknowledged (WAIT 1).

5. S3 (SeaweedFS, filer.sync both ways), three runs, a client PUTting 1 KB objects through discovery: seconds
   from kill -9 of the primary's machine to the first PUT on the survivor (goal: <= 10 s); acknowledged objects
   the survivor lacks then (filer.sync is asynchronous: the window) and once the old primary is back (goal: 0);
   replication lag (a PUT acknowledged on the primary → listed on the replica); PUTs/s with the replica against
   the same primary once the replica's machine is killed.

Run (as root or not): .venv/bin/python bench/store_failover.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' pool harness

from procs import wait_until  # noqa: E402
from rma.placement.model import STORE_COPIES  # noqa: E402
from store_failover import (  # noqa: E402
    RedisWriter,
    S3Writer,
    StorePool,
    Writer,
    connect,
    lost,
    patroni_missing,
    redis_lost,
    redis_role,
    s3_missing,
    sentinels_ready,
    store_pool,
)

STEADY_S = 5.0
REDIS_RUNS = 5
S3_RUNS = 3


def rate(writer: Writer, start: float, end: float) -> float:
    """Commits per second acknowledged between two moments."""
    return sum(start < t <= end for t in writer.commit_times) / (end - start)


def lag_bytes(pool: StorePool) -> list[int]:
    """WAL bytes each standby has yet to replay, as the primary sees it."""
    with connect(pool.discover()) as conn:
        rows = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication")
        return [int(row[0] or 0) for row in rows]


def primary_dies(folder: Path, machines: int) -> dict[str, float]:
    with store_pool(folder, machines) as pool:
        primary = pool.settled(STORE_COPIES)
        spares = [name for name in pool.machines if name not in pool.roles()]
        writer = Writer(pool)
        writer.start()
        lags = []
        for _ in range(int(STEADY_S / 0.5)):
            time.sleep(0.5)
            lags.extend(lag_bytes(pool))
        killed_at = pool.machines[primary].kill9()
        wait_until(lambda: writer.commits_after(killed_at) > 50, 60, what="commits on the new primary")
        recreated = float("nan")
        if spares:  # a spare storage worker is given the missing copy, cloned from the new primary
            pool.settled(STORE_COPIES)
            recreated = time.monotonic() - killed_at
        writer.stop()
        resumed = writer.first_commit_after(killed_at, primary) or float("nan")
        return {"resumed_s": resumed, "recreated_s": recreated, "lost": len(lost(pool, writer.acknowledged)),
                "acknowledged": len(writer.acknowledged), "lag_p50": statistics.median(lags) if lags else 0,
                "lag_max": max(lags, default=0)}


def standby_dies(folder: Path) -> dict[str, float]:
    with store_pool(folder, 2) as pool:
        primary = pool.settled(2)
        [standby] = [name for name in pool.roles() if name != primary]
        writer = Writer(pool)
        writer.start()
        time.sleep(1.0)
        start = time.monotonic()
        time.sleep(STEADY_S)
        synchronous = rate(writer, start, time.monotonic())
        killed_at = pool.machines[standby].kill9()
        time.sleep(3.0)  # Patroni drops the dead standby from the synchronous set within a loop
        start = time.monotonic()
        time.sleep(STEADY_S)
        alone = rate(writer, start, time.monotonic())
        writer.stop()
        return {"stall_s": writer.longest_stall_after(killed_at), "with_standby": synchronous, "alone": alone,
                "lost": len(lost(pool, writer.acknowledged))}


def redis_primary_dies(folder: Path) -> dict[str, float]:
    with store_pool(folder, 2) as pool:
        wait_until(lambda: len(pool.roles("redis")) == STORE_COPIES and pool.primary("redis"), 120, 0.5,
                   what="two redis copies")
        primary = pool.primary("redis")
        assert primary is not None
        [replica] = [name for name in pool.roles("redis") if name != primary]
        wait_until(lambda: redis_role(pool, replica) == "slave" and sentinels_ready(pool), 60, 0.5,
                   what="Sentinels ready to fail over")
        writer = RedisWriter(pool)
        writer.start()
        time.sleep(STEADY_S)
        killed_at = pool.machines[primary].kill9()
        wait_until(lambda: writer.commits_after(killed_at) > 5, 60, what="writes on the promoted copy")
        writer.stop()
        return {"resumed_s": writer.first_commit_after(killed_at, primary) or float("nan"),
                "lost": len(redis_lost(pool, writer.acknowledged)), "acknowledged": len(writer.acknowledged)}


def s3_copies(pool: StorePool) -> tuple[str, str]:
    wait_until(lambda: len(pool.roles("minio")) == STORE_COPIES and pool.primary("minio"), 120, 0.5,
               what="two S3 copies")
    primary = pool.primary("minio")
    assert primary is not None
    [replica] = [name for name in pool.roles("minio") if name != primary]
    return primary, replica


def s3_lag(pool: StorePool, writer: S3Writer, replica: str, samples: int) -> list[float]:
    """Seconds from a PUT acknowledged on the primary to the object listed on the replica, sampled."""
    lags = []
    for _ in range(samples):
        time.sleep(0.5)
        newest, acked_at = writer.acknowledged[-1:], writer.commit_times[-1]
        wait_until(lambda newest=newest: not s3_missing(pool, newest, replica), 30, 0.05,
                   what="the object on the replica")
        lags.append(time.monotonic() - acked_at)
    return lags


def s3_primary_dies(folder: Path) -> dict[str, float]:
    with store_pool(folder, 2) as pool:
        primary, replica = s3_copies(pool)
        writer = S3Writer(pool)
        writer.start()
        lags = s3_lag(pool, writer, replica, int(STEADY_S / 0.5))
        killed_at = pool.machines[primary].kill9()
        wait_until(lambda: writer.commits_after(killed_at) > 20, 60, what="PUTs on the survivor")
        writer.stop()
        window = len(s3_missing(pool, writer.acknowledged))
        pool.machines[primary].start(pool.url)
        wait_until(lambda: pool.roles("minio").get(primary) == "replica", 120, 0.5, what="the old primary back")
        deadline = time.monotonic() + 30
        while (missing := len(s3_missing(pool, writer.acknowledged))) and time.monotonic() < deadline:
            time.sleep(0.5)
        return {"resumed_s": writer.first_commit_after(killed_at, primary) or float("nan"), "window": window,
                "lost": missing, "acknowledged": len(writer.acknowledged), "lag_p50": statistics.median(lags),
                "lag_max": max(lags)}


def s3_replica_dies(folder: Path) -> dict[str, float]:
    with store_pool(folder, 2) as pool:
        primary, replica = s3_copies(pool)
        writer = S3Writer(pool)
        writer.start()
        wait_until(lambda: len(writer.acknowledged) > 20 and not s3_missing(pool, writer.acknowledged[:20], replica),
                   60, 0.5, what="objects on the replica")
        start = time.monotonic()
        time.sleep(STEADY_S)
        replicated = rate(writer, start, time.monotonic())
        pool.machines[replica].kill9()
        time.sleep(1.0)
        start = time.monotonic()
        time.sleep(STEADY_S)
        alone = rate(writer, start, time.monotonic())
        writer.stop()
        return {"with_replica": replicated, "alone": alone, "lost": len(s3_missing(pool, writer.acknowledged))}


def main() -> None:
    reason = patroni_missing()
    if reason:
        sys.exit(reason)
    print("postgres under Patroni, a client committing through discovery (one row per commit)")
    print(f"{'machines':>8} {'kill -9 primary → write (s)':>28} {'2 copies again (s)':>19} {'lost':>5} "
          f"{'acked':>6} {'lag p50 (B)':>12} {'lag max (B)':>12}")
    for machines in (2, 3):
        with tempfile.TemporaryDirectory() as folder:
            got = primary_dies(Path(folder), machines)
        print(f"{machines:>8} {got['resumed_s']:>28.2f} {got['recreated_s']:>19.1f} {got['lost']:>5.0f} "
              f"{got['acknowledged']:>6.0f} {got['lag_p50']:>12.0f} {got['lag_max']:>12.0f}")
    runs = []
    for _ in range(REDIS_RUNS):
        with tempfile.TemporaryDirectory() as folder:
            runs.append(redis_primary_dies(Path(folder)))
    seconds = sorted(run["resumed_s"] for run in runs)
    print(f"redis under Sentinel (a client SETting through discovery, WAIT 1 for a replica's copy), {REDIS_RUNS} runs: "
          f"kill -9 primary → write {seconds[0]:.2f}–{seconds[-1]:.2f} s (median {statistics.median(seconds):.2f}), "
          f"lost {sum(run['lost'] for run in runs):.0f} of {sum(run['acknowledged'] for run in runs):.0f} "
          "acknowledged")
    s3_runs = []
    for _ in range(S3_RUNS):
        with tempfile.TemporaryDirectory() as folder:
            s3_runs.append(s3_primary_dies(Path(folder)))
    seconds = sorted(run["resumed_s"] for run in s3_runs)
    lag_p50, lag_max = statistics.median(run["lag_p50"] for run in s3_runs), max(run["lag_max"] for run in s3_runs)
    print(f"S3 on SeaweedFS (a client PUTting 1 KB objects through discovery, filer.sync both ways), {S3_RUNS} runs: "
          f"kill -9 primary → PUT {seconds[0]:.2f}–{seconds[-1]:.2f} s (median {statistics.median(seconds):.2f}); "
          f"of {sum(run['acknowledged'] for run in s3_runs):.0f} acknowledged, missing on the survivor "
          f"{sum(run['window'] for run in s3_runs):.0f}, lost once the old primary is back "
          f"{sum(run['lost'] for run in s3_runs):.0f}; lag p50 {lag_p50:.2f} s, max {lag_max:.2f} s")
    with tempfile.TemporaryDirectory() as folder:
        got = s3_replica_dies(Path(folder))
    print(f"S3 PUTs/s with a replica {got['with_replica']:.0f}, alone {got['alone']:.0f} "
          f"(replication costs {1 - got['with_replica'] / got['alone']:.0%}), lost {got['lost']:.0f}")
    with tempfile.TemporaryDirectory() as folder:
        got = standby_dies(Path(folder))
    print(f"kill -9 of the standby: longest stall {got['stall_s']:.2f} s, lost {got['lost']:.0f}")
    print(f"commits/s with a synchronous standby {got['with_standby']:.0f}, alone {got['alone']:.0f} "
          f"(safety costs {1 - got['with_standby'] / got['alone']:.0%} of the throughput)")


if __name__ == "__main__":
    main()
