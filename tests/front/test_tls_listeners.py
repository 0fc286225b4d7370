"""TLS on every public listener, through the front door: verified, HTTP/2, never plain, never unverified."""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import httpx
import psutil
import pytest

from front.tls_pool import SERVICE, TlsPool, start_tls_pool
from procs import RmaProcess, free_port, wait_until
from rma.front.local_ca import make_local_ca

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pool(processes: list[RmaProcess], tmp_path: Path) -> TlsPool:
    return start_tls_pool(processes, tmp_path)


def alpn(url: str, context: ssl.SSLContext) -> str | None:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        return tls.selected_alpn_protocol()


def test_every_listener_serves_verified_tls_with_http2_and_routes_through_it(pool: TlsPool) -> None:
    with pool.client() as client:
        for name, url in pool.urls().items():
            assert client.get(f"{url}/health").status_code == 200, name
            assert alpn(url, pool.context()) == "h2", name
        for router in (pool.edge, pool.load_balancer):
            echoed = client.get(f"{router}/service/{SERVICE}/echo?x=1")
            assert echoed.status_code == 200, echoed.text
        # The coordinator's own /service too, and the replica sees the scheme the client used.
        via_coordinator = client.get(f"{pool.coordinator}/service/{SERVICE}/echo")
        assert via_coordinator.status_code == 200, via_coordinator.text
        assert dict(via_coordinator.json()["headers"]).get("x-forwarded-proto") == "https"


def test_a_client_without_the_ca_is_refused_and_plain_http_gets_no_service(pool: TlsPool) -> None:
    """HAProxy (the front door here) closes a plain request on its TLS port without an answer (Caddy says 400)."""
    for url in pool.urls().values():
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/health", timeout=5, trust_env=False)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url.replace("https://", "http://") + f"/service/{SERVICE}/echo", timeout=5)


def test_the_engine_behind_the_front_door_listens_on_no_port_of_its_own(pool: TlsPool) -> None:
    """Only the front door's server listens on the network; the engine's socket is in a folder only its user may
    enter."""
    for name, proc in pool.listeners.items():
        engine = psutil.Process(proc.pid)
        inet = [c for c in engine.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        assert inet == [], f"{name} listens itself: {inet}"
        sockets = [c.laddr for c in engine.net_connections("unix") if c.laddr]
        assert sockets, name
        folder = Path(sockets[0]).parent
        assert folder.stat().st_mode & 0o777 == 0o700
        assert folder.stat().st_uid == os.geteuid()


def test_loopback_is_still_the_clients_address_behind_the_front_door(pool: TlsPool) -> None:
    """The coordinator's loopback-only admin routes see the client's own address, not the front door's relay;
    an X-Forwarded-For the client sends is not believed."""
    with pool.client() as client:
        assert client.get(f"{pool.coordinator}/api/admin/workers").status_code == 200
        echoed = client.get(f"{pool.edge}/service/{SERVICE}/echo", headers={"X-Forwarded-For": "203.0.113.9"})
        assert dict(echoed.json()["headers"])["x-forwarded-for"] == "127.0.0.1"


def start_tls_coordinator(processes: list[RmaProcess], tmp_path: Path, name: str,
                          engine: str) -> tuple[RmaProcess, int]:
    """A coordinator behind the front door running `engine`; returns it and that server's pid."""
    ca = make_local_ca(tmp_path / "tls", ["127.0.0.1"])
    port = free_port()
    proc = RmaProcess(["coordinator", "--port", str(port), "--data-dir", str(tmp_path / name)],
                      tmp_path / f"{name}.log", {"RMA_TLS_CERT": str(ca.cert), "RMA_TLS_KEY": str(ca.key),
                                                 "RMA_FRONT_ENGINE": engine}).start()
    processes.append(proc)
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    wait_until(lambda: httpx.get(f"https://127.0.0.1:{port}/health", verify=context, timeout=2).status_code == 200,
               30, what=f"{name} over TLS")
    server = [child.pid for child in psutil.Process(proc.pid).children() if child.name() == engine]
    assert len(server) == 1, server
    return proc, server[0]


@pytest.mark.parametrize("server", ["haproxy", "caddy"])
def test_the_front_door_and_its_engine_stop_together(processes: list[RmaProcess], tmp_path: Path, server: str) -> None:
    """An engine killed with SIGKILL leaves no front door holding its port; a front door that dies stops its engine
    (exit 1), so the worker's supervisor restarts the pair."""
    engine, door = start_tls_coordinator(processes, tmp_path, "killed-engine", server)
    os.kill(engine.pid, 9)  # the engine alone, as the OOM killer would: not its process group
    wait_until(lambda: not psutil.pid_exists(door) or psutil.Process(door).status() == psutil.STATUS_ZOMBIE, 10,
               what=f"{server} gone after its engine's SIGKILL")
    engine, door = start_tls_coordinator(processes, tmp_path, "killed-door", server)
    wait_until(lambda: f"front door ({server}) on" in engine.log(), 10, what="the engine saw its front door start")
    os.kill(door, 9)
    assert engine.proc is not None and engine.proc.wait(10) == 1
    assert f"the front door ({server}) stopped" in engine.log()


def test_a_streamed_answer_arrives_as_it_is_written_through_the_front_door(pool: TlsPool) -> None:
    """Server-sent events through the front door and the edge: the first event long before the stream ends."""
    with pool.client() as client, client.stream("GET", f"{pool.edge}/service/{SERVICE}/events?n=4&gap=0.5") as answer:
        started = time.monotonic()
        arrivals = [time.monotonic() - started for line in answer.iter_lines() if line.startswith("data:")]
    assert len(arrivals) == 4
    assert arrivals[0] < 0.4 and arrivals[-1] > 1.3, arrivals


def test_an_answer_slower_than_the_idle_timeout_still_arrives(pool: TlsPool) -> None:
    """The idle timeout (2 s here) is for a client that sends nothing; an answer whose events are 3 s apart (a slow
    completion, a watch) is the server's time, and reaches the client whole."""
    with pool.client() as client, client.stream("GET", f"{pool.edge}/service/{SERVICE}/events?n=2&gap=3") as answer:
        events = [line for line in answer.iter_lines() if line.startswith("data:")]
    assert len(events) == 2
