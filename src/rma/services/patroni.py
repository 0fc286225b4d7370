"""postgres replicated under Patroni: one member per worker, the leader elected in the pool's etcd.

Patroni runs postgres itself (initdb or a base backup from the primary, promotion, pg_rewind of an old primary)
and keeps the leader key the coordinator reads to name the primary (rma.replication). The driver writes
Patroni's config, 0600 and owned by the server's account, with the coordinator's password in it: the
superuser, the replication login and the REST API's unsafe endpoints (switchover, restart) all take it, and
it never reaches a command line (Patroni hands it on in a pgpass file and initdb's --pwfile).

Patroni is Debian's (`patroni`, 3.0), on the system's Python, which the server's account can always run (a
venv's interpreter may sit in a home folder it cannot enter). From 3.2 on, Patroni raises a `ttl` under 20 s:
a primary that dies without a word (a machine death) keeps its leader lease that long before a standby may
take over. 3.0 takes the lease below: a standby is promoted about `ttl` after the death, and a primary that
stops cleanly hands over at once. `loop_wait` 1 s makes every member act within a second of a change.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from rma.files import write_private
from rma.replication import (
    PATRONI_API_PORT,
    PATRONI_NAMESPACE,
    PATRONI_SCOPE,
    REPLICA_NAME_VARIABLE,
    STORE_URL_VARIABLE,
)
from rma.services.base import HEALTH_TIMEOUT_S, find_binary, probe_host

CONFIG = "patroni.yml"  # JSON, which is YAML too: no YAML writer needed
PGPASS = "pgpass"  # Patroni's own: how pg_basebackup, pg_rewind and the standby's walreceiver log in
# The leader lease, and how long a member retries etcd before it gives up: loop_wait + 2 * retry_timeout <= ttl,
# so a primary cut off from etcd demotes itself before its lease runs out and a standby takes over.
TTL_S = 6
LOOP_WAIT_S = 1
RETRY_TIMEOUT_S = 2
MAXIMUM_LAG_ON_FAILOVER = 1 << 20  # bytes: a replica further behind never takes over
# A standby that vanishes without closing its connection (a machine death) stalls synchronous commits until
# the primary's walsender gives up on it or Patroni drops its member (ttl): 60 s by default. Not under 10 s:
# pg_basebackup reports to the walsender only every 10 s while it clones a replica.
WAL_TIMEOUT = "15s"
WILDCARDS = ("0.0.0.0", "::", "")


def replicated(env: Mapping[str, str]) -> bool:
    """Whether the coordinator made this replica a member of a Patroni cluster."""
    return bool(env.get(STORE_URL_VARIABLE)) and bool(env.get(REPLICA_NAME_VARIABLE))


def etcd_hosts(url: str) -> list[str]:
    """`etcd://h1:p1,h2:p2` as Patroni's etcd3 `hosts`."""
    return [host.strip() for host in url.removeprefix("etcd://").split(",") if host.strip()]


def hba(user: str) -> list[str]:
    """Password (SCRAM) logins only, from anywhere; the replication line is its own (`all` does not match it).

    No `local` lines: the server has no Unix socket (two members on one machine would share its path), and
    Patroni, its health checks and the driver all log in over TCP.
    """
    return [f"host {database} {who} {net} scram-sha-256"
            for database, who in (("all", "all"), ("replication", user)) for net in ("0.0.0.0/0", "::/0")]


