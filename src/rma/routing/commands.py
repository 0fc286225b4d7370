"""`rma edge-proxy` and `rma load-balancer`: every flag is also the environment variable it names."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import typer

from rma import catalog
from rma.front import FrontSettings
from rma.routing.gateway import DEFAULT_MAX_BODY, MIB, GatewaySettings, comma_list
from rma.routing.router import edge_services
from rma.routing.table import REFRESH_S

_COORDINATOR = typer.Option("http://127.0.0.1:8080", envvar="COORDINATOR_URL",
                            help="Coordinator URL; several, comma-separated, to fail over.")
_ADMIN = typer.Option(None, envvar="RMA_ADMIN_TOKEN", show_default=False,
                      help="Admin token: lets the 503 answer say why a service has no replica, and the "
                           "router report its traffic to the coordinator's dashboard.")
_TLS_CERT = typer.Option(None, "--tls-cert", envvar="RMA_TLS_CERT", show_default=False,
                         help="PEM certificate (with its chain) to serve HTTPS with, through the front door.")
_TLS_KEY = typer.Option(None, "--tls-key", envvar="RMA_TLS_KEY", show_default=False,
                        help="The certificate's PEM private key (a 0600 file).")
_REFRESH = typer.Option(REFRESH_S, envvar="ROUTING_REFRESH_INTERVAL", min=0.1,
                        help="Seconds between routing-table refreshes.")


def front_settings(cert: str | None, key: str | None) -> FrontSettings:
    """The front door's settings from the --tls-cert/--tls-key flags (or RMA_TLS_CERT/RMA_TLS_KEY)."""
    try:
        return FrontSettings.from_env(os.environ, cert, key)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="the front door (--tls-cert, --tls-key, RMA_TLS_*, "
                                                         "RMA_ACME_*, RMA_*_TIMEOUT_S, RMA_MAX_HEADER_KB)") from None


def _urls(value: str) -> tuple[str, ...]:
    urls = tuple(u.strip().rstrip("/") for u in value.split(",") if u.strip())
    bad = [u for u in urls if urlsplit(u).scheme not in ("http", "https") or not urlsplit(u).hostname]
    if not urls or bad:
        raise typer.BadParameter(f"need http(s) coordinator URLs, got {value!r}", param_hint="--coordinator-url")
    return urls


def load_balancer(
    host: str = typer.Option("127.0.0.1", envvar="LOAD_BALANCER_HOST", help="Address to listen on."),
    port: int = typer.Option(8090, envvar="LOAD_BALANCER_PORT", min=1, max=65535, help="Port to listen on."),
    coordinator_url: str = _COORDINATOR,
    admin_token: str | None = _ADMIN,
    refresh_interval: float = _REFRESH,
    tls_cert: str | None = _TLS_CERT,
    tls_key: str | None = _TLS_KEY,
    fence_callers: bool = typer.Option(False, "--fence-callers", envvar="RMA_FENCE_CALLERS",
                                       help="On the mesh, where a caller's address is its certificate's: pass a "
                                            "call on only from the workers running a service that calls it "
                                            "(notes-coa → llm-inference); 403 for any other."),
) -> None:
    """Run the load balancer: /service/{name}/{path} to a healthy replica, for internal traffic."""
    from rma.routing.app import RouterSettings, create_load_balancer, serve

    settings = RouterSettings(host, port, _urls(coordinator_url), admin_token or None, refresh_interval,
                              fence_callers)
    serve(create_load_balancer(settings), host, port, front_settings(tls_cert, tls_key))


def edge_proxy(
    host: str = typer.Option("127.0.0.1", envvar="EDGE_PROXY_HOST", help="Address to listen on."),
    port: int = typer.Option(8787, envvar="EDGE_PROXY_PORT", min=1, max=65535, help="Port to listen on."),
    coordinator_url: str = _COORDINATOR,
    admin_token: str | None = _ADMIN,
    refresh_interval: float = _REFRESH,
    api_keys: str | None = typer.Option(None, envvar="RMA_API_KEYS", show_default=False,
                                        help="Comma-separated client keys; once set, X-API-Key is required."),
    cors_origins: str | None = typer.Option(None, envvar="RMA_CORS_ORIGINS", show_default=False,
                                            help="Comma-separated origins browsers may call from ('*': any)."),
    max_body_mb: float = typer.Option(DEFAULT_MAX_BODY / MIB, envvar="RMA_MAX_BODY_MB", min=0,
                                      help="Largest request body accepted, in MiB."),
    rate_limit: float = typer.Option(100.0, envvar="RMA_RATE_LIMIT", min=0,
                                     help="Requests per second per API key, or per client address for "
                                          "requests without a valid key (0: no limit)."),
    rate_burst: float = typer.Option(200.0, envvar="RMA_RATE_BURST", min=1, help="Burst a client may send at once."),
    services: str | None = typer.Option(None, "--edge-services", envvar="RMA_EDGE_SERVICES", show_default=False,
                                        help="Comma-separated services (or short names) the edge routes, of the "
                                             f"application services; default all of them: "
                                             f"{', '.join(sorted(catalog.PUBLIC))}."),
    tls_cert: str | None = _TLS_CERT,
    tls_key: str | None = _TLS_KEY,
) -> None:
    """Run the edge proxy: the public gateway (keys, CORS, limits) in front of the routing engine."""
    from rma.routing.app import RouterSettings, create_edge_proxy, serve

    settings = RouterSettings(host, port, _urls(coordinator_url), admin_token or None, refresh_interval)
    gateway = GatewaySettings(comma_list(api_keys), comma_list(cors_origins), int(max_body_mb * MIB),
                              rate_limit, rate_burst)
    try:
        exposed = edge_services(comma_list(services))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--edge-services") from None
    serve(create_edge_proxy(settings, gateway, exposed), host, port, front_settings(tls_cert, tls_key))


def register(app: typer.Typer) -> None:
    """Add `edge-proxy` and `load-balancer` to the `rma` command line."""
    app.command("edge-proxy")(edge_proxy)
    app.command("load-balancer")(load_balancer)
