"""A pool whose every public listener is behind the front door with TLS, from a local CA made for the test.

The coordinator, an edge proxy and a load balancer serve HTTPS (Caddy in front of each); a backend
plays a worker serving ner-extraction, registered over HTTPS, and every client verifies the CA.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from procs import RmaProcess, free_port, wait_until
from rma.front.local_ca import LocalCa, make_local_ca
from routing.pool import Backend, start_backend

SERVICE = "ner-extraction"


@dataclass
class TlsPool:
    ca: LocalCa
    env: dict[str, str]  # what every process of the pool was given (certificate, CA, the front door's limits)
    coordinator: str  # https URLs
    edge: str
    load_balancer: str
    backend: Backend
    listeners: dict[str, RmaProcess]  # "coordinator", "edge", "load_balancer" → the process behind that URL

    def client(self, **options: object) -> httpx.Client:
        """An httpx client that trusts the pool's CA (and only it)."""
        return httpx.Client(verify=self.context(), timeout=10, trust_env=False, **options)  # type: ignore[arg-type]

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.ca_file))

    def urls(self) -> dict[str, str]:
        return {"coordinator": self.coordinator, "edge": self.edge, "load_balancer": self.load_balancer}


def _wait_https(url: str, context: ssl.SSLContext, proc: RmaProcess, what: str) -> None:
    try:
        wait_until(lambda: httpx.get(f"{url}/health", verify=context, timeout=2).status_code == 200, 30, 0.1,
                   what=f"{what} /health over TLS")
    except AssertionError:
        raise AssertionError(f"{what} did not start:\n{proc.log()}") from None


def start_tls_pool(processes: list[RmaProcess], tmp_path: Path, extra_env: dict[str, str] | None = None) -> TlsPool:
    """Coordinator, edge proxy, load balancer behind TLS, and a backend serving ner-extraction, routed by both."""
    ca = make_local_ca(tmp_path / "tls", ["localhost", "127.0.0.1"])
    env = {"RMA_TLS_CERT": str(ca.cert), "RMA_TLS_KEY": str(ca.key), "RMA_CA_FILE": str(ca.ca_file),
           "RMA_HEADER_TIMEOUT_S": "2", "RMA_IDLE_TIMEOUT_S": "2", "ROUTING_REFRESH_INTERVAL": "0.5",
           **(extra_env or {})}
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    ports = {name: free_port() for name in ("coordinator", "edge", "load_balancer")}
    urls = {name: f"https://127.0.0.1:{port}" for name, port in ports.items()}
    data = tmp_path / "coordinator"
    data.mkdir(parents=True, exist_ok=True)
    commands = {
        "coordinator": ["coordinator", "--host", "127.0.0.1", "--port", str(ports["coordinator"]),
                        "--data-dir", str(data), "--heartbeat-interval", "1"],
        "edge": ["edge-proxy", "--port", str(ports["edge"]), "--coordinator-url", urls["coordinator"]],
        "load_balancer": ["load-balancer", "--port", str(ports["load_balancer"]),
                          "--coordinator-url", urls["coordinator"]],
    }
    listeners: dict[str, RmaProcess] = {}
    for name, args in commands.items():
        proc = RmaProcess(args, tmp_path / f"{name}.log", env).start()
        processes.append(proc)
        listeners[name] = proc
        _wait_https(urls[name], context, proc, name)
    backend = start_backend(processes, tmp_path, "tls-backend", urls["coordinator"], SERVICE, env)
    for router in ("edge", "load_balancer"):
        wait_until(lambda r=router: httpx.get(f"{urls[r]}/service/{SERVICE}/health", verify=context,
                                              timeout=2).status_code == 200, 20, 0.1,
                   what=f"{router} routes {SERVICE} over TLS")
    return TlsPool(ca, env, urls["coordinator"], urls["edge"], urls["load_balancer"], backend, listeners)