def config(host: str, port: int, data_dir: Path, pgdata: Path, env: Mapping[str, str], secret: str,
           user: str, database: str) -> dict[str, Any]:
    """Patroni's whole config for this member."""
    if host in WILDCARDS:
        raise ConnectionError("a replicated postgres tells its peers where it is: it needs a concrete address, "
                              f"not {host or 'any'}")
    postgres = find_binary("postgres")
    if postgres is None:
        raise FileNotFoundError("postgres is not installed")
    bin_dir = str(Path(postgres).resolve().parent)  # Debian's /usr/bin/postgres is absent; initdb sits beside it
    login = {"username": user, "password": secret}
    api = f"{host}:{PATRONI_API_PORT}"
    address = f"{host}:{port}"
    psql = Path(bin_dir) / "psql"
    return {
        "name": env[REPLICA_NAME_VARIABLE],
        "scope": PATRONI_SCOPE,
        "namespace": PATRONI_NAMESPACE,
        "restapi": {"listen": api, "connect_address": api, "authentication": login},
        "etcd3": {"hosts": etcd_hosts(env[STORE_URL_VARIABLE]), "protocol": "http"},
        "bootstrap": {
            "dcs": {
                "ttl": TTL_S, "loop_wait": LOOP_WAIT_S, "retry_timeout": RETRY_TIMEOUT_S,
                "maximum_lag_on_failover": MAXIMUM_LAG_ON_FAILOVER,
                # An acknowledged commit is on two members; a lone survivor still takes writes (not strict).
                "synchronous_mode": True, "synchronous_mode_strict": False,
                "postgresql": {
                    "use_pg_rewind": True, "use_slots": True,
                    "parameters": {"wal_log_hints": "on",  # pg_rewind needs it (or checksums)
                                   "wal_sender_timeout": WAL_TIMEOUT, "wal_receiver_timeout": WAL_TIMEOUT,
                                   "password_encryption": "scram-sha-256"},
                },
            },
            "initdb": [{"encoding": "UTF8"}, "no-locale"],
            # Patroni 4 has no bootstrap.users: the first primary creates the database the URL names, once.
            # Patroni appends a connection string without the password (its pgpass file holds it).
            "post_bootstrap": f"{psql} -q -v ON_ERROR_STOP=1 -c 'CREATE DATABASE {database}'",
        },
        "postgresql": {
            "listen": address, "connect_address": address,
            "data_dir": str(pgdata), "bin_dir": bin_dir, "pgpass": str(data_dir / PGPASS),
            "authentication": {"superuser": login, "replication": login, "rewind": login},
            "parameters": {"unix_socket_directories": ""},  # TCP only, as the single server
            "pg_hba": hba(user),
            "basebackup": [{"checkpoint": "fast"}],  # a new replica clones now, not after a spread checkpoint
            # An old primary that pg_rewind cannot bring back is cloned afresh from the new one.
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
        },
    }


def prepare(host: str, port: int, data_dir: Path, pgdata: Path, env: Mapping[str, str], secret: str,
            user: str, database: str, account: pwd.struct_passwd | None) -> Path:
    """Write the config; the member's folder becomes the server account's, as Patroni writes beside pgdata."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if account:
        os.chown(data_dir, account.pw_uid, account.pw_gid)
    data_dir.chmod(0o700)
    path = data_dir / CONFIG
    owner = (account.pw_uid, account.pw_gid) if account else None
    settings = config(host, port, data_dir, pgdata, env, secret, user, database)
    write_private(path, json.dumps(settings, indent=2) + "\n", owner)
    return path


def command(path: Path) -> tuple[str, ...]:
    """`patroni <config>`: Debian's, found on PATH."""
    program = find_binary("patroni")
    if program is None:
        raise FileNotFoundError("a replicated postgres runs under Patroni, which is not installed "
                                "(Debian: apt-get install patroni)")
    return (program, str(path))


async def api_healthy(host: str) -> bool:
    """Patroni's `GET /health`: 200 while its postgres runs, primary or replica. The answer is read whole: Patroni
    logs a traceback for a probe that hangs up early."""
    address = probe_host(host)
    url_host = f"[{address}]" if ":" in address else address
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S), httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as client:
            answer = await client.get(f"http://{url_host}:{PATRONI_API_PORT}/health")
    except (httpx.HTTPError, TimeoutError):
        return False
    return answer.status_code == 200
