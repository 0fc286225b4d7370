"""Shared pieces for worker tests: quick supervision timings and a redis placement on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from rma.worker.process import free_port
from rma.worker.supervisor import Placement, Policy

SECRET = "redis-password-of-the-test"  # as the coordinator would issue it
FAST = Policy(health_interval_s=0.2, start_timeout_s=10, unhealthy_restart_s=2, backoff_base_s=0.1,
              backoff_max_s=0.5, crash_loop=3, failed_retry_s=60, stop_timeout_s=3)


@pytest.fixture
def placement(tmp_path: Path) -> Placement:
    port = free_port("127.0.0.1")
    return Placement("127.0.0.1", port, tmp_path / "services" / "redis", tmp_path / "logs" / "redis.log",
                     secret=SECRET)
