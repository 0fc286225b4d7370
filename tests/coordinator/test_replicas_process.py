"""Three real coordinators on a real three-member etcd, and two real workers that know
them all (a storage worker and a cpu worker), and 300 simulated ones.

kill -9 of the coordinator the workers beat to: they carry on with another, with the tokens they have,
without registering again or restarting a service, and every coordinator still routes to them;
kill -9 of an etcd member: nothing a worker or a router sees changes; the killed coordinator comes
back with the pool as it was, and so does the whole pool after every coordinator and every etcd
member is killed at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from etcd_cluster import etcd_cluster, skip_reason
from procs import RmaProcess, free_port, start_coordinator, start_worker, wait_until
from rma.catalog import REPLICATED
from rma.coordinator.etcd import Etcd
from rma.placement.model import STORE_COPIES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))]
INTERVAL = 1.0
SIMULATED = 300  # workers registered over the three coordinators besides the two real ones


def table(url: str) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = httpx.get(f"{url}/api/services/table", timeout=2).json()["services"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return answer


def redis_on(url: str) -> list[str]:
    return [r["worker_id"] for r in (table(url) or {}).get("redis", [])]


def register(url: str, worker_id: str) -> str:
    """A simulated worker registers (one that can run nothing, so the real ones' services stay put); its token."""
    answer = httpx.post(f"{url}/api/worker/register", timeout=5, json={
        "worker_id": worker_id, "advertise_host": "127.0.0.1",
        "capabilities": {"worker_type": "gpu", "engines": []}})
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["worker_token"]
    return token


def beat(url: str, worker_id: str, token: str) -> int:
    return httpx.post(f"{url}/api/worker/heartbeat", timeout=5, headers={"Authorization": f"Bearer {token}"},
                      json={"worker_id": worker_id}).status_code


def service_starts(folder: Path, *workers: str) -> int:
    """How many service processes the workers have started: the supervisor heads a service's log with each."""
    return sum(log.read_text(errors="replace").count(" start: ") for worker in workers
               for log in (folder / worker / "logs").glob("*.log"))


def beating_to(worker: RmaProcess) -> str:
    """The coordinator the worker's log says it failed over to last (or registered with)."""
    found = re.findall(r"coordinator (http://\S+) answered; failing over|registered with (http://\S+)", worker.log())
    return "".join(found[-1]) if found else ""


def test_kill_9_of_a_coordinator_or_an_etcd_member_is_not_seen_by_workers(
        tmp_path: Path, processes: list[RmaProcess]) -> None:
    with etcd_cluster(tmp_path / "etcd") as cluster:
        ports = {name: free_port() for name in "abc"}
        coordinators: dict[str, RmaProcess] = {}
        for name, port in ports.items():
            coordinators[name], _ = start_coordinator(tmp_path, port, INTERVAL, {"RMA_STORE_URL": cluster.url}, name)
            processes.append(coordinators[name])
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        worker = start_worker(processes, tmp_path, ",".join(urls.values()), "storage", "s1")
        other = start_worker(processes, tmp_path, ",".join(urls.values()), "cpu", "c1")
        for url in urls.values():  # registered with a, and every coordinator routes to it
            wait_until(lambda url=url: redis_on(url) == ["s1"], 60, what=f"redis on s1 in {url}'s table\n"
                                                                         f"{worker.log()[-2000:]}")
            wait_until(lambda url=url: "c1" in [r["worker_id"] for r in (table(url) or {}).get("notes-coa", [])],
                       60, what=f"notes-coa on c1 in {url}'s table\n{other.log()[-2000:]}")
        time.sleep(2 * INTERVAL)  # every service of both settled
        starts = service_starts(tmp_path, "s1", "c1")
        assert starts >= 7 and worker.log().count("registered with") == other.log().count("registered with") == 1
        simulated = {f"sim-{i:03d}": register(urls["abc"[i % 3]], f"sim-{i:03d}") for i in range(SIMULATED)}

        coordinators["a"].kill9()
        killed = time.monotonic()
        wait_until(lambda: beating_to(worker) in (urls["b"], urls["c"]), 10 * INTERVAL,
                   what=f"the worker beating to another coordinator\n{worker.log()[-2000:]}")
        moved = time.monotonic() - killed
        for name in "bc":  # it stays up everywhere: no grace ran out, nothing was placed again
            assert redis_on(urls[name]) == ["s1"], table(urls[name])
        assert worker.log().count("registered with") == other.log().count("registered with") == 1
        assert service_starts(tmp_path, "s1", "c1") == starts
        print(f"worker beating to {beating_to(worker)} {moved:.1f} s after its coordinator's kill -9")
        # No registration was lost with a: each of its workers beats to b with the token a gave it.
        for worker_id, token in simulated.items():
            assert beat(urls["b"], worker_id, token) == 200, worker_id

        cluster.kill9(cluster.members[0])
        time.sleep(3 * INTERVAL)  # three heartbeats and table refreshes against the two members left
        for name in "bc":
            assert redis_on(urls[name]) == ["s1"], table(urls[name])
        assert service_starts(tmp_path, "s1", "c1") == starts
        cluster.restart(cluster.members[0])

        coordinators["a"], _ = start_coordinator(tmp_path, ports["a"], INTERVAL, {"RMA_STORE_URL": cluster.url},
                                                 "a")
        processes.append(coordinators["a"])
        assert redis_on(urls["a"]) == ["s1"]  # back with the pool as it was, from its first table
        assert service_starts(tmp_path, "s1", "c1") == starts

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
            assert listed == {"s1", "c1", *simulated}
        time.sleep(2 * INTERVAL)
        assert worker.log().count("registered with") == other.log().count("registered with") == 1
        assert service_starts(tmp_path, "s1", "c1") == starts


def test_storage_workers_joining_three_coordinators_at_once_never_overfill_a_store_by_the_stores_history(
        tmp_path: Path, processes: list[RmaProcess]) -> None:
    """Every assignment etcd ever committed, read back from revision 1: one worker per store, never two (a
    replicated store's two copies, never three)."""
    with etcd_cluster(tmp_path / "etcd") as cluster:
        urls = []
        for name in "abc":  # a long interval: nobody goes down, so no store may move while this runs
            coordinator, url = start_coordinator(tmp_path, None, 60.0, {"RMA_STORE_URL": cluster.url}, name)
            processes.append(coordinator)
            urls.append(url)
        # Five contests, one per store: three workers that can run only that store join at once, one to each
        # coordinator (the three requests are on the wire before the first is answered), so each coordinator
        # sees no replica of the store and would fill the gap.
        contests = {"redis": "redis-server", "postgres": "postgres", "chromadb": "chroma", "minio": "seaweedfs",
                    "neo4j": "arcadedb"}
        for store, engine in contests.items():
            requests = []
            for i, url in enumerate(urls):
                body = json.dumps({"worker_id": f"{store}-{i}", "advertise_host": "127.0.0.1",
                                   "capabilities": {"worker_type": "storage", "engines": [engine]}}).encode()
                requests.append(f"POST /api/worker/register HTTP/1.1\r\nHost: {url[7:]}\r\nContent-Type: "
                                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            sockets = [socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) for url in urls]
            for sock, request in zip(sockets, requests, strict=True):  # all three sent before any is answered
                sock.sendall(request)
            for sock in sockets:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200"), store
                sock.close()
        etcd = Etcd(cluster.endpoints)
        ever: dict[str, set[str]] = {}

        async def history() -> None:
            """A watch from revision 1 brings the whole history at once; a second of silence is its end."""
            stream = etcd.watch("/rma/assigned/", 0)
            while True:
                try:
                    batch = await asyncio.wait_for(anext(stream), 1.0)
                except TimeoutError:
                    return
                for kv in batch:
                    for service in json.loads(kv.value)["assigned"]:
                        ever.setdefault(service, set()).add(kv.key.rsplit("/", 1)[1])

        asyncio.run(history())
        etcd.close()
        for store in contests:  # a replicated store (postgres, under Patroni) has a copy on a second worker
            copies = STORE_COPIES if store in REPLICATED else 1
            assert 1 <= len(ever.get(store, ())) <= copies, (store, ever)
        placed = {name: [r["worker_id"] for r in (table(url) or {}).get("redis", [])] for name, url in zip(
            "abc", urls, strict=True)}
        assert len({tuple(p) for p in placed.values()}) == 1  # every coordinator says the same
