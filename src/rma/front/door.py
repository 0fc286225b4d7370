"""The front door's process: HAProxy or Caddy on the public address, beside the engine it relays to.

The server relays each request to the engine on a unix socket in a private folder (0700), so the
only way to the engine is the front door. It dies with the engine (Linux's PR_SET_PDEATHSIG), and
the engine learns when it stops on its own (`FrontDoor.exited`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import tempfile
from pathlib import Path

from rma.front.caddy import caddy_command
from rma.front.haproxy import haproxy_command
from rma.front.relay import listen_address
from rma.front.settings import FrontSettings

log = logging.getLogger("rma.front")
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
PR_SET_PDEATHSIG = 1
COMMANDS = {"caddy": caddy_command, "haproxy": haproxy_command}


def _die_with_parent() -> None:
    """In the server's process before it starts: the kernel stops it when the engine dies, even by SIGKILL,
    so a crashed engine never leaves a front door holding its port."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class FrontDoor:
    """`async with FrontDoor(settings, host, port) as door:` the front door on host:port, relaying to
    `door.upstream`; `settings.engine` says which server.

    The engine listens on `door.upstream` before entering (the server checks nothing at start, but
    the first request would fail). `door.exited` completes when the server stops on its own.
    """

    def __init__(self, settings: FrontSettings, host: str, port: int) -> None:
        self.settings, self.host, self.port = settings, host, port
        self.engine = settings.engine
        self.folder = Path(tempfile.mkdtemp(prefix="rma-front-"))  # 0700: the engine's socket is ours alone
        self.upstream = self.folder / "engine.sock"
        self.process: asyncio.subprocess.Process | None = None
        self.exited: asyncio.Task[int] | None = None
        self.log_file = self.folder / "errors.log"  # what the server wrote to stderr: errors and warnings

    def errors(self) -> str:
        """The end of what the server logged: why it stopped."""
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def __aenter__(self) -> FrontDoor:
        argv, env = COMMANDS[self.engine](self.settings, self.host, self.port, self.upstream, self.folder)
        with self.log_file.open("wb") as errors:
            self.process = await asyncio.create_subprocess_exec(
                *argv, env=env, preexec_fn=_die_with_parent,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=errors)
        self.exited = asyncio.create_task(self.process.wait())
        await self._until_listening()
        log.info("front door (%s) on %s://%s, relaying to the engine", self.engine, self.settings.scheme(),
                 listen_address(self.host, self.port))
        return self

    async def _until_listening(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        probe = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        while loop.time() < deadline:
            assert self.exited is not None and self.process is not None
            if self.exited.done():
                raise RuntimeError(f"{self.engine} exited at start: {self.errors()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(probe, self.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.engine} did not listen on {listen_address(self.host, self.port)} "
                           f"within {START_TIMEOUT_S:g} s")

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.process is not None and self.process.returncode is None:
                self.process.terminate()
                try:
                    await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    self.process.kill()
                    await self.process.wait()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
