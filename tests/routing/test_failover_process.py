"""kill -9 one of two replicas under a stream of requests: no client sees a failure, traffic moves at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from procs import RmaProcess, start_coordinator
from routing.pool import routed, start_backend, start_router

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
CLIENTS = 4
RUN_S = 4.0
KILL_AT_S = 1.0


def sent_to(lb: str, worker_id: str) -> int | None:
    rows = httpx.get(f"{lb}/routing", timeout=2).json()["services"]["ner-extraction"]
    return next((int(r["sent"]) for r in rows if r["worker_id"] == worker_id), None)


def test_kill_one_replica_zero_failed_requests(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=1.0)
    processes.append(coordinator)
    victim = start_backend(processes, tmp_path, "b1", url, "ner-extraction")
    start_backend(processes, tmp_path, "b2", url, "ner-extraction")
    lb = start_router(processes, tmp_path, "load-balancer", url)
    routed(lb, "ner-extraction", 2)

    results: list[tuple[float, int | str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(timeout=5) as session:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if n % 2:
                        response = session.get(f"{lb}/service/ner-extraction/kb")
                    else:  # POST to a pure-function service: retry-safe too
                        response = session.post(f"{lb}/service/ner-extraction/extract", json={"text": "x"})
                    outcome: tuple[float, int | str, str] = (time.monotonic(), response.status_code,
                                                            response.headers.get("x-backend", ""))
                except httpx.HTTPError as error:
                    outcome = (time.monotonic(), type(error).__name__, "")
                with lock:
                    results.append(outcome)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(KILL_AT_S)
    assert sent_to(lb, "b1")
    victim.kill9()
    killed = time.monotonic()
    time.sleep(1.0)
    at_one_second = sent_to(lb, "b1")
    time.sleep(1.2)  # still inside the coordinator's grace: the table lists the dead replica
    later = sent_to(lb, "b1")
    time.sleep(max(0.0, begun + RUN_S - time.monotonic()))
    stop.set()
    for thread in threads:
        thread.join()

    failed = [r for r in results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    assert len(results) > 100
    after = [r for r in results if r[0] > killed + 0.1]
    assert after and all(r[2] == "b2" for r in after)
    assert later is None or later == at_one_second, f"b1 got {later - (at_one_second or 0)} attempts after 1 s"
