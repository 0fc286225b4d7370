"""The replicated stores across real storage workers (postgres under Patroni, redis under Sentinel, S3 with
SeaweedFS's filer.sync), with a client writing through discovery while the machine holding the primary or the
replica dies (`kill -9` of its worker and every engine it ran)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from procs import wait_until
from store_failover import (
    RedisWriter,
    S3Writer,
    StorePool,
    Writer,
    lost,
    patroni_missing,
    redis_lost,
    redis_role,
    rows_on,
    s3_missing,
    sentinels_ready,
    store_pool,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
if (reason := patroni_missing()) is not None:
    pytestmark.append(pytest.mark.skip(reason=reason))

WRITES_BEFORE_S = 3.0
RESUMED_WITHIN_S = 15.0  # the test's bound; bench/store_failover.py prints the figure


def kill_and_resume(pool: StorePool, writer: Writer, victim: str) -> float:
    """Kill `victim`'s machine under load; seconds until the next acknowledged commit."""
    time.sleep(WRITES_BEFORE_S)
    assert writer.acknowledged, "nothing was written before the kill"
    killed_at = pool.machines[victim].kill9()
    wait_until(lambda: writer.commits_after(killed_at) > 20, RESUMED_WITHIN_S + 10, what="commits after the kill")
    resumed = writer.first_commit_after(killed_at, victim)
    assert resumed is not None
    return resumed


def kill_under_load(pool: StorePool, writer: Writer, victim: str, watched_s: float) -> float:
    """Kill `victim`'s machine while `writer` writes, watch `watched_s` more, stop the writer; when it was killed."""
    writer.start()
    try:
        time.sleep(WRITES_BEFORE_S)
        killed_at = pool.machines[victim].kill9()
        time.sleep(watched_s)
    finally:
        writer.stop()
    return killed_at


def test_kill_9_of_the_primary_machine_loses_no_acknowledged_commit_and_it_returns_as_a_standby(
        tmp_path: Path) -> None:
    with store_pool(tmp_path, 2) as pool:
        primary = pool.settled(2)
        writer = Writer(pool)
        writer.start()
        try:
            resumed = kill_and_resume(pool, writer, primary)
            survivor = pool.primary()
            assert survivor is not None and survivor != primary
        finally:
            writer.stop()
        assert resumed <= RESUMED_WITHIN_S, f"writes resumed {resumed:.1f}s after the kill"
        assert lost(pool, writer.acknowledged) == []

        pool.machines[primary].start(pool.url)  # the old primary comes back: a standby, never a second primary
        wait_until(lambda: pool.roles().get(primary) == "replica", 120, 0.5, what="the old primary as a standby")
        assert pool.primary() == survivor
        wait_until(lambda: rows_on(pool, primary) >= len(writer.acknowledged), 60, 0.5, what="the standby caught up")


def test_kill_9_of_the_standby_machine_leaves_writes_going_to_the_primary(tmp_path: Path) -> None:
    with store_pool(tmp_path, 2) as pool:
        primary = pool.settled(2)
        [standby] = [name for name in pool.roles() if name != primary]
        writer = Writer(pool)
        killed_at = kill_under_load(pool, writer, standby, 10)
        assert pool.primary() == primary
        assert writer.first_commit_after(killed_at) is not None
        stall = writer.longest_stall_after(killed_at)
        assert stall <= 8, f"commits stalled {stall:.1f}s while the synchronous standby was dropped"
        assert lost(pool, writer.acknowledged) == []


def test_with_three_storage_workers_the_third_becomes_the_missing_standby_cloned_from_the_new_primary(
        tmp_path: Path) -> None:
    with store_pool(tmp_path, 3) as pool:
        primary = pool.settled(2)
        [spare] = [name for name in pool.machines if name not in pool.roles()]
        writer = Writer(pool)
        writer.start()
        try:
            kill_and_resume(pool, writer, primary)
            # Two copies again: the spare is given postgres and Patroni clones it from the new primary.
            wait_until(lambda: pool.roles().get(spare) == "replica", 120, 0.5, what="the spare as the new standby")
            survivor = pool.settled(2)
        finally:
            writer.stop()
        assert survivor != primary and set(pool.roles()) == set(pool.machines) - {primary}
        assert lost(pool, writer.acknowledged) == []
        wait_until(lambda: rows_on(pool, spare) >= len(writer.acknowledged), 60, 0.5, what="the new standby caught up")


