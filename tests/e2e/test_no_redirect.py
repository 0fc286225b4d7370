"""Issue 16's finding, as reported: a worker cannot point the routers at another server on its machine.

A real `rma coordinator` on loopback (a single-machine pool), and beside it an unrelated HTTP
server (`python -m http.server`, serving a folder with a private file). A worker assigned
document-processing on 8103 reports the service healthy on the unrelated server's port; the
coordinator's /service/document-processing/ must never serve that server's content.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from procs import RmaProcess, free_port, start_coordinator, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def test_a_worker_cannot_point_the_routers_at_an_unrelated_local_server(
        tmp_path: Path, processes: list[RmaProcess]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "payroll.csv").write_text("name,salary\n")
    port = free_port()
    unrelated = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                  "--directory", str(shared)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: "payroll.csv" in httpx.get(f"http://127.0.0.1:{port}/", timeout=1).text, 10,
                   what="the unrelated server")
        coordinator, url = start_coordinator(tmp_path)
        processes.append(coordinator)
        joined = httpx.post(f"{url}/api/worker/register", timeout=5, json={
            "worker_id": "w1", "advertise_host": "127.0.0.1",
            "capabilities": {"worker_type": "cpu", "engines": ["pdf-docx"]}}).json()
        assert joined["assigned_services"] == ["document-processing"]
        assert joined["service_configs"][0]["port"] == 8103

        def report() -> None:
            answer = httpx.post(f"{url}/api/worker/heartbeat", timeout=5,
                                headers={"Authorization": f"Bearer {joined['worker_token']}"},
                                json={"worker_id": "w1", "services_status": {
                                    "document-processing": {"state": "healthy", "port": port}}})
            assert answer.status_code == 200, answer.text

        # For longer than the router's table refresh and the port check's retry, keep reporting it.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            report()
            through = httpx.get(f"{url}/service/document-processing/", timeout=5)
            assert "payroll.csv" not in through.text
            assert through.status_code == 503, through.text
            time.sleep(0.25)
        table = httpx.get(f"{url}/api/services/table", timeout=5).json()["services"]
        assert table["document-processing"] == []
        worker = httpx.get(f"{url}/api/admin/workers", timeout=5).json()["workers"][0]
        check = worker["port_checks"]["document-processing"]
        assert check["port"] == port and check["state"] == "refused"
        assert "GET /health answered 404" in check["reason"]
    finally:
        unrelated.terminate()
        unrelated.wait(10)
