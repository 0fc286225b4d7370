"""A replicated store under write load while the machine holding its primary dies, for tests and bench/.

A pool on a real etcd: one coordinator and storage workers on their own loopback addresses (127.0.0.2, …),
each a real `rma worker`. A `Writer` commits rows continuously through discovery: it asks the coordinator
where postgres's primary is, commits there, and asks again after a failure, as an application would;
`RedisWriter` and `S3Writer` do the same with redis keys and S3 objects. A machine's death is `kill -9` of
its worker and every engine process it started, Patroni's postmaster too.
"""

from __future__ import annotations

import contextlib
import enum
import io
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import httpx
import minio
import psutil
import psycopg
import redis
import urllib3
from minio.error import MinioException

from etcd_cluster import EtcdCluster, etcd_cluster
from procs import RmaProcess, start_coordinator, wait_until
from rma.replication import SENTINEL_MASTER, SENTINEL_PORT
from rma.services.base import find_binary
from rma.services.redis import SENTINEL_FILE

INTERVAL = 1.0
CONNECT_TIMEOUT_S = 2
WAIT_MS = 200  # how long a redis write waits for a replica to have it (a lone primary: every write, in full)
BUCKET = "letters"
LETTER = "Dear Ms Patel, £412.50 owed".encode() * 40  # about 1 KB


def patroni_missing() -> str | None:
    """Why a replicated postgres cannot run here; None when it can."""
    if shutil.which("etcd") is None:
        return "etcd is not installed (make test installs Debian's etcd-server)"
    if find_binary("patroni") is None:
        return "patroni is not installed (make test installs Debian's patroni)"
    return None


@dataclass
class Machine:
    """A storage worker on its own loopback address, and what kills it as a pulled plug would."""

    name: str
    host: str
    data_dir: Path
    log_path: Path
    process: RmaProcess | None = None

    def start(self, coordinator_url: str) -> None:
        env = {"WORKER_TYPE": "storage", "COORDINATOR_URL": coordinator_url, "WORKER_ID": self.name,
               "DATA_DIR": str(self.data_dir), "ADVERTISE_HOST": self.host}
        self.process = RmaProcess(["worker"], self.log_path, env).start()

    def kill9(self) -> float:
        """The worker and every process that runs in its data dir (a postmaster Patroni detached), found first and
        then killed at once; the monotonic time by which all were sent SIGKILL."""
        assert self.process is not None
        victims = [psutil.Process(self.process.pid)]
        with contextlib.suppress(psutil.Error):
            victims += victims[0].children(recursive=True)
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(self.data_dir) in " ".join(proc.info["cmdline"] or ()):
                    victims += [proc, *proc.children()]  # a postmaster and its backends
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        self.process.kill9()
        return killed_at

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15)


@dataclass
class StorePool:
    folder: Path  # the coordinator's data is under folder/coordinator
    url: str
    etcd: EtcdCluster
    machines: dict[str, Machine]
    coordinator: RmaProcess

    def discover(self, service: str = "postgres") -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/api/services/discover/{service}", timeout=2).json()
        return answer

    def roles(self, service: str = "postgres") -> dict[str, str]:
        """Each serving replica of a store → primary or replica, as discovery says."""
        try:
            return {r["worker_id"]: r.get("role", "") for r in self.discover(service).get("workers", [])}
        except (httpx.HTTPError, ValueError):
            return {}

    def primary(self, service: str = "postgres") -> str | None:
        return next((w for w, role in self.roles(service).items() if role == "primary"), None)

    def settled(self, copies: int) -> str:
        """Wait until `copies` replicas serve, one of them the primary, and the standbys stream from it."""
        def ready() -> str | None:
            roles = self.roles()
            primary = self.primary()
            if primary is None or len(roles) < copies:
                return None
            try:
                with connect(self.discover()) as conn:
                    streaming = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                    row = streaming.fetchone()
            except psycopg.Error:
                return None  # the primary's server is starting, or discovery names one that is no more
            return primary if row is not None and row[0] >= copies - 1 else None
        found: str = wait_until(ready, 180, 0.5, what=f"{copies} postgres copies with a primary")
        return found


def connect(discovered: dict[str, Any]) -> psycopg.Connection[Any]:
    """A connection to the replica discovery recommends (a replicated store's primary)."""
    return psycopg.connect(_recommended(discovered)["connection_url"], connect_timeout=CONNECT_TIMEOUT_S,
                           autocommit=True)


def _recommended(discovered: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in discovered["workers"] if r["worker_id"] == discovered["recommended"])


