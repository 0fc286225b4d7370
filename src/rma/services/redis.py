"""redis: the Debian/upstream `redis-server`, append-only so a restarted worker keeps its data.

The password the coordinator issued goes into a config file readable by this user only, never
onto the command line, where every local user could read it in the process list. Without one
redis does not start: it would serve anyone who reaches its port.

On a pool that replicates it (rma.replication), a copy starts as a replica of the primary its service
config names (or as the primary, when it is the first), and runs a Sentinel beside it: the Sentinels'
majority promotes a replica when the primary's machine is gone, and turns a returning old primary into a
replica. Both processes read the same password from their 0600 files.
"""

from __future__ import annotations

from rma.files import write_private
from rma.replication import (
    PRIMARY_VARIABLE,
    REPLICA_NAME_VARIABLE,
    SENTINEL_DOWN_AFTER_MS,
    SENTINEL_FAILOVER_TIMEOUT_MS,
    SENTINEL_MASTER,
    SENTINEL_PORT,
    SENTINEL_QUORUM,
)
from rma.services.base import (
    LOCATION_VARIABLES,
    Context,
    Launch,
    ServiceDriver,
    probe_host,
    require_secret,
    tcp_lines,
)

SECRET_FILE = "redis-secret.conf"
SENTINEL_FILE = "sentinel.conf"  # Sentinel rewrites it as it learns the pool: it must stay writable


class Redis(ServiceDriver):
    name = "redis"
    engine = "redis-server"
    passes = (*LOCATION_VARIABLES, PRIMARY_VARIABLE, REPLICA_NAME_VARIABLE)

    def prepare(self, ctx: Context) -> None:
        secret = require_secret(ctx, self.name)
        super().prepare(ctx)
        lines = [f'requirepass "{secret}"']
        if replicated(ctx):
            primary = ctx.env.get(PRIMARY_VARIABLE, "")
            host, port = primary.rsplit(":", 1) if primary else (ctx.host, str(ctx.port))
            # Every copy can follow a primary (Sentinel may make it a replica), and says where it is reached.
            # A new replica is synced at once, not after the default 5 s wait for others to batch with.
            lines += [f'masterauth "{secret}"', f"replica-announce-ip {ctx.host}", "repl-diskless-sync-delay 0"]
            if (host, port) != (ctx.host, str(ctx.port)):
                lines.append(f"replicaof {host} {port}")
            write_private(ctx.data_dir / SENTINEL_FILE, sentinel_config(ctx.host, SENTINEL_PORT, host, int(port),
                                                                        secret, ctx.data_dir))
        write_private(ctx.data_dir / SECRET_FILE, "\n".join(lines) + "\n")

    def launch(self, ctx: Context) -> Launch:
        # Loopback too for local clients, but not for a copy: its Sentinels and replicas know it by its address.
        loopback = ctx.host in ("127.0.0.1", "::1") or replicated(ctx)
        binds = [ctx.host] if loopback else [ctx.host, "127.0.0.1"]
        server = (
            "redis-server", str(ctx.data_dir / SECRET_FILE),
            "--port", str(ctx.port),
            "--bind", *binds,
            "--dir", str(ctx.data_dir),
            "--appendonly", "yes",
            "--save", "",  # the append-only file is the persistence; no RDB snapshots
            "--daemonize", "no",
            "--logfile", "",  # to stdout: the supervisor keeps the log file
        )
        companions = (Launch(("redis-server", str(ctx.data_dir / SENTINEL_FILE), "--sentinel"), cwd=ctx.data_dir),) \
            if replicated(ctx) else ()
        return Launch(server, cwd=ctx.data_dir, companions=companions)

    async def healthy(self, ctx: Context) -> bool:
        """PING after AUTH: redis loading its AOF accepts connections but answers LOADING."""
        if not ctx.secret:
            return False
        answers = await tcp_lines(probe_host(ctx.host), ctx.port, f"AUTH {ctx.secret}\r\nPING\r\n".encode(), 2)
        return bool(answers) and answers[-1].startswith(b"+PONG")


def replicated(ctx: Context) -> bool:
    """A copy of a replicated redis: the coordinator names every copy of a replicated store (its worker id)."""
    return bool(ctx.env.get(REPLICA_NAME_VARIABLE))


def sentinel_config(host: str, port: int, primary_host: str, primary_port: int, secret: str, folder: object) -> str:
    """A Sentinel on host:port watching the primary; its own commands and its peers' take the store's password."""
    return "\n".join((
        f"port {port}", f"bind {host}", f"sentinel announce-ip {host}", f"dir {folder}", "daemonize no",
        'logfile ""', f'requirepass "{secret}"', f'sentinel sentinel-pass "{secret}"',
        f"sentinel monitor {SENTINEL_MASTER} {primary_host} {primary_port} {SENTINEL_QUORUM}",
        f'sentinel auth-pass {SENTINEL_MASTER} "{secret}"',
        f"sentinel down-after-milliseconds {SENTINEL_MASTER} {SENTINEL_DOWN_AFTER_MS}",
        f"sentinel failover-timeout {SENTINEL_MASTER} {SENTINEL_FAILOVER_TIMEOUT_MS}",
        f"sentinel parallel-syncs {SENTINEL_MASTER} 1",
    )) + "\n"
