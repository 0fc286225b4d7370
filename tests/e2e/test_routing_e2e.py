"""An edge worker gets the routers assigned, starts them, and a request through each reaches a service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from etcd_cluster import etcd_cluster
from etcd_cluster import skip_reason as etcd_skip_reason
from procs import RmaProcess, start_coordinator, start_worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def replica(url: str, service: str) -> dict[str, Any] | None:
    response = httpx.get(f"{url}/api/services/discover/{service}", timeout=2)
    return response.json()["workers"][0] if response.status_code == 200 else None


def test_edge_worker_runs_the_routers_and_they_route(processes: list[RmaProcess], tmp_path: Path) -> None:
    """On a pool kept in etcd, so that the edge worker also runs a coordinator replica, on the same store."""
    reason = etcd_skip_reason()
    if reason:
        pytest.skip(reason)
    with etcd_cluster(tmp_path / "etcd", 1) as store:
        coordinator, url = start_coordinator(tmp_path, interval=1.0, env={"RMA_STORE_URL": store.url})
        processes.append(coordinator)
        routers_route(processes, tmp_path, url)


def routers_route(processes: list[RmaProcess], tmp_path: Path, url: str) -> None:
    start_worker(processes, tmp_path, url, "edge", "w-edge")
    found = {r: wait_until(lambda r=r: replica(url, r), 40, what=f"{r} healthy on the edge worker")
             for r in ("edge-proxy", "load-balancer")}
    assert {f["worker_id"] for f in found.values()} == {"w-edge"}
    wait_until(lambda: replica(url, "coordinator"), 40, what="a coordinator replica on the edge worker")

    def through(router: str) -> httpx.Response | None:
        answer = httpx.get(f"{found[router]['url']}/service/coordinator/health", timeout=3)
        return answer if answer.status_code == 200 else None

    # The load balancer (internal traffic) routes to the pool's own parts; the public edge never does.
    answer = wait_until(lambda: through("load-balancer"), 15, what="/service/coordinator/health through the LB")
    assert answer.json()["status"] == "healthy"
    # The replica is the same pool: it lists the edge worker the first coordinator registered.
    listed = httpx.get(f"{replica(url, 'coordinator')['url']}/api/admin/workers", timeout=3).json()["workers"]
    assert [w["worker_id"] for w in listed] == ["w-edge"]
    refused = httpx.get(f"{found['edge-proxy']['url']}/service/coordinator/health", timeout=3)
    assert refused.status_code == 404 and "error" in refused.json()
