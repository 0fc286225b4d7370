"""Start real backends (playing workers) and real routers against a real coordinator, on free ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from procs import RmaProcess, free_port, wait_until

BACKEND = Path(__file__).with_name("backend.py")


class Backend(RmaProcess):
    """backend.py as a child process (kill9/stop from RmaProcess)."""

    def __init__(self, name: str, tmp_path: Path, coordinator: str | None, service: str | None,
                 env: dict[str, str] | None = None) -> None:
        super().__init__([], tmp_path / f"{name}.log", env)
        self.name = name
        self.port = free_port()
        self.argv = [sys.executable, str(BACKEND), str(self.port), name, *([coordinator, service]
                                                                          if coordinator and service else [])]

    def start(self) -> Backend:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, env=self.env, start_new_session=True)
        log.close()
        url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 15, what=f"backend {self.name}")
        return self


def start_backend(processes: list[RmaProcess], tmp_path: Path, name: str, coordinator: str | None = None,
                  service: str | None = None, env: dict[str, str] | None = None) -> Backend:
    backend = Backend(name, tmp_path, coordinator, service, env)
    processes.append(backend)
    return backend.start()


def start_router(processes: list[RmaProcess], tmp_path: Path, command: str, coordinator: str,
                 env: dict[str, str] | None = None, *flags: str) -> str:
    """`rma edge-proxy` or `rma load-balancer`; returns its URL once /health answers 200."""
    port = free_port()
    proc = RmaProcess([command, "--port", str(port), "--coordinator-url", coordinator, *flags],
                      tmp_path / f"{command}-{port}.log", {"ROUTING_REFRESH_INTERVAL": "0.5", **(env or {})}).start()
    processes.append(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 20, what=f"{command} /health")
    except AssertionError:
        raise AssertionError(f"{command} did not start:\n{proc.log()}") from None
    return url


def routed(router: str, service: str, count: int) -> Any:
    """Wait until `router` routes `service` to `count` replicas (its table caught up)."""
    def ready() -> bool:
        rows = httpx.get(f"{router}/routing", timeout=2).json()["services"].get(service, [])
        return len(rows) == count
    return wait_until(ready, 15, what=f"{count} replicas of {service} in the routing table")
