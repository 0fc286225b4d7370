"""redis: the Debian/upstream `redis-server`, append-only so a restarted worker keeps its data.

The password the coordinator issued goes into a config file readable by this user only, never
onto the command line, where every local user could read it in the process list. Without one
redis does not start: it would serve anyone who reaches its port.
"""

from __future__ import annotations

from rma.files import write_private
from rma.services.base import Context, Launch, ServiceDriver, probe_host, require_secret, tcp_lines

SECRET_FILE = "redis-secret.conf"


class Redis(ServiceDriver):
    name = "redis"
    engine = "redis-server"

    def prepare(self, ctx: Context) -> None:
        secret = require_secret(ctx, self.name)
        super().prepare(ctx)
        write_private(ctx.data_dir / SECRET_FILE, f'requirepass "{secret}"\n')

    def launch(self, ctx: Context) -> Launch:
        binds = [ctx.host] if ctx.host in ("127.0.0.1", "::1") else [ctx.host, "127.0.0.1"]
        return Launch(
            (
                "redis-server", str(ctx.data_dir / SECRET_FILE),
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
        """PING after AUTH: redis loading its AOF accepts connections but answers LOADING."""
        if not ctx.secret:
            return False
        answers = await tcp_lines(probe_host(ctx.host), ctx.port, f"AUTH {ctx.secret}\r\nPING\r\n".encode(), 2)
        return bool(answers) and answers[-1].startswith(b"+PONG")
