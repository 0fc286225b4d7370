"""A real etcd cluster on loopback for tests: members on free ports, each killable and restartable.

Debian's etcd-server (`make test` installs it). etcd runs as root or as anyone; its data dirs
are made 0700 in the test's temporary folder and removed with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from procs import free_port, wait_until

START_TIMEOUT_S = 20.0


def skip_reason() -> str | None:
    return None if shutil.which("etcd") else "etcd is not installed (Debian: apt-get install etcd-server)"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.client_url}/health", timeout=1).json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False


class EtcdCluster:
    def __init__(self, folder: Path, size: int) -> None:
        self.members = [Member(f"m{i}", free_port(), free_port(), folder / f"m{i}", folder / f"m{i}.log")
                        for i in range(size)]
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def url(self) -> str:
        """The store URL a coordinator takes: etcd://127.0.0.1:port,…"""
        return "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self, member: Member, state: str = "new") -> None:
        member.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = open(member.log_path, "ab")  # noqa: SIM115 - the child owns it
        member.process = subprocess.Popen([
            "etcd", "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self.initial, "--initial-cluster-state", state,
            "--initial-cluster-token", "rma-test", "--heartbeat-interval", "50", "--election-timeout", "500",
            "--log-outputs", "stderr"], stdout=log, stderr=log, start_new_session=True)
        log.close()

    def start_all(self) -> None:
        for member in self.members:
            self.start(member)
        for member in self.members:
            wait_until(member.healthy, START_TIMEOUT_S, what=f"etcd {member.name} healthy\n{self.log(member)}")

    def kill9(self, member: Member) -> None:
        if member.process is not None and member.process.poll() is None:
            os.killpg(member.process.pid, signal.SIGKILL)
            member.process.wait(10)

    def restart(self, member: Member) -> None:
        self.start(member, state="existing")
        wait_until(member.healthy, START_TIMEOUT_S, what=f"etcd {member.name} back\n{self.log(member)}")

    def stop_all(self) -> None:
        for member in self.members:
            self.kill9(member)

    def log(self, member: Member) -> str:
        return member.log_path.read_text(errors="replace")[-2000:] if member.log_path.exists() else ""


@contextlib.contextmanager
def etcd_cluster(folder: Path, size: int = 3) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(folder, size)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()
