"""The neo4j service on its `arcadedb` engine: ArcadeDB's server, spoken to over Bolt by the official neo4j driver."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import pwd
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import neo4j
import psutil
import pytest

from rma.catalog import get
from rma.services import DRIVERS
from rma.services.base import Context
from rma.services.neo4j import ARCADEDB, BOLT_PORT, CONFIG, PASSWORD_FILE, ROOT_USER, USERS_FILE, settings
from rma.worker.engines import runnable_engines
from rma.worker.probe import Probe
from rma.worker.process import free_port
from services.test_stores import ROOT, SECRET, Server, data_dir  # noqa: F401  (data_dir: a fixture)


def service_host() -> str:
    """A loopback address of this test's own, where Bolt's fixed port is free whatever else runs here."""
    for _ in range(50):
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as probe:
            try:
                probe.bind((host, BOLT_PORT))
            except OSError:
                continue
        return host
    pytest.skip(f"port {BOLT_PORT} is taken on every loopback address tried")


def context(folder: Path, host: str = "10.0.0.7", port: int = 7475, secret: str | None = SECRET) -> Context:
    return Context(host, port, folder, secret=secret, engine=ARCADEDB)


def client(ctx: Context, password: str | None = SECRET) -> neo4j.Driver:
    auth = (ROOT_USER, password) if password else None
    return neo4j.GraphDatabase.driver(f"bolt://{ctx.host}:{BOLT_PORT}", auth=auth, connection_timeout=5)


def tree(server: Server) -> list[psutil.Process]:
    leader = psutil.Process(server.proc.pid)
    return [leader, *leader.children(recursive=True)]


def plain(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as the kernel means it: Java's IPv4 sockets are IPv6 ones with mapped addresses."""
    ip = ipaddress.ip_address(address)
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


@pytest.fixture
def arcadedb(data_dir: Path) -> Iterator[Server]:  # noqa: F811
    host = service_host()
    server = Server(DRIVERS["neo4j"], context(data_dir, host, free_port(host)))
    try:
        assert server.wait_healthy(60)
        yield server
    finally:
        server.stop()


# --- the command and the data dir: no server ------------------------------------------------------------------


def test_the_bundled_java_runs_the_server_with_a_capped_heap_and_no_password(tmp_path: Path) -> None:
    launch = DRIVERS["neo4j"].launch(context(tmp_path))
    argv = launch.argv
    assert argv[0] == "setpriv" and argv[argv.index("--pdeathsig") + 1] == "SIGTERM"
    assert ("--reuid" in argv) == ROOT
    java = Path(argv[argv.index("--") + 1])
    assert java.parts[-4:] == ("arcadedb_embedded", "jre", "bin", "java") and java.is_absolute()
    assert f"-Xmx{get('neo4j').engine(ARCADEDB).ram_mb // 2}m" in argv
    assert argv[-1] == "com.arcadedb.server.ArcadeDBServer"
    assert "arcadedb-bolt-" in argv[argv.index("-cp") + 1] and "arcadedb-mcp-" not in argv[argv.index("-cp") + 1]
    assert f"-Darcadedb.server.rootPath={tmp_path.resolve()}" in argv and launch.cwd == tmp_path.resolve()
    assert SECRET not in " ".join(argv) and SECRET not in " ".join(launch.env.values())


def test_every_listener_is_on_the_service_address_and_no_fetch_leaves_the_machine(tmp_path: Path) -> None:
    chosen = settings(context(tmp_path, "10.0.0.7", 7475))
    assert chosen["server.httpIncomingHost"] == chosen["bolt.host"] == "10.0.0.7"
    assert (chosen["server.httpIncomingPort"], chosen["bolt.port"]) == ("7475", "7687")
    assert chosen["server.plugins"] == "Bolt:com.arcadedb.bolt.BoltProtocolPlugin"
    assert chosen["support.autoRegister"] == chosen["opencypher.loadCsv.allowRemoteUrls"] == "false"
    assert chosen["bolt.defaultDatabase"] == "rma"


def test_the_password_file_is_private_and_root_forgets_its_old_hash(data_dir: Path) -> None:  # noqa: F811
    neo4j_service = DRIVERS["neo4j"]
    with pytest.raises(PermissionError):
        neo4j_service.prepare(context(data_dir, secret=None))
    config = data_dir / CONFIG
    config.mkdir(parents=True)
    users = [{"name": "root", "databases": {"*": ["admin"]}, "password": "PBKDF2WithHmacSHA256$65536$old$hash"},
             {"name": "advisor", "databases": {"rma": ["admin"]}, "password": "PBKDF2WithHmacSHA256$65536$a$b"}]
    (config / USERS_FILE).write_text("".join(json.dumps(user) + "\n" for user in users))
    neo4j_service.prepare(context(data_dir))
    password = config / PASSWORD_FILE
    assert password.read_text() == SECRET and password.stat().st_mode & 0o777 == 0o600
    assert data_dir.stat().st_mode & 0o777 == 0o700
    kept = [json.loads(line) for line in (config / USERS_FILE).read_text().splitlines()]
    assert kept == [{"name": "root", "databases": {"*": ["admin"]}}, users[1]]
    owner = pwd.getpwnam("rma").pw_uid if ROOT else os.geteuid()
    assert {path.stat().st_uid for path in (data_dir, config, password, config / USERS_FILE)} == {owner}


