"""postgres: the Debian/upstream PostgreSQL server, initialised once under the worker's data dir.

`initdb` and `postgres` refuse to run as root, so a root worker runs them as the unprivileged
`postgres` user and hands it the data. Every program goes through `setpriv`, which also makes a
worker killed by SIGKILL take its server down with a fast shutdown (SIGINT): an orphan would
hold the data dir's lock and the port the restarted worker needs. The coordinator's password
reaches the server on stdin of a single-user session, never on a command line, and is set on
every start so it always matches what discovery hands out.

Given the pool's etcd and a member name (rma.replication), the store runs replicated under Patroni instead
(rma.services.patroni): same data dir, same account, same password.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import psycopg

from rma import catalog
from rma.files import write_private
from rma.replication import REPLICA_NAME_VARIABLE, STORE_URL_VARIABLE
from rma.services import patroni
from rma.services.accounts import as_server, check_reachable, service_account
from rma.services.base import (
    HEALTH_TIMEOUT_S,
    LOCATION_VARIABLES,
    Context,
    Launch,
    ServiceDriver,
    platform_env,
    probe_host,
    require_secret,
)

# The superuser and its database: the coordinator's connection URL names both.
USER = catalog.get("postgres").engine("postgres").user
DATABASE = "rma"
RUN_AS = "postgres"  # the account a root worker runs the server as (Debian's postgresql creates it)
PGDATA = "pgdata"
# Password (SCRAM) logins from anywhere the listen address reaches; no trust, no peer.
HBA = (
    "# Written by the rma worker on every start.\n"
    "host all all 0.0.0.0/0 scram-sha-256\n"
    "host all all ::/0 scram-sha-256\n"
)
INIT_TIMEOUT_S = 120.0  # initdb fsyncs a few hundred files: seconds on a slow disk


class Postgres(ServiceDriver):
    name = "postgres"
    engine = "postgres"
    passes = (*LOCATION_VARIABLES, STORE_URL_VARIABLE, REPLICA_NAME_VARIABLE)

    def prepare(self, ctx: Context) -> None:
        secret = require_secret(ctx, self.name)
        super().prepare(ctx)
        account = service_account(RUN_AS)
        pgdata = ctx.data_dir.resolve() / PGDATA
        if account:
            check_reachable(ctx.data_dir.resolve(), account)
        if patroni.replicated(ctx.env):  # Patroni runs initdb (or clones the primary) and sets the password
            patroni.prepare(ctx.host, ctx.port, ctx.data_dir.resolve(), pgdata, ctx.env, secret, USER, DATABASE,
                            account)
            return
        if not pgdata.is_dir():
            _initialise(pgdata, account)
        owner = (account.pw_uid, account.pw_gid) if account else None
        write_private(pgdata / "pg_hba.conf", HBA, owner)
        password = secret.replace("'", "''")
        single_user(pgdata, account, f"ALTER ROLE {USER} PASSWORD '{password}';\n", secret)

    def launch(self, ctx: Context) -> Launch:
        if patroni.replicated(ctx.env):  # a SIGKILLed worker: Patroni stops its postgres (SIGINT) and hands over
            config = ctx.data_dir.resolve() / patroni.CONFIG
            return Launch(as_server(patroni.command(config), service_account(RUN_AS)), cwd=ctx.data_dir)
        return Launch(
            as_server(("postgres", "-D", str(ctx.data_dir.resolve() / PGDATA), "-p", str(ctx.port),
                       "-c", f"listen_addresses={listen_addresses(ctx.host)}",
                       "-c", "unix_socket_directories="),  # TCP only: no socket folder to own
                      service_account(RUN_AS)),
            cwd=ctx.data_dir,
        )

    async def healthy(self, ctx: Context) -> bool:
        """An authenticated `SELECT 1`: accepting connections is not enough while recovering WAL."""
        if not ctx.secret:
            return False
        if patroni.replicated(ctx.env) and not await patroni.api_healthy(ctx.host):
            return False
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                conn = await psycopg.AsyncConnection.connect(
                    host=probe_host(ctx.host), port=ctx.port, user=USER, password=ctx.secret, dbname=DATABASE,
                    connect_timeout=max(2, int(HEALTH_TIMEOUT_S)))
                async with conn:
                    row = await (await conn.execute("SELECT 1")).fetchone()
        except (psycopg.Error, OSError, TimeoutError):
            return False
        return row == (1,)



def listen_addresses(host: str) -> str:
    """The advertised address, plus loopback for the worker's own health check."""
    if host in ("0.0.0.0", "::", ""):
        return "*"
    return host if host in ("127.0.0.1", "::1", "localhost") else f"{host},127.0.0.1"


def _initialise(pgdata: Path, account: pwd.struct_passwd | None) -> None:
    """initdb and the rma database in a staging folder, renamed into place only when complete."""
    staging = pgdata.with_name(PGDATA + ".init")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    if account:
        os.chown(staging, account.pw_uid, account.pw_gid)
    _run(as_server(("initdb", "-D", str(staging), "-U", USER, "-E", "UTF8", "--no-locale",
                    "--auth=trust"),  # replaced by HBA before the server ever listens
                   account), "", "")
    single_user(staging, account, f"CREATE DATABASE {DATABASE};\n", "")
    staging.rename(pgdata)


def single_user(pgdata: Path, account: pwd.struct_passwd | None, sql: str, secret: str) -> None:
    """Run `sql` with the server stopped; a failing statement fails the start (exit_on_error)."""
    _run(as_server(("postgres", "--single", "-D", str(pgdata), "-c", "exit_on_error=on",
                    "-c", "log_min_error_statement=panic",  # never echo a statement: it may hold the password
                    "postgres"), account), sql, secret)


def _run(argv: tuple[str, ...], stdin: str, secret: str) -> None:
    """Run a set-up step; on failure raise an OSError (the supervisor's "cannot start") without the secret."""
    program = argv[argv.index("--") + 1]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=INIT_TIMEOUT_S,
                              env=platform_env(),  # as the server's: none of the worker's secrets
                              cwd="/", check=False)  # a folder the server's account can always enter
    except subprocess.TimeoutExpired:
        raise ChildProcessError(f"{program} did not finish in {INIT_TIMEOUT_S:g}s") from None
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if not secret or secret not in line]
        said = " | ".join([line for line in lines if "error" in line.lower() or "FATAL" in line] or lines[-3:])
        hint = f" (run as {RUN_AS}: every folder above the data dir must let it in)" if "--reuid" in argv else ""
        raise ChildProcessError(f"{program} exited with {done.returncode}: {said}{hint}")
