"""`rma up --tls`: a local CA made at start, and the pool's coordinator and routers served over HTTPS with it."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from procs import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
RMA = Path(sys.executable).parent / "rma"


def test_up_with_tls_serves_the_coordinator_and_the_routers_over_https_from_its_own_ca(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(RMA), "up", "--tls", "--worker-type", "edge", "--port", str(free_port()),
                                 "--data-dir", str(tmp_path / "data"), "--heartbeat-interval", "1"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = wait_until(lambda: re.search(r"^edge-proxy +healthy +(\S+)$", log.read_text(), re.M), 90, 0.2,
                           what="the edge proxy healthy")
        edge = ready.group(1)
        coordinator = re.search(r"^Coordinator: (\S+)", log.read_text(), re.M)
        assert edge.startswith("https://") and coordinator and coordinator.group(1).startswith("https://")
        tls = tmp_path / "data" / "tls"
        assert (tls / "server-key.pem").stat().st_mode & 0o777 == 0o600
        assert f"curl --cacert {tls / 'ca.pem'}" in log.read_text()
        context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        assert httpx.get(f"{edge}/health", verify=context, timeout=5).json()["status"] == "healthy"
        assert httpx.get(f"{coordinator.group(1)}/api/admin/workers", verify=context, timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{edge}/health", timeout=5, trust_env=False)  # not without the CA
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
