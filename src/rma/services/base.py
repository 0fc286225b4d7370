"""The one interface every catalogue service implements: how to start it, how to check it.

A service module says which engine it implements, how to prepare its data dir, and which
command to run; health checking comes from the catalogue's `HealthCheck` unless the module
knows better (redis answers PING). Services never import the worker: the worker hands them
a `Context` and supervises the `Launch` they return.

A service process gets the environment it needs, not the worker's whole one: the platform's few
variables, the worker variables its driver `passes`, and its launch's own. The worker's tokens, and
whatever else a volunteer's shell holds (cloud keys, ...), reach only a service that needs them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rma import catalog
from rma.front.settings import CA_FILE_VARIABLE, TlsCheck

# A health probe that takes longer than this counts as a failure: a service too slow to
# answer its health check is too slow to serve.
HEALTH_TIMEOUT_S = 2.0
# A health check answering this says the service is alive but has no free slot for more work
# (rma.services.apps.common): not routed to, and not restarted for it.
BUSY_STATUS = 429


class Busy:
    """What `ServiceDriver.healthy` returns for a service that is alive but busy (BUSY_STATUS)."""


BUSY = Busy()

# What every process the worker starts gets of the worker's own environment: where programs,
# libraries and Python packages are, the home folder, locale (and LC_*), clock, temporary folder,
# unbuffered Python output (so a service's log lines reach its log file as they are written), and the
# private CA that the coordinator's certificate is checked against (RMA_CA_FILE).
PLATFORM_VARIABLES = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "PYTHONPATH",
                      "PYTHONUNBUFFERED", CA_FILE_VARIABLE)
PLATFORM_PREFIXES = ("LC_",)
# The seed's variables that say where the pool's stores are, as the coordinator sends them with every
# service config: what a service is handed unless its driver says otherwise.
LOCATION_VARIABLES = ("CHROMADB_HOST", "CHROMADB_PORT", "REDIS_HOST", "REDIS_PORT", "POSTGRES_HOST", "POSTGRES_PORT",
                      "MINIO_ENDPOINT", "NEO4J_URI", "NEO4J_HTTP_URI")
# Where an engine finds its models in the Hugging Face cache.
MODEL_VARIABLES = ("HF_HOME", "HF_HUB_CACHE")
# Which GPUs a CUDA engine may use and in what order, and the toolkit its kernels may be compiled with.
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_HOME")
# The CPU share the volunteer gives the engines (see cpu_threads).
THREAD_VARIABLES = ("OMP_NUM_THREADS",)


@dataclass(frozen=True)
class Context:
    """Where and how one service instance runs on this worker."""

    host: str  # address the service binds to
    port: int
    data_dir: Path  # the service's own folder under the worker's data dir
    coordinator_urls: tuple[str, ...] = ()
    heartbeat_interval: float | None = None  # the pool's, for services that take part in it
    # The worker's service variables (its own and the coordinator's); some are tokens, so never printed.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    secret: str | None = field(default=None, repr=False)  # the store's credential, from the coordinator
    engine: str | None = None  # the engine the coordinator chose; None: the driver's `engine`
    on_mesh: bool = False  # `host` is the worker's overlay address: a caller's address there is its certificate's


@dataclass(frozen=True)
class Launch:
    """A process to start: argv plus the environment variables to add, and the processes that run beside it
    (redis's Sentinel): each supervised with it, so that one ending ends the service."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    companions: tuple[Launch, ...] = ()


class ServiceDriver(ABC):
    """Base of every service module: subclasses set `name` and `engine` and build the command.

    A module that can run its service on several engines (GPU and CPU) lists them in `engines`,
    best first, and launches the one `Context.engine` names; `engine` is then its default.
    `passes` names the worker variables (of `Context.env`) its process needs.
    """

    name: str
    engine: str
    passes: tuple[str, ...] = LOCATION_VARIABLES

    @property
    def engines(self) -> tuple[str, ...]:
        return (self.engine,)

    @property
    def service(self) -> catalog.Service:
        return catalog.get(self.name)

    def missing(self, engine: str, env: Mapping[str, str]) -> str | None:
        """What this machine lacks for `engine` beyond its catalogue modules and binaries (a model file)."""
        return None

    def port_usable(self, host: str, port: int, engine: str | None) -> bool:
        """Whether `engine` can serve on host:port: by default, nothing listens there."""
        return port_free(host, port)

    def reconfigure(self, data_dir: Path, env: Mapping[str, str]) -> None:
        """The service's config changed while it runs (a store it uses moved): by default nothing changes until
        its next start; a driver whose companion follows the change writes what it needs under `data_dir`."""
        return None

    def snapshot_at(self, data_dir: Path) -> float | None:
        """When the newest snapshot of this store was copied off the machine (chromadb's, neo4j's); None: none is."""
        return None

    def prepare(self, ctx: Context) -> None:
        """Create what the service needs before its first start (by default its data dir)."""
        ctx.data_dir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def launch(self, ctx: Context) -> Launch:
        """The command that runs the service in the foreground."""

    def environment(self, ctx: Context, launch: Launch, platform: Mapping[str, str] = os.environ) -> dict[str, str]:
        """The whole environment of the service's process: the platform's, what this driver passes, the launch's."""
        passed = {name: ctx.env[name] for name in self.passes if name in ctx.env}
        return {**platform_env(platform), **passed, **launch.env}

    async def healthy(self, ctx: Context) -> bool | Busy:
        """Check the service as the catalogue says: an HTTP GET answering 2xx (over TLS where the service
        serves it; BUSY_STATUS: BUSY), or a TCP connect."""
        check = self.service.health
        if check.protocol == "http":
            status = await http_status(probe_host(ctx.host), ctx.port, check.path, self.tls_check(ctx))
            return BUSY if status == BUSY_STATUS else 200 <= status < 300
        return await tcp_open(probe_host(ctx.host), ctx.port)


    def tls_check(self, ctx: Context) -> TlsCheck | None:
        """How to check this service's own TLS listener, where it serves one (a router or a coordinator given
        RMA_TLS_CERT/RMA_TLS_KEY, or RMA_TLS_DOMAIN for ACME); None for plain HTTP."""
        if "RMA_TLS_CERT" not in self.passes:
            return None
        return TlsCheck.from_env({**os.environ, **ctx.env})


def require_secret(ctx: Context, service: str) -> str:
    """The store's credential; a store without one would start open (or with a well-known default)."""
    if not ctx.secret:
        raise PermissionError(f"{service} starts only with the password the coordinator issues")
    return ctx.secret


def platform_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables of `environ` that every process the worker starts gets (PLATFORM_VARIABLES)."""
    return {name: value for name, value in environ.items()
            if name in PLATFORM_VARIABLES or name.startswith(PLATFORM_PREFIXES)}


def cpu_threads(ctx: Context) -> int:
    """Threads an engine may use: OMP_NUM_THREADS when the worker sets it, else the CPUs this process
    may run on, capped by a cgroup CPU quota (docker --cpus). Never `nproc`: on a shared machine
    oversubscribed threads cost far more than they bring (measured: 10x slower embeddings).
    """
    chosen = ctx.env.get("OMP_NUM_THREADS", "")
    if chosen.isdigit() and int(chosen) > 0:
        return int(chosen)
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


# Where programs live that PATH may not name: the running Python's own bin folder (a venv's
# `chroma`), and Debian's versioned PostgreSQL folder, newest first.
EXTRA_BIN_DIRS = (Path(sys.executable).parent, *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))


def find_binary(name: str) -> str | None:
    """The path of program `name`: on PATH, else in EXTRA_BIN_DIRS; None when it is nowhere."""
    found = shutil.which(name)
    if found:
        return found
    for folder in EXTRA_BIN_DIRS:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def port_free(host: str, port: int) -> bool:
    """Nothing listens on host:port now (a port in TIME_WAIT has no owner: servers listen with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    """A port the OS says is free on `host` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def probe_host(bind_host: str) -> str:
    """The address to probe a service on: a wildcard bind is reachable on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind_host, bind_host)


async def tcp_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), HEALTH_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await _closed(writer)
    return True


