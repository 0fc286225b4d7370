"""Hostile input at the listeners a replicated store adds between storage workers: Patroni's REST API, each copy's
Sentinel and SeaweedFS's filer. Whoever reaches them without the store's secret changes nothing, and a flood of
garbage or half-sent requests leaves them serving the pool."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from procs import wait_until
from rma.replication import PATRONI_API_PORT, SENTINEL_MASTER, SENTINEL_PORT
from rma.services.seaweedfs import filer_address
from services.test_s3_store import grpc_refuses_a_client_without_a_certificate
from store_failover import StorePool, patroni_missing, store_pool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
if (reason := patroni_missing()) is not None:
    pytestmark.append(pytest.mark.skip(reason=reason))

GARBAGE = b"\x00\xff" * (4 << 20)  # 8 MB
HALF_SENT = 50  # connections that send part of a request and hold it open


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorePool]:
    """Two storage workers with every replicated store on both, each with its primary."""
    with store_pool(tmp_path_factory.mktemp("listeners"), 2) as built:
        built.settled(2)
        for service in ("redis", "minio"):
            wait_until(lambda service=service: len(built.roles(service)) == 2 and built.primary(service), 120, 0.5,
                       what=f"two {service} copies")
        yield built


def primary_host(pool: StorePool, service: str) -> str:
    primary = pool.primary(service)
    return str(next(r["host"] for r in pool.discover(service)["workers"] if r["worker_id"] == primary))


@contextlib.contextmanager
def half_sent(host: str, port: int, start: bytes) -> Iterator[None]:
    """HALF_SENT connections that each sent `start` and nothing more, held open."""
    held = []
    try:
        for _ in range(HALF_SENT):
            sock = socket.create_connection((host, port), timeout=2)
            sock.sendall(start)
            held.append(sock)
        yield
    finally:
        for sock in held:
            sock.close()


def send_garbage(host: str, port: int) -> None:
    """8 MB of bytes that are no request; the server may close the connection at any point."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(GARBAGE)
        sock.settimeout(2)
        sock.recv(4096)


def test_patroni_api_changes_nothing_without_the_secret_and_outlasts_garbage(pool: StorePool) -> None:
    host = primary_host(pool, "postgres")
    api = f"http://{host}:{PATRONI_API_PORT}"
    primary = pool.primary()
    for method, path in (("POST", "/restart"), ("POST", "/reinitialize"), ("POST", "/failover"),
                         ("POST", "/switchover"), ("PATCH", "/config"), ("PUT", "/config"), ("DELETE", "/restart")):
        answer = httpx.request(method, f"{api}{path}", json={"leader": primary, "candidate": "s9"}, timeout=5)
        assert answer.status_code == 401, f"{method} {path}: {answer.status_code} {answer.text[:200]}"
    wrong = httpx.post(f"{api}/failover", json={"candidate": "s9"}, auth=("postgres", "not-the-secret"), timeout=5)
    assert wrong.status_code == 401
    secret = pool.discover("postgres")["workers"][0]["secret"]
    assert secret and secret not in httpx.get(f"{api}/config", timeout=5).text  # an open read gives no password
    send_garbage(host, PATRONI_API_PORT)
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{api}/failover", content=GARBAGE, timeout=10)
    with half_sent(host, PATRONI_API_PORT, b"POST /failover HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"):
        started = time.monotonic()
        assert httpx.get(f"{api}/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 2
    assert pool.primary() == primary


def test_sentinel_obeys_no_one_without_the_secret_and_outlasts_garbage(pool: StorePool) -> None:
    host = primary_host(pool, "redis")
    primary = pool.primary("redis")
    secret = pool.discover("redis")["workers"][0]["secret"]
    stranger = redis.Redis(host=host, port=SENTINEL_PORT, socket_timeout=2)
    for command in (("PING",), ("SENTINEL", "FAILOVER", SENTINEL_MASTER), ("SENTINEL", "REMOVE", SENTINEL_MASTER),
                    ("SENTINEL", "SET", SENTINEL_MASTER, "quorum", "1"), ("CONFIG", "GET", "*")):
        with pytest.raises(redis.AuthenticationError):
            stranger.execute_command(*command)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=host, port=SENTINEL_PORT, password="not-the-secret", socket_timeout=2).ping()
    send_garbage(host, SENTINEL_PORT)
    with contextlib.suppress(OSError), socket.create_connection((host, SENTINEL_PORT), timeout=2) as sock:
        sock.sendall(b"*1\r\n$999999999999\r\n")  # a bulk string of a terabyte, announced
        sock.recv(4096)
    sentinel = redis.Redis(host=host, port=SENTINEL_PORT, password=secret, socket_timeout=2)
    with half_sent(host, SENTINEL_PORT, b"*3\r\n$8\r\nSENTINEL\r\n"):
        assert sentinel.ping()
    assert pool.primary("redis") == primary


def test_the_s3_filer_peers_dial_takes_no_one_without_the_store_keys(pool: StorePool) -> None:
    [copy] = [r for r in pool.discover("minio")["workers"] if r["role"] == "replica"]
    address = filer_address(copy["host"], copy["port"])
    filer, grpc = address.split(":")[1].split(".")
    assert grpc_refuses_a_client_without_a_certificate(copy["host"], int(grpc))
    url = f"http://{copy['host']}:{filer}"
    assert httpx.get(f"{url}/buckets/", timeout=5).status_code == 401  # the filer's reads need a signed token
    assert httpx.post(f"{url}/buckets/letters/planted", content=b"x", timeout=5).status_code == 401
    send_garbage(copy["host"], int(filer))
    send_garbage(copy["host"], int(grpc))
    wait_until(lambda: pool.roles("minio").get(copy["worker_id"]) == "replica", 10, what="the copy still serving")
