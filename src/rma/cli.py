"""The `rma` command line. Every flag can also be set through the environment variable it names."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import typer

from rma.coordinator.mesh import MeshSettings
from rma.coordinator.state import CoordinatorSettings
from rma.routing.commands import register as register_routing_commands
from rma.worker.commands import register as register_worker_commands

app = typer.Typer(help="RMA pool: coordinator, universal worker and operator tools.", no_args_is_help=True)


@app.command()
def coordinator(
    host: str = typer.Option("127.0.0.1", envvar="COORDINATOR_HOST", help="Address to listen on."),
    port: int = typer.Option(8080, envvar="COORDINATOR_PORT", help="Port to listen on."),
    data_dir: Path = typer.Option(Path(".rma/coordinator"), envvar="COORDINATOR_DATA_DIR",
                                  help="Registry folder."),
    store: str | None = typer.Option(None, "--store", envvar="RMA_STORE_URL", show_default=False,
                                     help="Where the pool is kept: sqlite:///path (default: registry.sqlite3 in "
                                          "the data dir), or etcd://host:2379[,host:2379...], a store the "
                                          "coordinator's replicas share."),
    heartbeat_interval: float = typer.Option(5.0, envvar="HEARTBEAT_INTERVAL", min=0.1,
                                             help="Seconds between worker heartbeats."),
    grace_intervals: float = typer.Option(3.0, envvar="HEARTBEAT_GRACE_INTERVALS", min=1.0,
                                          help="Missed intervals before a worker counts as down."),
    join_token: str | None = typer.Option(None, envvar="RMA_JOIN_TOKEN", show_default=False,
                                          help="Token workers need to join (unset: loopback only)."),
    admin_token: str | None = typer.Option(None, envvar="RMA_ADMIN_TOKEN", show_default=False,
                                           help="Token for /api/admin (unset: loopback only)."),
    api_keys: str = typer.Option("", envvar="RMA_API_KEYS", show_default=False,
                                 help="Comma-separated client API keys for the coordinator's own /service route, "
                                      "as the edge proxy's; they do not read stores' credentials."),
    store_keys: str = typer.Option("", envvar="RMA_STORE_KEYS", show_default=False,
                                   help="Comma-separated keys that applications send as X-API-Key to read "
                                        "stores' credentials in discovery."),
    vouched_networks: str = typer.Option("", envvar="RMA_VOUCHED_NETWORKS", show_default=False,
                                         help="Comma-separated networks (CIDRs) whose workers may advertise an "
                                              "address other than the one they connect from (NAT, tunnels)."),
    tls_cert: str | None = typer.Option(None, "--tls-cert", envvar="RMA_TLS_CERT", show_default=False,
                                        help="PEM certificate (with its chain) to serve HTTPS with, through the "
                                             "front door."),
    tls_key: str | None = typer.Option(None, "--tls-key", envvar="RMA_TLS_KEY", show_default=False,
                                       help="The certificate's PEM private key (a 0600 file)."),
    mesh_network: str | None = typer.Option(None, envvar="RMA_MESH_NETWORK", show_default=False,
                                            help="Run the pool on a Nebula mesh with overlay addresses from this "
                                                 "IPv4 network (e.g. 100.64.0.0/16): this coordinator is its CA."),
    mesh_certificate_hours: float = typer.Option(24.0, envvar="RMA_MESH_CERT_HOURS", min=0.01,
                                                 help="A worker's mesh certificate lasts this long, renewed over "
                                                      "heartbeats at half of it."),
    snapshot_interval: float = typer.Option(300.0, envvar="RMA_SNAPSHOT_INTERVAL_S", min=1.0,
                                            help="Where stores replicate: seconds between the snapshots the holders of "
                                                 "chromadb and neo4j copy to the pool's S3."),
    restore_grace: float = typer.Option(300.0, envvar="RMA_RESTORE_GRACE_S", min=0.0,
                                        help="Seconds chromadb or neo4j waits for a vanished holder before another "
                                             "worker restores its newest snapshot (what was written since is lost)."),
) -> None:
    """Run the coordinator: worker registry, gap-filling placement, health timers."""
    from rma.coordinator.auth import parse_networks
    from rma.coordinator.server import serve
    from rma.coordinator.store import store_location
    from rma.routing.commands import front_settings

    try:
        vouched = parse_networks(vouched_networks)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--vouched-networks / RMA_VOUCHED_NETWORKS") from None
    try:
        store_location(store, data_dir)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--store / RMA_STORE_URL") from None
    try:
        mesh = None if not mesh_network else MeshSettings(IPv4Network(mesh_network),
                                                          round(mesh_certificate_hours * 3600))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mesh-network / RMA_MESH_NETWORK") from None
    serve(CoordinatorSettings(host=host, port=port, data_dir=data_dir, store_url=store or None,
                              heartbeat_interval=heartbeat_interval,
                              grace_intervals=grace_intervals, join_token=join_token or None,
                              admin_token=admin_token or None, api_keys=_keys(api_keys), store_keys=_keys(store_keys),
                              vouched_networks=vouched, mesh=mesh, snapshot_interval=snapshot_interval,
                              restore_grace=restore_grace), front_settings(tls_cert, tls_key))


def _keys(value: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in value.split(",") if k.strip())


@app.command()
def status(
    coordinator: str = typer.Option("http://127.0.0.1:8080", "--coordinator", envvar="COORDINATOR_URL",
                                    help="Coordinator URL."),
    admin_token: str | None = typer.Option(None, envvar="RMA_ADMIN_TOKEN", show_default=False),
    wide: bool = typer.Option(False, "--wide", envvar="RMA_STATUS_WIDE",
                              help="Every column and the gap report's full reasons."),
    as_json: bool = typer.Option(False, "--json", envvar="RMA_STATUS_JSON",
                                 help='The raw admin answers, {"workers": ..., "gaps": ...}, for scripts.'),
) -> None:
    """Show the pool's workers and service gaps as tables that fit 80 columns."""
    from rma.status import show_status

    raise typer.Exit(show_status(coordinator.split(",")[0].strip(), admin_token, wide=wide, as_json=as_json))


