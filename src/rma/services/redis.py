"""redis: the Debian/upstream `redis-server`, append-only so a restarted worker keeps its data."""

from __future__ import annotations

from rma.services.base import Context, Launch, ServiceDriver, probe_host, tcp_exchange


class Redis(ServiceDriver):
    name = "redis"
    engine = "redis-server"

    def launch(self, ctx: Context) -> Launch:
        binds = [ctx.host] if ctx.host in ("127.0.0.1", "::1") else [ctx.host, "127.0.0.1"]
        return Launch(
            (
                "redis-server",
                "--port", str(ctx.port),
                "--bind", *binds,
                "--dir", str(ctx.data_dir),
                "--appendonly", "yes",
                "--save", "",  # the append-only file is the persistence; no RDB snapshots
                "--daemonize", "no",
                "--logfile", "",  # to stdout: the supervisor keeps the log file
            ),
            cwd=ctx.data_dir,
        )

    async def healthy(self, ctx: Context) -> bool:
        """A TCP connect is not enough: redis loading its AOF accepts connections but answers LOADING."""
        return await tcp_exchange(probe_host(ctx.host), ctx.port, b"PING\r\n", b"+PONG")