def test_kill_9_of_the_redis_primary_machine_promotes_its_replica_and_it_returns_as_one(tmp_path: Path) -> None:
    with store_pool(tmp_path, 2) as pool:
        wait_until(lambda: len(pool.roles("redis")) == 2 and pool.primary("redis"), 120, 0.5,
                   what="two redis copies, one primary")
        primary = pool.primary("redis")
        assert primary is not None
        [replica] = [name for name in pool.roles("redis") if name != primary]
        wait_until(lambda: redis_role(pool, replica) == "slave", 30, 0.5, what="the second copy replicating")
        wait_until(lambda: sentinels_ready(pool), 30, 0.5, what="three Sentinels that can fail over to the replica")
        writer = RedisWriter(pool)
        writer.start()
        try:
            time.sleep(WRITES_BEFORE_S)
            assert writer.acknowledged, "no write reached the replica before the kill"
            killed_at = pool.machines[primary].kill9()
            wait_until(lambda: writer.commits_after(killed_at) > 5, RESUMED_WITHIN_S, what="writes after the kill")
            resumed = writer.first_commit_after(killed_at, primary)
        finally:
            writer.stop()
        assert resumed is not None and resumed <= RESUMED_WITHIN_S
        assert pool.primary("redis") == replica
        assert redis_lost(pool, writer.acknowledged) == []
        pool.machines[primary].start(pool.url)  # back with its old data: a replica of the promoted copy
        wait_until(lambda: pool.roles("redis").get(primary) == "replica" and redis_role(pool, primary) == "slave",
                   60, 0.5, what="the old primary as a replica")
        assert pool.primary("redis") == replica


def test_kill_9_of_the_redis_replica_machine_leaves_writes_going_to_the_primary(tmp_path: Path) -> None:
    with store_pool(tmp_path, 2) as pool:
        wait_until(lambda: len(pool.roles("redis")) == 2 and pool.primary("redis"), 120, 0.5,
                   what="two redis copies, one primary")
        primary = pool.primary("redis")
        [replica] = [name for name in pool.roles("redis") if name != primary]
        wait_until(lambda: redis_role(pool, replica) == "slave", 30, 0.5, what="the second copy replicating")
        writer = RedisWriter(pool)
        killed_at = kill_under_load(pool, writer, replica, 5)
        assert pool.primary("redis") == primary
        assert writer.longest_stall_after(killed_at) <= 2, "a write waits for a replica at most WAIT_MS"
        assert redis_lost(pool, writer.acknowledged) == []


SYNC_WINDOW_S = 2.0  # filer.sync copies within about a second: what the primary took this close to its death may wait


def two_s3_copies(pool: StorePool) -> tuple[str, str]:
    """Wait for two S3 copies with a primary; (primary, replica)."""
    wait_until(lambda: len(pool.roles("minio")) == 2 and pool.primary("minio"), 120, 0.5,
               what="two S3 copies, one primary")
    primary = pool.primary("minio")
    assert primary is not None
    [replica] = [name for name in pool.roles("minio") if name != primary]
    return primary, replica


def test_kill_9_of_the_s3_primary_machine_keeps_objects_and_writes_going_and_it_returns_as_a_replica(
        tmp_path: Path) -> None:
    with store_pool(tmp_path, 2) as pool:
        primary, replica = two_s3_copies(pool)
        writer = S3Writer(pool)
        writer.start()
        try:
            wait_until(lambda: len(writer.acknowledged) > 20
                       and not s3_missing(pool, writer.acknowledged[:20], replica), 60, 0.5,
                       what="objects copied to the replica")
            killed_at = pool.machines[primary].kill9()
            wait_until(lambda: writer.commits_after(killed_at) > 20, RESUMED_WITHIN_S + 10, what="PUTs after the kill")
            resumed = writer.first_commit_after(killed_at, primary)
        finally:
            writer.stop()
        assert resumed is not None and resumed <= RESUMED_WITHIN_S, f"PUTs resumed {resumed}s after the kill"
        assert pool.primary("minio") == replica
        acknowledged_by_then = [i for i, at in zip(writer.acknowledged, writer.commit_times, strict=True)
                                if at <= killed_at - SYNC_WINDOW_S]
        assert s3_missing(pool, acknowledged_by_then) == [], "an object acknowledged well before the kill is gone"

        pool.machines[primary].start(pool.url)  # back with its objects: a replica, and the window's objects return
        wait_until(lambda: pool.roles("minio").get(primary) == "replica", 120, 0.5, what="the old primary as a replica")
        assert pool.primary("minio") == replica
        wait_until(lambda: not s3_missing(pool, writer.acknowledged), 60, 0.5,
                   what="every acknowledged object on the primary")
        wait_until(lambda: not s3_missing(pool, writer.acknowledged, primary), 60, 0.5,
                   what="the returned copy caught up")


def test_kill_9_of_the_s3_replica_machine_leaves_writes_going_to_the_primary(tmp_path: Path) -> None:
    with store_pool(tmp_path, 2) as pool:
        primary, replica = two_s3_copies(pool)
        writer = S3Writer(pool)
        killed_at = kill_under_load(pool, writer, replica, 5)
        assert pool.primary("minio") == primary
        assert writer.longest_stall_after(killed_at) <= 2, "a PUT waited on the replica's death"
        assert s3_missing(pool, writer.acknowledged) == []