@dataclass
class Writer:
    """Commits one row at a time to postgres through discovery, and keeps what was acknowledged and when.

    The loop is every writer's: find the primary through discovery, write there, and after a failure ask again.
    A subclass says how to reach its store (`_open`) and write one item (`_write`)."""

    pool: StorePool
    acknowledged: list[int] = field(default_factory=list)
    commit_times: list[float] = field(default_factory=list)  # monotonic, one per item written
    written_on: list[str] = field(default_factory=list)  # the worker each of those went to
    failures: int = 0
    stopped_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    service: ClassVar[str] = "postgres"
    errors: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)

    def start(self) -> None:
        with connect(self.pool.discover()) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS letters (id bigint PRIMARY KEY, body text)")
        self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open(self, discovered: dict[str, Any]) -> Any:
        return connect(discovered)

    def _write(self, client: Any, item: int) -> Written:
        try:
            client.execute("INSERT INTO letters VALUES (%s, %s)", (item, "Dear Ms Patel, £412.50 owed"))
        except psycopg.errors.UniqueViolation:
            return Written.UNCOUNTED  # committed, but its acknowledgement died with the old primary
        return Written.ACKNOWLEDGED

    def _run(self) -> None:
        item, client, target = 1, None, ""
        while not self._stop.is_set():
            try:
                if client is None:
                    discovered = self.pool.discover(self.service)
                    client, target = self._open(discovered), discovered["recommended"]
                written = self._write(client, item)
            except (*self.errors, httpx.HTTPError, OSError, ValueError, KeyError, StopIteration):
                self.failures += 1
                _close(client)
                client = None
                time.sleep(0.05)
                continue
            if written is Written.ACKNOWLEDGED:
                self.acknowledged.append(item)
            if written is not Written.UNCOUNTED:
                self.commit_times.append(time.monotonic())
                self.written_on.append(target)
            item += 1
        _close(client)

    def stop(self) -> None:
        self.stopped_at = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def commits_after(self, moment: float) -> int:
        return sum(t > moment for t in self.commit_times)

    def first_commit_after(self, moment: float, elsewhere_than: str | None = None) -> float | None:
        """Seconds from `moment` to the first commit acknowledged after it (by another worker than
        `elsewhere_than`: one the killed machine answered just before it died does not count)."""
        later = [t for t, on in zip(self.commit_times, self.written_on, strict=True)
                 if t > moment and on != elsewhere_than]
        return later[0] - moment if later else None

    def longest_stall_after(self, moment: float) -> float:
        """The longest time without a write between `moment` and the writer's stop."""
        assert self.stopped_at is not None, "stop the writer first"
        times = [moment, *(t for t in self.commit_times if t > moment), self.stopped_at]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


class Written(enum.Enum):
    """What became of one write."""

    ACKNOWLEDGED = "acknowledged"  # durable as the store promises it
    WRITTEN = "written"  # taken by the primary only (redis before a replica has it)
    UNCOUNTED = "uncounted"  # taken, but the writer never heard so: neither timed nor counted


def _close(client: Any) -> None:
    """Close a postgres connection (redis's and S3's clients hold nothing to close)."""
    if isinstance(client, psycopg.Connection):
        with contextlib.suppress(psycopg.Error):
            client.close()


class RedisWriter(Writer):
    """SETs one key at a time through discovery; a write counts as acknowledged once `WAIT` says a replica has
    it (the durability redis offers), and as written (`commit_times`) once the primary took it."""

    service = "redis"
    errors = (redis.RedisError,)

    def start(self) -> None:
        self._start()

    def _open(self, discovered: dict[str, Any]) -> redis.Redis:
        return redis_client(discovered)

    def _write(self, client: Any, item: int) -> Written:
        client.set(f"letter:{item}", "Dear Ms Patel, £412.50 owed")
        return Written.ACKNOWLEDGED if client.wait(1, WAIT_MS) >= 1 else Written.WRITTEN


class S3Writer(Writer):
    """PUTs one object at a time through discovery; an object counts as acknowledged once its PUT returned 200."""

    service = "minio"
    errors = (MinioException, urllib3.exceptions.HTTPError)

    def start(self) -> None:
        s3_client(self.pool.discover("minio")).make_bucket(BUCKET)
        self._start()

    def _open(self, discovered: dict[str, Any]) -> minio.Minio:
        return s3_client(discovered)

    def _write(self, client: Any, item: int) -> Written:
        client.put_object(BUCKET, f"letter-{item}", io.BytesIO(LETTER), len(LETTER))
        return Written.ACKNOWLEDGED


def s3_client(discovered: dict[str, Any], worker_id: str | None = None) -> minio.Minio:
    """An S3 client of the copy discovery recommends (the primary), or of `worker_id`'s; it gives up after a second."""
    replica = _recommended(discovered) if worker_id is None else next(
        r for r in discovered["workers"] if r["worker_id"] == worker_id)
    url = urlsplit(replica["connection_url"])
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=2), retries=False)
    return minio.Minio(f"{url.hostname}:{url.port}", unquote(url.username or ""), unquote(url.password or ""),
                       secure=False, region="us-east-1", http_client=http)