async def tcp_lines(host: str, port: int, send: bytes, count: int, tls: TlsCheck | None = None) -> list[bytes]:
    """Send `send` and read `count` answer lines; [] when the service cannot be reached, or its TLS
    listener does not serve the certificate `tls` expects."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls.context if tls else None,
                                    server_hostname=tls.server_name if tls else None), HEALTH_TIMEOUT_S)
    except (OSError, TimeoutError):
        return []
    try:
        if tls is not None and not tls.served(writer.get_extra_info("ssl_object")):
            return []
        writer.write(send)
        await writer.drain()
        return [await asyncio.wait_for(reader.readline(), HEALTH_TIMEOUT_S) for _ in range(count)]
    except (OSError, TimeoutError):
        return []
    finally:
        writer.close()
        await _closed(writer)


async def http_status(host: str, port: int, path: str, tls: TlsCheck | None = None) -> int:
    """GET `path` on a fresh connection: the answer's status, 0 for none.

    A plain request line rather than an HTTP client: a client built per check (TLS context
    and all) cost a volunteer's machine several percent of a core for the agent alone.
    """
    url_host = f"[{host}]" if ":" in host else host
    request = f"GET {path} HTTP/1.1\r\nHost: {url_host}:{port}\r\nConnection: close\r\n\r\n".encode()
    status = await tcp_lines(host, port, request, 1, tls)
    parts = status[0].split() if status else []
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


async def http_ok(host: str, port: int, path: str, tls: TlsCheck | None = None) -> bool:
    """GET `path` on a fresh connection: a 2xx status means healthy."""
    return 200 <= await http_status(host, port, path, tls) < 300


async def _closed(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.wait_closed()
    except OSError:
        return
