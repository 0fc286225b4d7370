"""Three real coordinators on a real three-member etcd, and a real storage worker that knows them all.

kill -9 of the coordinator the worker beats to: the worker carries on with another, with the token it
has, without registering again or restarting its redis, and every coordinator still routes to it;
kill -9 of an etcd member: nothing a worker or a router sees changes; the killed coordinator comes
back with the pool as it was, and so does the whole pool after every coordinator and every etcd
member is killed at once.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from etcd_cluster import etcd_cluster, skip_reason
from procs import RmaProcess, free_port, start_coordinator, start_worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
INTERVAL = 1.0
SIMULATED = 150  # workers registered over the three coordinators besides the real one


def table(url: str) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = httpx.get(f"{url}/api/services/table", timeout=2).json()["services"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return answer


def redis_on(url: str) -> list[str]:
    return [r["worker_id"] for r in (table(url) or {}).get("redis", [])]


def register(url: str, worker_id: str) -> str:
    """A simulated cpu worker registers; its token."""
    answer = httpx.post(f"{url}/api/worker/register", timeout=5, json={
        "worker_id": worker_id, "advertise_host": "127.0.0.1",
        "capabilities": {"worker_type": "cpu", "engines": ["spacy"]}})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["worker_token"]
    return token


def beat(url: str, worker_id: str, token: str) -> int:
    return httpx.post(f"{url}/api/worker/heartbeat", timeout=5, headers={"Authorization": f"Bearer {token}"},
                      json={"worker_id": worker_id}).status_code


def redis_pids(worker: RmaProcess) -> set[int]:
    return {p.pid for p in psutil.Process(worker.pid).children(recursive=True) if p.name() == "redis-server"}


def beating_to(worker: RmaProcess) -> str:
    """The coordinator the worker's log says it failed over to last (or registered with)."""
    found = re.findall(r"coordinator (http://\S+) answered; failing over|registered with (http://\S+)", worker.log())
    return "".join(found[-1]) if found else ""


def test_kill_9_of_a_coordinator_or_an_etcd_member_is_not_seen_by_workers(
        tmp_path: Path, processes: list[RmaProcess]) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with etcd_cluster(tmp_path / "etcd") as cluster:
        ports = {name: free_port() for name in "abc"}
        coordinators: dict[str, RmaProcess] = {}
        for name, port in ports.items():
            coordinators[name], _ = start_coordinator(tmp_path, port, INTERVAL, {"RMA_STORE_URL": cluster.url}, name)
            processes.append(coordinators[name])
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        worker = start_worker(processes, tmp_path, ",".join(urls.values()), "storage", "s1")
        for url in urls.values():  # registered with a, and every coordinator routes to it
            wait_until(lambda url=url: redis_on(url) == ["s1"], 60, what=f"redis on s1 in {url}'s table\n"
                                                                         f"{worker.log()[-2000:]}")
        pids = redis_pids(worker)
        assert pids and worker.log().count("registered with") == 1
        simulated = {f"sim-{i:03d}": register(urls["abc"[i % 3]], f"sim-{i:03d}") for i in range(SIMULATED)}

        coordinators["a"].kill9()
        killed = time.monotonic()
        wait_until(lambda: beating_to(worker) in (urls["b"], urls["c"]), 10 * INTERVAL,
                   what=f"the worker beating to another coordinator\n{worker.log()[-2000:]}")
        moved = time.monotonic() - killed
        for name in "bc":  # it stays up everywhere: no grace ran out, nothing was placed again
            assert redis_on(urls[name]) == ["s1"], table(urls[name])
        assert worker.log().count("registered with") == 1 and redis_pids(worker) == pids
        print(f"worker beating to {beating_to(worker)} {moved:.1f} s after its coordinator's kill -9")
        # No registration was lost with a: each of its workers beats to b with the token a gave it.
        for worker_id, token in simulated.items():
            assert beat(urls["b"], worker_id, token) == 200, worker_id

        cluster.kill9(cluster.members[0])
        time.sleep(3 * INTERVAL)  # three heartbeats and table refreshes against the two members left
        for name in "bc":
            assert redis_on(urls[name]) == ["s1"], table(urls[name])
        assert redis_pids(worker) == pids
        cluster.restart(cluster.members[0])

        coordinators["a"], _ = start_coordinator(tmp_path, ports["a"], INTERVAL, {"RMA_STORE_URL": cluster.url},
                                                 "a")
        processes.append(coordinators["a"])
        assert redis_on(urls["a"]) == ["s1"]  # back with the pool as it was, from its first table
        assert worker.log().count("registered with") == 1 and redis_pids(worker) == pids

        # Everything at once: every coordinator and every etcd member killed, then started again.
        for coordinator in coordinators.values():
            coordinator.kill9()
        cluster.stop_all()
        for member in cluster.members:
            cluster.start(member, state="existing")
        for name, port in ports.items():
            coordinators[name], _ = start_coordinator(tmp_path, port, INTERVAL, {"RMA_STORE_URL": cluster.url}, name)
            processes.append(coordinators[name])
        for url in urls.values():
            assert redis_on(url) == ["s1"]
            listed = {w["worker_id"] for w in httpx.get(f"{url}/api/admin/workers", timeout=5).json()["workers"]}
            assert listed == {"s1", *simulated}
        wait_until(lambda: beating_to(worker) in urls.values() and redis_on(urls["c"]) == ["s1"], 10, what="s1")
        assert worker.log().count("registered with") == 1 and redis_pids(worker) == pids
