"""neo4j: the Neo4j server in the foreground, with its own configuration and data under the worker's data dir.

Offered only where a real `neo4j` binary is installed (no package registry here carries it).
The initial password is set once, before the first start, by `neo4j-admin` reading it from a
file readable by this user only (an @-file: its command line holds the file's path, not the
password). Health is an authenticated request, so a password that did not take is never healthy.
"""

from __future__ import annotations

import subprocess

import httpx

from rma.services.base import (
    HEALTH_TIMEOUT_S,
    Context,
    Launch,
    ServiceDriver,
    probe_host,
    require_secret,
    write_private,
)

USER = "neo4j"  # Neo4j's built-in administrator
BOLT_PORT = 7687  # the coordinator's NEO4J_URI names this port
SET_PASSWORD_TIMEOUT_S = 120.0  # neo4j-admin starts a JVM


def config(ctx: Context) -> str:
    """neo4j.conf (Neo4j 5 names): every folder under the data dir, HTTP on the assigned port, auth on."""
    root = ctx.data_dir.resolve()
    return "".join(f"{key}={value}\n" for key, value in (
        ("server.directories.data", root / "data"),
        ("server.directories.logs", root / "logs"),
        ("server.directories.run", root / "run"),
        ("server.default_listen_address", ctx.host),
        ("server.http.enabled", "true"),
        ("server.http.listen_address", f":{ctx.port}"),
        ("server.https.enabled", "false"),
        ("server.bolt.listen_address", f":{BOLT_PORT}"),
        ("dbms.security.auth_enabled", "true"),
    ))


class Neo4j(ServiceDriver):
    name = "neo4j"
    engine = "neo4j"

    def prepare(self, ctx: Context) -> None:
        secret = require_secret(ctx, self.name)
        super().prepare(ctx)
        conf = ctx.data_dir / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "neo4j.conf").write_text(config(ctx))
        if (ctx.data_dir / "data" / "dbms" / "auth.ini").exists() or (ctx.data_dir / "data" / "databases").exists():
            return  # initialised: the password lives in the system database now
        password_file = ctx.data_dir / "initial-password.args"
        write_private(password_file, secret + "\n")
        try:
            done = subprocess.run(("neo4j-admin", "dbms", "set-initial-password", f"@{password_file.resolve()}"),
                                  env=_env(ctx), capture_output=True, timeout=SET_PASSWORD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise ChildProcessError("neo4j-admin set-initial-password timed out") from None
        finally:
            password_file.unlink(missing_ok=True)
        if done.returncode != 0:
            raise ChildProcessError(f"neo4j-admin set-initial-password exited with {done.returncode}")

    def launch(self, ctx: Context) -> Launch:
        return Launch(("neo4j", "console"), env=_env(ctx), cwd=ctx.data_dir)

    async def healthy(self, ctx: Context) -> bool:
        """An empty transaction with the password: the HTTP root answers even before auth is ready."""
        host = probe_host(ctx.host)
        url = f"http://{f'[{host}]' if ':' in host else host}:{ctx.port}/db/system/tx/commit"
        try:
            async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S, trust_env=False) as client:
                response = await client.post(url, json={"statements": []}, auth=(USER, ctx.secret or ""))
        except httpx.HTTPError:
            return False
        return response.is_success


def _env(ctx: Context) -> dict[str, str]:
    return {"NEO4J_CONF": str(ctx.data_dir.resolve() / "conf")}
