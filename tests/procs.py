"""Real processes for end-to-end tests: free ports on 127.0.0.1, and `rma` commands that always get cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RmaProcess:
    """One `python -m rma ...` child in its own process group, logging to a file."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RmaProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "rma", *self.args], stdout=log, stderr=log,
                                     env=self.env, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL the whole process group, as a crash or a pulled plug would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_until(check, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError, KeyError, ValueError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def start_coordinator(tmp_path: Path, port: int | None = None, interval: float = 1.0,
                      env: dict[str, str] | None = None, name: str = "coordinator") -> tuple[RmaProcess, str]:
    """Start `rma coordinator` and wait for /health; returns the process and its URL."""
    port = port or free_port()
    data = tmp_path / name
    data.mkdir(parents=True, exist_ok=True)
    proc = RmaProcess(["coordinator", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
                       "--heartbeat-interval", str(interval)], tmp_path / f"{name}.log", env).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=1).status_code == 200, 20, what="coordinator /health")
    except AssertionError:
        proc.stop()
        raise AssertionError(f"coordinator did not start:\n{proc.log()}") from None
    return proc, url


def start_worker(processes: list[RmaProcess], log_dir: Path, url: str, kind: str, name: str,
                 data_dir: Path | None = None) -> RmaProcess:
    """`rma worker` configured only by the seed's variables, with its data under `data_dir/name`."""
    env = {"WORKER_TYPE": kind, "COORDINATOR_URL": url, "WORKER_ID": name,
           "DATA_DIR": str((data_dir or log_dir) / name), "ADVERTISE_HOST": "127.0.0.1"}
    worker = RmaProcess(["worker"], log_dir / f"{name}.log", env).start()
    processes.append(worker)
    return worker