def test_arcadedb_is_runnable_where_the_wheel_is_and_fails_health_with_nothing_listening(tmp_path: Path) -> None:
    assert ARCADEDB in runnable_engines(Probe.system())
    host = service_host()
    assert not asyncio.run(DRIVERS["neo4j"].healthy(context(tmp_path, host, free_port(host))))


# --- a real server --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_debt_graph_is_written_and_matched_back_and_a_rollback_leaves_nothing(arcadedb: Server) -> None:
    with client(arcadedb.ctx) as driver, driver.session() as session:
        session.run("CREATE (:Client {name: $client})-[:OWES]->(:Debt {amount: $amount})"
                    "-[:TO]->(:Creditor {name: $to})", client="Ann", amount=1250.5, to="Northern Energy").consume()
        rows = session.run("MATCH (c:Client)-[:OWES]->(d:Debt)-[:TO]->(k:Creditor) "
                           "RETURN c.name AS client, d.amount AS amount, k.name AS creditor").data()
        assert rows == [{"client": "Ann", "amount": 1250.5, "creditor": "Northern Energy"}]
        with session.begin_transaction() as tx:
            tx.run("CREATE (:Client {name: 'Bob'})-[:OWES]->(:Debt {amount: 90})").consume()
            tx.rollback()
        assert session.run("MATCH (c:Client) RETURN collect(c.name) AS names").single()["names"] == ["Ann"]
        assert session.run("MATCH (d:Debt) RETURN count(d) AS n").single()["n"] == 1


@pytest.mark.slow
def test_a_wrong_or_missing_password_is_refused_and_bad_cypher_leaves_the_server_up(arcadedb: Server) -> None:
    for password in ("wrong-password", None):
        with client(arcadedb.ctx, password) as driver, pytest.raises(neo4j.exceptions.AuthError):
            driver.verify_connectivity()
    assert not arcadedb.healthy(context(arcadedb.ctx.data_dir, arcadedb.ctx.host, arcadedb.ctx.port, "wrong-password"))
    with client(arcadedb.ctx) as driver, driver.session() as session:
        with pytest.raises(neo4j.exceptions.CypherSyntaxError):
            session.run("MATCH (c:Client RETURN c").consume()
        assert session.run("RETURN 1 + 1 AS two").single()["two"] == 2
    assert arcadedb.healthy()


@pytest.mark.slow
def test_listeners_only_on_the_service_address_nothing_outbound_no_secret_in_any_command_line(
        arcadedb: Server) -> None:
    ctx = arcadedb.ctx
    with client(ctx) as driver:
        driver.execute_query("CREATE (:Client {name: 'Cy'})")
    time.sleep(1)  # let anything that calls out at start (support registration) have done so
    procs = tree(arcadedb)
    listening, elsewhere = set(), []
    for proc in procs:
        for conn in proc.net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.add((plain(conn.laddr.ip), conn.laddr.port))
            elif conn.raddr and not (plain(conn.raddr.ip).is_loopback or plain(conn.raddr.ip) == plain(ctx.host)):
                elsewhere.append(conn)
    assert listening == {(plain(ctx.host), ctx.port), (plain(ctx.host), BOLT_PORT)}
    assert elsewhere == []
    assert all(SECRET not in " ".join(proc.cmdline()) for proc in procs)
    holding = [path for path in ctx.data_dir.rglob("*") if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert holding == [ctx.data_dir / CONFIG / PASSWORD_FILE]  # not in the logs, not in the settings
    assert {proc.username() for proc in procs} == {"rma" if ROOT else pwd.getpwuid(os.geteuid()).pw_name}


@pytest.mark.slow
def test_a_killed_server_comes_back_with_every_node_and_the_coordinators_new_password(arcadedb: Server) -> None:
    ctx = arcadedb.ctx
    with client(ctx) as driver:
        driver.execute_query("UNWIND range(1, 50) AS i CREATE (:Client {n: i})-[:OWES]->(:Debt {amount: i * 10})")
    os.killpg(arcadedb.proc.pid, signal.SIGKILL)
    arcadedb.proc.wait()
    moved = context(ctx.data_dir, ctx.host, ctx.port, "a-new-coordinator-secret")
    again = Server(DRIVERS["neo4j"], moved)
    try:
        assert again.wait_healthy(60)
        assert not again.healthy(ctx)  # the old password is gone
        with client(moved, moved.secret) as driver:
            rows, _, _ = driver.execute_query(
                "MATCH (c:Client)-[:OWES]->(d:Debt) RETURN count(c) AS n, sum(d.amount) AS s")
        assert (rows[0]["n"], rows[0]["s"]) == (50, 12750)
    finally:
        again.stop()


@pytest.mark.slow
def test_term_stops_the_whole_tree(arcadedb: Server) -> None:
    procs = tree(arcadedb)
    os.killpg(arcadedb.proc.pid, signal.SIGTERM)
    assert arcadedb.proc.wait(10) == 128 + signal.SIGTERM  # within the supervisor's stop timeout, by its hook
    assert not [proc for proc in procs if proc.is_running()]
