"""The worker's settings, from the seed's variables and their flags, and its saved identity."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rma.files import write_private
from rma.services import DRIVERS

# The seed's service variables, and ours beside them, that the drivers read to build a command.
# HF_HOME and HF_HUB_CACHE say where the vLLM engines' models are, which decides whether they are offered.
SERVICE_VARIABLES = (
    "MODEL_NAME", "GPU_MEMORY_UTILIZATION", "MAX_MODEL_LEN", "CHROMADB_HOST", "CHROMADB_PORT",
    "NEO4J_URI", "REDIS_HOST", "LOAD_BALANCER_PORT", "EDGE_PROXY_PORT", "SPACY_MODEL",
    "VISION_MODEL_NAME", "HF_HOME", "HF_HUB_CACHE",
)


@dataclass(frozen=True)
class WorkerConfig:
    coordinator_urls: tuple[str, ...] = ("http://127.0.0.1:8080",)
    worker_type: str = "auto"
    worker_id: str | None = None
    join_token: str | None = field(default=None, repr=False)
    data_dir: Path = Path(".rma")
    advertise_host: str | None = None
    public_url: str | None = None
    persistent_data: bool = False
    service_env: dict[str, str] = field(default_factory=dict, repr=False)  # see service_env(); holds tokens

    @property
    def host(self) -> str:
        """The address other machines reach this worker's services at."""
        return self.advertise_host or outbound_address(self.coordinator_urls[0])

    @property
    def bind_host(self) -> str:
        """Services bind to the advertised address when it is local, else everywhere (NAT, tunnels)."""
        return self.host if is_local(self.host) else "0.0.0.0"


def parse_urls(value: str) -> tuple[str, ...]:
    urls = tuple(url.strip().rstrip("/") for url in value.split(",") if url.strip())
    if not urls:
        raise ValueError("COORDINATOR_URL is empty")
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
    return urls


def service_env(environ: dict[str, str] | os._Environ[str], join_token: str | None) -> dict[str, str]:
    """The worker's variables for its services: those the drivers read, and those some service's process
    needs (its driver's `passes`). Each process is handed only its own driver's share of them."""
    names = dict.fromkeys((*SERVICE_VARIABLES, *(name for driver in DRIVERS.values() for name in driver.passes)))
    env = {name: environ[name] for name in names if name in environ}
    if join_token:
        env["RMA_JOIN_TOKEN"] = join_token
    return env


def outbound_address(coordinator_url: str) -> str:
    """The local address this machine uses to reach the coordinator (no packet is sent)."""
    host = urlsplit(coordinator_url).hostname or "127.0.0.1"
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return "127.0.0.1"
    if host == "localhost":
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((socket.gethostbyname(host), 9))
            address: str = sock.getsockname()[0]
            return address
    except OSError:
        return "127.0.0.1"


def is_local(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """What a worker keeps across restarts: its id, and the token that proves it holds the id."""

    worker_id: str | None = None
    worker_token: str | None = None


def load_identity(data_dir: Path) -> Identity:
    try:
        saved = json.loads((data_dir / "worker.json").read_text())
        return Identity(saved.get("worker_id"), saved.get("worker_token"))
    except (OSError, ValueError, AttributeError):
        return Identity()


def save_identity(data_dir: Path, identity: Identity) -> None:
    """Written owner-only, then renamed into place: a crash never leaves half a token."""
    data_dir.mkdir(parents=True, exist_ok=True)
    write_private(data_dir / "worker.json",
                  json.dumps({"worker_id": identity.worker_id, "worker_token": identity.worker_token}))