@app.command()
def discover(
    service: str = typer.Argument(..., help="A catalogue service, e.g. redis, postgres, chromadb, llm-inference."),
    coordinator: str = typer.Option("http://127.0.0.1:8080", "--coordinator", envvar="COORDINATOR_URL",
                                    help="Coordinator URL."),
    admin_token: str | None = typer.Option(None, envvar="RMA_ADMIN_TOKEN", show_default=False),
    api_key: str | None = typer.Option(None, envvar="RMA_API_KEY", show_default=False,
                                       help="A client API key (X-API-Key) that may read stores' credentials."),
    as_json: bool = typer.Option(False, "--json", help="The whole discovery answer, every replica."),
) -> None:
    """Print where a service answers: a store's connection URL (with its credential), else its URL."""
    from rma.discover import show_discovery

    raise typer.Exit(show_discovery(coordinator.split(",")[0].strip(), service, admin_token, api_key, as_json))


@app.command("tls-ca")
def tls_ca(
    folder: Path = typer.Option(Path(".rma/tls"), "--dir", help="Folder for the CA and the server certificate."),
    names: list[str] = typer.Option(["localhost", "127.0.0.1", "::1"], "--name",
                                    help="A DNS name or IP address the server certificate covers (repeat)."),
) -> None:
    """Make a private CA and a server certificate for a pool on one machine or a LAN.

    Serve it with RMA_TLS_CERT/RMA_TLS_KEY (the coordinator, edge proxy, load balancer); give
    workers, routers and clients the CA as RMA_CA_FILE (curl: --cacert; Python: SSL_CERT_FILE).
    """
    from rma.front.local_ca import make_local_ca

    made = make_local_ca(folder, names)
    typer.echo(f"RMA_TLS_CERT={made.cert}\nRMA_TLS_KEY={made.key}\nRMA_CA_FILE={made.ca_file}")


@app.command("mesh-revoke")
def mesh_revoke(
    worker_id: str = typer.Argument(..., help="The worker (or client member) to cut off the mesh."),
    coordinator: str = typer.Option("http://127.0.0.1:8080", "--coordinator", envvar="COORDINATOR_URL",
                                    help="Coordinator URL."),
    admin_token: str | None = typer.Option(None, envvar="RMA_ADMIN_TOKEN", show_default=False),
) -> None:
    """Revoke a worker's mesh certificates: every node drops it within seconds, and it never joins again."""
    from rma.mesh_admin import AdminRefused, revoke

    try:
        fingerprints = revoke(coordinator.split(",")[0].strip(), admin_token, worker_id)
    except AdminRefused as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {worker_id}: {', '.join(fingerprints) or 'no live certificate'}")


@app.command("client-cert")
def client_cert(
    name: str = typer.Argument(..., help="The application's name on the mesh."),
    folder: Path = typer.Option(Path(".rma/mesh-client"), "--dir", help="Where its key, certificate and config go."),
    coordinator: str = typer.Option("http://127.0.0.1:8080", "--coordinator", envvar="COORDINATOR_URL",
                                    help="Coordinator URL."),
    admin_token: str | None = typer.Option(None, envvar="RMA_ADMIN_TOKEN", show_default=False),
) -> None:
    """Admit an application's server to the mesh (run it there: its private key is made here and stays)."""
    from rma.mesh_admin import AdminRefused, client_member

    try:
        config = client_member(coordinator.split(",")[0].strip(), admin_token, name, folder)
    except AdminRefused as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{name} is a client member: run `sudo nebula -config {config}`, then use the addresses "
               "`rma discover` gives")


register_worker_commands(app)
register_routing_commands(app)
