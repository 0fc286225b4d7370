"""What a service process gets of the worker's environment: the platform's few variables and what its
driver passes, never the rest (the join token, cloud keys, whatever else the volunteer's shell holds)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from etcd_cluster import etcd_cluster
from etcd_cluster import skip_reason as etcd_skip_reason
from procs import RmaProcess, start_coordinator, wait_until
from rma.services import DRIVERS
from rma.services.base import Context, Launch, cpu_threads
from rma.worker.config import WorkerConfig, service_env
from rma.worker.supervisor import Placement

JOIN, ADMIN, API_KEYS = "join-t0ken-of-the-test", "admin-t0ken-of-the-test", "client-key-of-the-test"
# In the volunteer's shell, and none of any service's business.
STRAY = {"AWS_SECRET_ACCESS_KEY": "aws-s3cret-of-the-test", "MY_SECRET": "my-s3cret-of-the-test"}
WORKER_ENV = {"RMA_JOIN_TOKEN": JOIN, "RMA_ADMIN_TOKEN": ADMIN, "RMA_API_KEYS": API_KEYS, "CUDA_VISIBLE_DEVICES": "0",
              **STRAY}
PLATFORM = {"PATH": "/usr/bin:/bin", "HOME": "/home/volunteer", "LC_ALL": "C.UTF-8", **WORKER_ENV}


def test_a_store_gets_the_platform_and_the_stores_addresses_only(tmp_path: Path) -> None:
    ctx = Context("127.0.0.1", 6379, tmp_path, env={**WORKER_ENV, "REDIS_HOST": "10.0.0.7", "MODEL_NAME": "m"},
                  secret="s")
    env = DRIVERS["redis"].environment(ctx, Launch(("redis-server",)), PLATFORM)
    assert env == {"PATH": "/usr/bin:/bin", "HOME": "/home/volunteer", "LC_ALL": "C.UTF-8", "REDIS_HOST": "10.0.0.7"}


def test_each_router_gets_its_own_settings_and_a_replica_its_tokens(tmp_path: Path) -> None:
    ctx = Context("127.0.0.1", 8787, tmp_path, env={**WORKER_ENV, "RMA_RATE_LIMIT": "5"})

    def passed(name: str) -> set[str]:
        driver = DRIVERS[name]
        return set(driver.environment(ctx, driver.launch(ctx), PLATFORM)) - {"PATH", "HOME", "LC_ALL"}

    assert passed("edge-proxy") == {"RMA_ADMIN_TOKEN", "RMA_API_KEYS", "RMA_RATE_LIMIT"}
    assert passed("load-balancer") == {"RMA_ADMIN_TOKEN"}
    # The replica guards its own /service with the edge's gateway settings.
    assert passed("coordinator") == {"RMA_JOIN_TOKEN", "RMA_ADMIN_TOKEN", "RMA_API_KEYS", "RMA_RATE_LIMIT"}


def test_the_launchs_own_variables_win(tmp_path: Path) -> None:
    ctx = Context("127.0.0.1", 8102, tmp_path, env={"OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "1"})
    env = DRIVERS["rag-embeddings"].environment(ctx, Launch(("x",), {"OMP_NUM_THREADS": "2"}), {})
    assert env == {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "1"}


def test_the_worker_collects_what_its_services_read_or_need_and_nothing_else(tmp_path: Path) -> None:
    env = service_env({**PLATFORM, "OMP_NUM_THREADS": "3", "MODEL_NAME": "m"}, "join-from-the-flag")
    assert env == {"RMA_JOIN_TOKEN": "join-from-the-flag", "RMA_ADMIN_TOKEN": ADMIN, "RMA_API_KEYS": API_KEYS,
                   "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "3", "MODEL_NAME": "m"}
    assert cpu_threads(Context("127.0.0.1", 1, tmp_path, env=env)) == 3, "the volunteer's CPU share is honoured"


def test_settings_never_print_the_tokens_they_hold(tmp_path: Path) -> None:
    tokens = {"RMA_JOIN_TOKEN": JOIN, "RMA_ADMIN_TOKEN": ADMIN, "RMA_API_KEYS": API_KEYS}
    shown = " ".join(repr(settings) for settings in (
        WorkerConfig(join_token=JOIN, service_env=tokens),
        Placement("127.0.0.1", 1, tmp_path, tmp_path / "redis.log", env=tokens, secret="s"),
        Context("127.0.0.1", 1, tmp_path, env=tokens, secret="s")))
    assert not [token for token in (JOIN, ADMIN, API_KEYS) if token in shown]


@dataclass(frozen=True)
class Running:
    """A process under a worker: its command line and, unless it wrote its title over it, its environment."""

    pid: int
    cmdline: str
    env: dict[str, str] | None


def running_under(worker: RmaProcess) -> list[Running]:
    """The worker's descendants with their environments; a child caught between fork and exec (still the
    worker's own command line and environment, about to be replaced) is not a service yet, and is skipped."""
    found = []
    parent = psutil.Process(worker.pid)
    own = parent.cmdline()
    for proc in parent.children(recursive=True):
        try:
            if proc.cmdline() == own:
                continue
            raw = Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")
            env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
            # redis and postgres write their process title over their environment (their copy is on the heap).
            found.append(Running(proc.pid, " ".join(proc.cmdline()), env if "PATH" in env else None))
        except (psutil.Error, OSError):
            continue  # gone since the listing
    return found


