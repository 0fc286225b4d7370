"""The five stores side by side: start time, idle memory, and throughput direct vs through discovery.

"Direct": each store's server started by its driver alone (prepare + launch, as the worker would),
reached at the address and secret the bench chose. "Through discovery": a real coordinator and a
real storage worker (`rma worker --worker-type storage`), the client using the connection URL
that `GET /api/services/discover/<store>` hands out. Both runs are in this one invocation.

    .venv/bin/python bench/stores.py [--seconds 3]

Per store: seconds from launch to healthy, RSS of its process tree once idle, and its workload:
redis SET+GET pairs/s, postgres INSERT commits/s, S3 MB/s (5 MB put + get), Bolt queries/s
(parameterised MATCH ... RETURN on one session). chromadb has no workload here (clients bring
their own embeddings; its own bench is bench/services.py).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import psutil

from rma.services import DRIVERS
from rma.services.base import Context, free_port

STORES = ("redis", "postgres", "minio", "neo4j", "chromadb")
S3_OBJECT = os.urandom(5 << 20)


def tree_rss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return float("nan")
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def rate(seconds: float, one: Callable[[], float]) -> float:
    """Repeat `one` (which returns the units it did) for `seconds`; units per second."""
    done, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        done += one()
    return done / (time.perf_counter() - started)


def redis_workload(url: str, seconds: float) -> float:
    import redis

    client = redis.Redis.from_url(url)

    def one() -> float:
        client.set("bench", "x" * 64)
        client.get("bench")
        return 1

    return rate(seconds, one)


def postgres_workload(url: str, seconds: float) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench (id serial PRIMARY KEY, note text)")

        def one() -> float:
            conn.execute("INSERT INTO bench (note) VALUES (%s)", ("a client note",))
            return 1

        return rate(seconds, one)


def s3_workload(url: str, seconds: float) -> float:
    """MB/s of 5 MB objects, each put then got back (content checked); `url` is s3://key:secret@host:port."""
    from minio import Minio

    parts = urlsplit(url)
    client = Minio(f"{parts.hostname}:{parts.port}", access_key=unquote(parts.username or ""),
                   secret_key=unquote(parts.password or ""), secure=False, region="us-east-1")
    if not client.bucket_exists("bench"):
        client.make_bucket("bench")

    def one() -> float:
        client.put_object("bench", "letter.bin", io.BytesIO(S3_OBJECT), len(S3_OBJECT))
        answer = client.get_object("bench", "letter.bin")
        try:
            assert answer.read() == S3_OBJECT
        finally:
            answer.close()
            answer.release_conn()
        return 2 * len(S3_OBJECT) / 2**20

    return rate(seconds, one)


def bolt_workload(url: str, seconds: float) -> float:
    """Parameterised MATCH ... RETURN round trips per second on one Bolt session, one row each."""
    from neo4j import GraphDatabase

    parts = urlsplit(url)
    auth = (unquote(parts.username or ""), unquote(parts.password or ""))
    query = "MATCH (c:BenchClient {id: $id}) RETURN c.name AS name"
    with GraphDatabase.driver(f"bolt://{parts.hostname}:{parts.port}", auth=auth) as driver, \
            driver.session() as session:
        session.run("UNWIND range(0, 999) AS i CREATE (:BenchClient {id: i, name: 'client-' + toString(i)})").consume()
        for i in range(200):  # the JIT and the page cache warm
            session.run(query, id=i).single(strict=True)
        done = 0

        def one() -> float:
            nonlocal done
            session.run(query, id=done % 1000).single(strict=True)
            done += 1
            return 1

        return rate(seconds, one)


WORKLOADS: dict[str, tuple[str, Callable[[str, float], float]]] = {
    "redis": ("SET+GET/s", redis_workload),
    "postgres": ("INSERT/s", postgres_workload),
    "minio": ("S3 MB/s", s3_workload),
    "neo4j": ("Bolt q/s", bolt_workload),
}


