"""An edge worker gets the routers assigned, starts them, and a request through each reaches a service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from procs import RmaProcess, start_coordinator, start_worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def replica(url: str, service: str) -> dict[str, Any] | None:
    response = httpx.get(f"{url}/api/services/discover/{service}", timeout=2)
    return response.json()["workers"][0] if response.status_code == 200 else None


def test_edge_worker_runs_the_routers_and_they_route(processes: list[RmaProcess], tmp_path: Path) -> None:
    coordinator, url = start_coordinator(tmp_path, interval=1.0)
    processes.append(coordinator)
    start_worker(processes, tmp_path, url, "edge", "w-edge")
    for router in ("edge-proxy", "load-balancer"):
        found = wait_until(lambda r=router: replica(url, r), 40, what=f"{router} healthy on the edge worker")
        assert found["worker_id"] == "w-edge"
        wait_until(lambda: replica(url, "coordinator"), 40, what="a coordinator replica on the edge worker")

        def through(found: dict[str, Any] = found) -> httpx.Response | None:
            answer = httpx.get(f"{found['url']}/service/coordinator/health", timeout=3)
            return answer if answer.status_code == 200 else None

        answer = wait_until(through, 15, what=f"/service/coordinator/health through {router}")
        assert answer.json()["status"] == "healthy"