def in_memory(pid: int, values: set[str]) -> set[str]:
    """Which of `values` are anywhere in the process's private writable memory (none once it has exited:
    postgres forks a short-lived backend for each health check)."""
    found: set[str] = set()
    try:
        maps, mem = open(f"/proc/{pid}/maps"), open(f"/proc/{pid}/mem", "rb", 0)  # noqa: SIM115 - closed below
    except OSError:
        return found
    with maps, mem:
        for line in maps:
            address, perms = line.split()[:2]
            if perms != "rw-p":
                continue
            start, end = (int(bound, 16) for bound in address.split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue  # a mapping that cannot be read (vvar, guard pages)
            found |= {value for value in values if value.encode() in chunk}
    return found


def one(processes: list[Running], marker: str) -> Running | None:
    return next((proc for proc in processes if marker in proc.cmdline), None)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(os.geteuid() != 0, reason="reads the memory of processes run as the stores' accounts")
def test_no_service_process_inherits_the_workers_secrets(processes: list[RmaProcess], tmp_path: Path) -> None:
    """On a pool kept in etcd, so that the edge worker runs a coordinator replica too."""
    reason = etcd_skip_reason()
    if reason:
        pytest.skip(reason)
    with etcd_cluster(tmp_path / "etcd", 1) as store:
        coordinator, url = start_coordinator(tmp_path, env={"RMA_JOIN_TOKEN": JOIN, "RMA_ADMIN_TOKEN": ADMIN,
                                                            "RMA_STORE_URL": store.url})
        processes.append(coordinator)
        no_secrets_passed(processes, tmp_path, url)


def no_secrets_passed(processes: list[RmaProcess], tmp_path: Path, url: str) -> None:
    workers = {}
    for kind in ("storage", "cpu", "edge"):
        env = {"WORKER_TYPE": kind, "COORDINATOR_URL": url, "WORKER_ID": f"w-{kind}",
               "DATA_DIR": str(tmp_path / f"w-{kind}"), "ADVERTISE_HOST": "127.0.0.1", **WORKER_ENV}
        workers[kind] = RmaProcess(["worker"], tmp_path / f"w-{kind}.log", env).start()
        processes.append(workers[kind])
    # A store, two apps (llm-inference on its CPU engine), both routers and the coordinator replica.
    wanted: dict[str, tuple[str, ...]] = {
        "storage": ("redis-server",),
        "cpu": ("rma.services.apps.documents", "rma.services.apps.llm"),
        "edge": ("rma edge-proxy", "rma load-balancer", "rma coordinator"),
    }

    def started() -> dict[str, list[Running]] | None:
        running = {kind: running_under(worker) for kind, worker in workers.items()}
        ready = all(one(running[kind], marker) for kind, markers in wanted.items() for marker in markers)
        return running if ready else None

    running = wait_until(started, 120, what="redis, two apps, the routers and a coordinator replica")
    secrets = {JOIN, ADMIN, API_KEYS, *STRAY.values()}
    for kind in wanted:
        for proc in running[kind]:
            if proc.env is None:
                assert not in_memory(proc.pid, secrets), f"{proc.cmdline} got the worker's secrets"
                continue
            values = set(proc.env.values())
            assert not values & set(STRAY.values()), f"{proc.cmdline} got the worker's stray secrets"
            assert (JOIN in values) == ("rma coordinator" in proc.cmdline), proc.cmdline
            assert (API_KEYS in values) <= ("rma edge-proxy" in proc.cmdline or "rma coordinator" in proc.cmdline)
            assert (ADMIN in values) <= (kind == "edge"), proc.cmdline
    redis = one(running["storage"], "redis-server")
    assert redis is not None and not in_memory(redis.pid, secrets)
    edge = one(running["edge"], "rma edge-proxy")
    assert edge is not None and edge.env is not None
    assert edge.env["RMA_API_KEYS"] == API_KEYS and edge.env["RMA_ADMIN_TOKEN"] == ADMIN
    llm, documents = one(running["cpu"], "rma.services.apps.llm"), one(running["cpu"], "rma.services.apps.documents")
    assert llm is not None and llm.env is not None and documents is not None and documents.env is not None
    assert llm.env["CUDA_VISIBLE_DEVICES"] == "0", "a GPU-capable engine keeps its devices"
    assert "CUDA_VISIBLE_DEVICES" not in documents.env