def direct_url(store: str, ctx: Context) -> str:
    """The URL a client builds by hand for a store the bench started itself."""
    from rma.coordinator.secrets import CONNECTION_URLS

    return CONNECTION_URLS[store](ctx.host, ctx.port, ctx.secret or "", ctx.engine)


def run_direct(store: str, folder: Path, seconds: float) -> dict[str, Any]:
    driver = DRIVERS[store]
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), folder / store, secret=secrets.token_urlsafe(24),
                  engine=next(e for e in driver.engines if _runnable(store, e)))
    started = time.monotonic()
    driver.prepare(ctx)
    launch = driver.launch(ctx)
    proc = subprocess.Popen(list(launch.argv), env={**os.environ, **launch.env}, cwd=launch.cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not asyncio.run(_until_healthy(lambda: driver.healthy(ctx), 120)):
            raise RuntimeError(f"{store} did not turn healthy")
        start_s = time.monotonic() - started
        time.sleep(2)
        rss = tree_rss_mb(proc.pid)
        label, workload = WORKLOADS.get(store, ("", None))  # type: ignore[arg-type]
        figure = workload(direct_url(store, ctx), seconds) if workload else float("nan")
        return {"engine": ctx.engine, "start_s": start_s, "rss_mb": rss, "label": label, "direct": figure}
    finally:
        stop_group(proc, signal.SIGTERM, 20)


def stop_group(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Signal the process's whole group, then KILL it if it has not exited within `timeout`."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _runnable(store: str, engine: str) -> bool:
    from rma.worker.engines import engines_by_service
    from rma.worker.probe import Probe

    return engine in engines_by_service(Probe.system(), {store: DRIVERS[store]}, os.environ).get(store, ())


async def _until_healthy(check: Callable[[], Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False


def run_pool(folder: Path, seconds: float) -> dict[str, float]:
    """Every store's workload through the connection URL discovery hands out."""
    port = free_port("127.0.0.1")
    url = f"http://127.0.0.1:{port}"
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "pool.log", "ab")  # noqa: SIM115 - the children write to it until the end
    procs = [subprocess.Popen([sys.executable, "-m", "rma", "coordinator", "--port", str(port), "--data-dir",
                               str(folder / "coordinator"), "--heartbeat-interval", "1"],
                              stdout=log, stderr=log, start_new_session=True)]
    try:
        _wait(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 30)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "rma", "worker", "--worker-type", "storage", "--coordinator-url", url,
             "--data-dir", str(folder / "worker"), "--worker-id", "bench-store"],
            stdout=log, stderr=log, start_new_session=True))
        found = {}
        for store in WORKLOADS:
            answer = _wait(lambda s=store: _discovered(url, s), 180)
            found[store] = WORKLOADS[store][1](answer, seconds)
        return found
    finally:
        for proc in reversed(procs):
            stop_group(proc, signal.SIGTERM, 30)
        log.close()


def _discovered(url: str, store: str) -> str | None:
    answer = httpx.get(f"{url}/api/services/discover/{store}", timeout=2)
    if answer.status_code != 200:
        return None
    connection: str = answer.json()["workers"][0]["connection_url"]
    return connection


def _wait(check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("timed out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="each workload's length")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rma-stores-bench-"))
    folder.chmod(0o711)  # a root worker runs the stores as unprivileged accounts, which must enter it
    try:
        direct = {store: run_direct(store, folder / "direct", args.seconds) for store in STORES}
        pooled = run_pool(folder / "pool", args.seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{'store':<10} {'engine':<14} {'start s':>8} {'idle RSS MB':>12} {'workload':>11} {'direct':>9} "
          f"{'discovery':>10} {'ratio':>6}")
    for store, row in direct.items():
        via = pooled.get(store, float("nan"))
        ratio = via / row["direct"] if row["direct"] == row["direct"] and row["direct"] else float("nan")
        print(f"{store:<10} {row['engine']:<14} {row['start_s']:>8.1f} {row['rss_mb']:>12.0f} {row['label']:>11} "
              f"{row['direct']:>9.1f} {via:>10.1f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
