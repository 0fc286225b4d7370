"""`rma up`, as `make up` runs it: a coordinator and one worker here, a service healthy, Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from procs import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_rma_up_starts_a_pool_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "rma", "up", "--port", str(port), "--data-dir",
                               str(tmp_path / "data"), "--heartbeat-interval", "1"],
                              stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: "healthy at" in log.read_text(), 60, what="a service healthy under rma up")
        text = log.read_text()
        assert f"Coordinator: {url}" in text and f"Dashboard:   {url}/" in text
        assert "Detected CPU" in text and "Assigned to" in text
        assert "RMA pool" in httpx.get(f"{url}/", timeout=5).text
        workers = httpx.get(f"{url}/api/admin/workers", timeout=5).json()["workers"]
        assert len(workers) == 1 and workers[0]["healthy"]
        children = psutil.Process(up.pid).children(recursive=True)
        assert any(c.name() == "redis-server" for c in children)
    finally:
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
        up.wait(30)
    assert up.returncode == 0, log.read_text()
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    # The data folder is reused by the next `rma up`: the same worker comes back.
    assert (tmp_path / "data" / "worker.json").exists()
