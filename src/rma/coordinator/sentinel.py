"""The coordinator's own Sentinel for a replicated redis: a voter beside the copies' Sentinels (two storage
workers and a coordinator make the three a majority needs), and the one it asks which copy is primary.

It starts once a copy serves and the store has its password, watching the copy the registry names primary,
on a free port of the coordinator's address (the Sentinels find each other through the primary). Asked every
POLL_S, its answer names the primary in discovery and in every service config's REDIS_HOST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from rma.coordinator.registry import Registry
from rma.files import write_private
from rma.replication import SENTINEL_MASTER
from rma.services.accounts import as_server
from rma.services.base import free_port, tcp_lines
from rma.services.redis import SENTINEL_FILE, sentinel_config

log = logging.getLogger("rma.coordinator")

POLL_S = 0.25
SERVICE = "redis"


class CoordinatorSentinel:
    def __init__(self, folder: Path, host: str) -> None:
        self.folder = folder
        self.host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    async def follow(self, registry: Registry) -> None:
        """Start the Sentinel when there is a primary to watch, then name the primary it says, for ever."""
        try:
            while True:
                await asyncio.sleep(POLL_S)
                secret = registry.secrets.secret_for(SERVICE)
                if secret is None:
                    continue
                if self.process is None or self.process.returncode is not None:
                    await self._start(registry, secret)
                    continue
                primary = await self.primary(secret)
                if primary is not None:
                    registry.elected(SERVICE, registry.serving_at(SERVICE, *primary))
        finally:
            if self.process is not None and self.process.returncode is None:
                self.process.terminate()
                with contextlib.suppress(ProcessLookupError):
                    await self.process.wait()

    async def _start(self, registry: Registry, secret: str) -> None:
        worker_id = registry.primary_of(SERVICE)
        address = registry.address_of(SERVICE, worker_id) if worker_id is not None else None
        if address is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        path = self.folder / SENTINEL_FILE
        write_private(path, sentinel_config(self.host, self.port, *address, secret, self.folder))
        log.info("redis: a Sentinel on %s:%d watches the primary at %s:%d", self.host, self.port, *address)
        with open(self.folder / "sentinel.log", "ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                *as_server(("redis-server", str(path), "--sentinel"), None, "SIGTERM"),
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output, cwd=self.folder,
                start_new_session=True)

    async def primary(self, secret: str) -> tuple[str, int] | None:
        """The primary's address as this Sentinel knows it (after a failover: the promoted copy)."""
        ask = f"AUTH {secret}\r\nSENTINEL get-master-addr-by-name {SENTINEL_MASTER}\r\n".encode()
        lines = await tcp_lines(self.host, self.port, ask, 6)
        # +OK, then *2, $len, host, $len, port
        if len(lines) < 6 or not lines[1].startswith(b"*2"):
            return None
        try:
            return lines[3].strip().decode(), int(lines[5].strip())
        except ValueError:
            return None
