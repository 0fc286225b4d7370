"""The routers' own CPU per proxied request, without sockets: the Python the fast path runs.

Under wrk on a 2-core machine, req/s moves with whatever else runs (the load generator, the
backend, other jobs); this measures only the proxy's code. The real server protocol and fast path
run against in-memory transports: a client request goes in, the head the replica would receive
comes out, the replica's answer goes in, the client's answer comes out, the connection goes back
to the pool. Kernel work (four socket calls per request, the event loop's polling) is not counted:
`bench/proxy_overhead.py` measures the whole, `bench/tcp_relay.py` the floor of that part.

    .venv/bin/python bench/fastpath_cost.py [--requests 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from rma.routing.app import RoutingApp
from rma.routing.fastpath import FastPath
from rma.routing.router import ServiceRouter
from rma.routing.server import HttpProtocol
from rma.routing.table import CallableSource
from rma.routing.upstream import Connection

REPLICA = "http://127.0.0.1:9"
# What wrk sends, and what a typical client library sends.
REQUESTS = {
    "wrk (Host only)": b"GET /service/ner-extraction/kb HTTP/1.1\r\nHost: 127.0.0.1:8787\r\n\r\n",
    "httpx (6 headers)": (b"GET /service/ner-extraction/kb?limit=5 HTTP/1.1\r\nHost: 127.0.0.1:8787\r\n"
                          b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
                          b"User-Agent: python-httpx/0.28.1\r\nx-request-id: 5f1c2a\r\n\r\n"),
}
# nginx's answer to a 1 KB static file, as the replica in bench/proxy_overhead.py sends it.
ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 23:00:00 GMT\r\n"
          b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
          b"Last-Modified: Sat, 28 Nov 2026 22:00:00 GMT\r\nConnection: keep-alive\r\n"
          b'ETag: "6929ab40-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 1024)


class MemoryTransport:
    """Enough of an asyncio transport for the protocols: writes are kept, the rest does nothing."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


async def rounds(request: bytes, count: int, repeat: int) -> list[float]:
    table = {"ner-extraction": [{"worker_id": "w", "url": REPLICA, "host": "127.0.0.1", "port": 9, "load": 0}]}
    router = ServiceRouter(CallableSource(lambda: table))
    fast = FastPath(router)
    client_side = MemoryTransport()
    client = HttpProtocol(RoutingApp("edge-proxy", router, router), asyncio.get_running_loop(), fast)
    client.connection_made(client_side)  # type: ignore[arg-type]
    replica_side = MemoryTransport()
    replica = Connection(REPLICA)
    replica.connection_made(replica_side)  # type: ignore[arg-type]
    router.forwarder.pool.put(replica)
    times = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(count):
            client.data_received(request)
            replica.data_received(ANSWER)
        times.append((time.process_time() - started) / count * 1e6)
        if not client_side.written[-1].endswith(b"x" * 64) or len(replica_side.written) < count:
            raise SystemExit("the fast path did not forward the requests: the bench measures nothing")
        client_side.written.clear()
        replica_side.written.clear()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU per proxied request in the routers' own code (no sockets), best of {args.rounds} rounds "
          f"of {args.requests}")
    for name, request in REQUESTS.items():
        times = asyncio.run(rounds(request, args.requests, args.rounds))
        print(f"  {name:<20} {min(times):6.1f} µs   (median {sorted(times)[len(times) // 2]:.1f})")


if __name__ == "__main__":
    main()
