"""ACME: the front door gets its certificate for RMA_TLS_DOMAIN from an ACME CA, and keeps it across restarts.

The CA is a second Caddy running its own ACME server (Caddy's `acme_server` over its internal CA), so
the exchange is real ACME end to end on loopback: account, order, the TLS-ALPN challenge answered on
the edge proxy's listener, the certificate. TLS-ALPN is checked on port 443, so the test needs that
port (and root to bind it).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from procs import RmaProcess, free_port, wait_until
from rma.front.caddy import caddy_binary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
DOMAIN = "localhost"


def port_443_free() -> bool:
    try:
        with socket.create_server(("127.0.0.1", 443)):
            return True
    except OSError:
        return False


@pytest.fixture
def acme_ca(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A private ACME CA on a free port: its directory URL and its root certificate."""
    port = free_port()
    storage = tmp_path / "ca"
    config = {
        "admin": {"disabled": True}, "storage": {"module": "file_system", "root": str(storage)},
        "apps": {
            "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
            "http": {"servers": {"acme": {"listen": [f"127.0.0.1:{port}"], "tls_connection_policies": [{}],
                                          "routes": [{"handle": [{"handler": "acme_server", "ca": "local"}]}]}}},
            "tls": {"certificates": {"automate": ["127.0.0.1"]},
                    "automation": {"policies": [{"subjects": ["127.0.0.1"],
                                                 "issuers": [{"module": "internal", "ca": "local"}]}]}},
        },
    }
    (tmp_path / "ca.json").write_text(json.dumps(config))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "ca-data")}
    with (tmp_path / "ca.log").open("wb") as log:
        ca = subprocess.Popen([caddy_binary(), "run", "--config", str(tmp_path / "ca.json")], env=env,
                              stdout=log, stderr=log)
    root = storage / "pki" / "authorities" / "local" / "root.crt"
    directory = f"https://127.0.0.1:{port}/acme/local/directory"
    try:
        wait_until(lambda: root.is_file() and httpx.get(directory, verify=ssl.create_default_context(
            cafile=str(root)), timeout=2).status_code == 200, 30, what="the ACME CA's directory")
        yield directory, root
    finally:
        ca.terminate()
        ca.wait(10)


def served_certificate(root: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", 443), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=DOMAIN) as tls:
        certificate = tls.getpeercert(binary_form=True)
        assert certificate is not None
        return certificate


@pytest.mark.skipif(not port_443_free(), reason="TLS-ALPN is answered on port 443, which is taken or needs root")
def test_the_edge_gets_its_certificate_by_acme_and_keeps_it_across_a_restart(
        processes: list[RmaProcess], tmp_path: Path, acme_ca: tuple[str, Path]) -> None:
    directory, root = acme_ca
    env = {"RMA_TLS_DOMAIN": DOMAIN, "RMA_ACME_CA": directory, "RMA_ACME_CA_ROOT": str(root),
           "RMA_ACME_STORAGE": str(tmp_path / "acme"), "RMA_ACME_EMAIL": "ops@example.org"}
    args = ["edge-proxy", "--host", "127.0.0.1", "--port", "443", "--coordinator-url", f"http://127.0.0.1:{free_port()}"]
    context = ssl.create_default_context(cafile=str(root))

    def start(name: str) -> RmaProcess:
        proc = RmaProcess(args, tmp_path / f"{name}.log", env).start()
        processes.append(proc)
        # Any answer of the edge's own will do (it has no coordinator here): the handshake verified the certificate.
        wait_until(lambda: httpx.get(f"https://{DOMAIN}/health", verify=context, timeout=2).json()["service"]
                   == "edge-proxy", 60, 0.2, what=f"the edge's ACME certificate ({name}):\n{proc.log()}")
        return proc

    first = start("first")
    certificate = served_certificate(root)
    assert (tmp_path / "acme").stat().st_mode & 0o777 == 0o700
    first.stop()
    start("restarted")
    assert served_certificate(root) == certificate  # kept in RMA_ACME_STORAGE: no new order on a restart