def s3_missing(pool: StorePool, acknowledged: list[int], worker_id: str | None = None) -> list[int]:
    """Acknowledged objects the primary (or `worker_id`'s copy) does not have."""
    try:
        client = s3_client(pool.discover("minio"), worker_id)
        held = {obj.object_name for obj in client.list_objects(BUCKET)}
    except (MinioException, urllib3.exceptions.HTTPError, StopIteration):
        return acknowledged
    return [i for i in acknowledged if f"letter-{i}" not in held]


def redis_client(discovered: dict[str, Any]) -> redis.Redis:
    return redis.Redis.from_url(_recommended(discovered)["connection_url"], socket_timeout=1, socket_connect_timeout=1)


def redis_lost(pool: StorePool, acknowledged: list[int]) -> list[int]:
    """Acknowledged keys the primary discovery names now does not have."""
    client = redis_client(pool.discover("redis"))
    held = client.mget([f"letter:{i}" for i in acknowledged]) if acknowledged else []
    return [i for i, value in zip(acknowledged, held, strict=True) if value is None]


def redis_role(pool: StorePool, worker_id: str) -> str:
    """What a copy's own server says it is (`INFO replication`): master, or slave once its link to the master is
    up (synced); "" before."""
    replica = next(r for r in pool.discover("redis")["workers"] if r["worker_id"] == worker_id)
    try:
        info = redis.Redis.from_url(replica["connection_url"], socket_timeout=1).info("replication")
    except redis.RedisError:
        return ""
    if info.get("role") == "slave" and info.get("master_link_status") != "up":
        return ""
    return str(info.get("role", ""))


def sentinels_ready(pool: StorePool) -> bool:
    """Whether every Sentinel (beside each copy, and the coordinator's) can fail over to a replica: it knows
    enough others (`SENTINEL CKQUORUM`) and knows the replica, which it learns from the primary's INFO only
    every 10 s."""
    copies = pool.discover("redis")["workers"]
    conf = (pool.folder / "coordinator" / "sentinel" / SENTINEL_FILE).read_text()
    coordinator = int(next(line.split()[1] for line in conf.splitlines() if line.startswith("port ")))
    for host, port in [(c["host"], SENTINEL_PORT) for c in copies] + [("127.0.0.1", coordinator)]:
        sentinel = redis.Redis(host=host, port=port, password=copies[0]["secret"], socket_timeout=1)
        try:
            if not (sentinel.execute_command("SENTINEL", "CKQUORUM", SENTINEL_MASTER)
                    and sentinel.execute_command("SENTINEL", "REPLICAS", SENTINEL_MASTER)):
                return False
        except redis.RedisError:
            return False
    return True


def lost(pool: StorePool, acknowledged: list[int]) -> list[int]:
    """Acknowledged ids that the primary discovery names now does not have."""
    with connect(pool.discover()) as conn:
        held = {row[0] for row in conn.execute("SELECT id FROM letters")}
    return [i for i in acknowledged if i not in held]


def rows_on(pool: StorePool, worker_id: str) -> int:
    """The row count on one replica (a standby answers reads)."""
    replica = next(r for r in pool.discover()["workers"] if r["worker_id"] == worker_id)
    try:
        with psycopg.connect(replica["connection_url"], connect_timeout=CONNECT_TIMEOUT_S) as conn:
            row = conn.execute("SELECT count(*) FROM letters").fetchone()
    except psycopg.Error:
        return 0  # its server restarts (after a rewind) or it has not replayed the table yet
    return int(row[0]) if row else 0


@contextlib.contextmanager
def store_pool(folder: Path, machines: int, coordinator_env: dict[str, str] | None = None) -> Iterator[StorePool]:
    """etcd, a coordinator on it (with `coordinator_env` besides the store) and `machines` storage workers
    (127.0.0.2, …); everything stopped afterwards.

    Data dirs live where the `postgres` account a root worker runs the server as can reach them."""
    root = Path(tempfile.mkdtemp(prefix="rma-failover-"))
    root.chmod(0o711)
    started: list[Machine] = []
    try:
        with etcd_cluster(folder / "etcd", 1) as cluster:
            coordinator, url = start_coordinator(folder, None, INTERVAL,
                                                 {"RMA_STORE_URL": cluster.url, **(coordinator_env or {})})
            try:
                for index in range(machines):
                    name = f"s{index + 1}"
                    machine = Machine(name, f"127.0.0.{index + 2}", root / name, folder / f"{name}.log")
                    machine.start(url)
                    started.append(machine)
                yield StorePool(folder, url, cluster, {m.name: m for m in started}, coordinator)
            finally:
                for machine in started:
                    machine.stop()
                coordinator.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
