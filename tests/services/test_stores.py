"""The tier-3 stores' drivers: the commands they build, the data dirs they prepare, real servers where installed."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from rma.files import write_private
from rma.replication import SNAPSHOT_INTERVAL_VARIABLE, SNAPSHOT_KEY_VARIABLE
from rma.services import DRIVERS, snapshots
from rma.services.accounts import as_server, check_reachable
from rma.services.base import Context, ServiceDriver, find_binary
from rma.services.postgres import HBA, PGDATA, listen_addresses
from rma.worker.engines import runnable_engines
from rma.worker.probe import Probe
from rma.worker.process import free_port

SECRET = "coordinator-issued-s3cret"
ROOT = os.geteuid() == 0


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir a root worker's `postgres` account can reach: pytest's own folders are root's alone (0700)."""
    if not ROOT:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="rma-store-"))
    folder.chmod(0o711)
    try:
        yield folder / "services" / "postgres"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Server:
    """A driver's launch run as the supervisor would: its own session, stopped at the end."""

    def __init__(self, driver: ServiceDriver, ctx: Context) -> None:
        self.driver, self.ctx = driver, ctx
        driver.prepare(ctx)
        launch = driver.launch(ctx)
        self.proc = subprocess.Popen(list(launch.argv), env={**os.environ, **launch.env}, cwd=launch.cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def healthy(self, ctx: Context | None = None) -> bool:
        return asyncio.run(self.driver.healthy(ctx or self.ctx))

    def wait_healthy(self, seconds: float = 20) -> bool:
        async def poll() -> bool:
            for _ in range(int(seconds / 0.1)):
                if await self.driver.healthy(self.ctx):
                    return True
                await asyncio.sleep(0.1)
            return False
        return asyncio.run(poll())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # postgres: fast shutdown, whoever is connected
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- postgres -------------------------------------------------------------------------------------------------


def test_postgres_runs_through_setpriv_as_the_postgres_account_when_root(data_dir: Path) -> None:
    argv = DRIVERS["postgres"].launch(Context("10.0.0.7", 5440, data_dir, secret=SECRET)).argv
    assert argv[0] == "setpriv" and argv[argv.index("--pdeathsig") + 1] == "SIGINT"
    server = argv[argv.index("--") + 1:]
    assert server[:3] == (find_binary("postgres"), "-D", str(data_dir.resolve() / PGDATA))
    assert server[server.index("-p") + 1] == "5440"
    assert "listen_addresses=10.0.0.7,127.0.0.1" in server
    assert SECRET not in " ".join(argv)
    assert ("--reuid" in argv) == ROOT


def test_setpriv_drops_to_the_account_only_when_given_one() -> None:
    account = pwd.struct_passwd(("postgres", "x", 101, 104, "", "/var/lib/postgresql", "/bin/sh"))
    initdb = find_binary("initdb")
    assert as_server(("initdb",), account) == (
        "setpriv", "--reuid", "101", "--regid", "104", "--init-groups", "--pdeathsig", "SIGINT", "--", initdb)
    assert as_server(("initdb",), None) == ("setpriv", "--pdeathsig", "SIGINT", "--", initdb)


@pytest.mark.skipif(not ROOT, reason="the data_dir fixture is reachable by other accounts only when root")
def test_postgres_names_the_folder_its_account_cannot_enter(data_dir: Path) -> None:
    account = pwd.struct_passwd(("postgres", "x", 101, 104, "", "/var/lib/postgresql", "/bin/sh"))
    locked = data_dir.parent / "locked"
    (locked / "inside").mkdir(parents=True)
    locked.chmod(0o700)
    with pytest.raises(PermissionError, match=f"cannot enter {locked} "):
        check_reachable(locked / "inside", account)
    locked.chmod(0o711)
    check_reachable(locked / "inside", account)


def test_postgres_listens_on_the_advertised_address_and_loopback() -> None:
    assert listen_addresses("127.0.0.1") == "127.0.0.1"
    assert listen_addresses("192.168.1.20") == "192.168.1.20,127.0.0.1"
    assert listen_addresses("0.0.0.0") == "*"


def test_postgres_will_not_start_without_the_coordinators_password(data_dir: Path) -> None:
    with pytest.raises(PermissionError):
        DRIVERS["postgres"].prepare(Context("127.0.0.1", 5440, data_dir))
    assert not (data_dir / PGDATA).exists()


def test_postgres_is_initialised_once_with_password_logins_only(data_dir: Path) -> None:
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), data_dir, secret=SECRET)
    postgres = DRIVERS["postgres"]
    postgres.prepare(ctx)
    pgdata = data_dir / PGDATA
    version = pgdata / "PG_VERSION"
    first = version.stat().st_ino
    postgres.prepare(ctx)  # a restart: the same cluster, not a fresh one
    assert version.stat().st_ino == first
    assert not (data_dir / f"{PGDATA}.init").exists()
    hba = pgdata / "pg_hba.conf"
    assert hba.read_text() == HBA and "trust" not in hba.read_text()
    assert hba.stat().st_mode & 0o777 == 0o600
    owner = pwd.getpwnam("postgres").pw_uid if ROOT else os.geteuid()
    assert pgdata.stat().st_uid == owner and hba.stat().st_uid == owner
    assert pgdata.stat().st_mode & 0o777 == 0o700


def test_postgres_set_up_steps_get_the_platforms_environment_only(tmp_path: Path) -> None:
    """initdb and the single-user server run as the store's account: the worker's secrets are not theirs."""
    bin_dir, seen = tmp_path / "bin", tmp_path / "initdb.env"
    bin_dir.mkdir()
    (bin_dir / "initdb").write_text(f"#!/bin/sh\nenv > {seen}\nexit 1\n")
    (bin_dir / "initdb").chmod(0o755)
    script = ("from pathlib import Path; from rma.services.postgres import _initialise; "
              f"_initialise(Path({str(tmp_path / PGDATA)!r}), None)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MY_SECRET": "the-worker's"})
    assert "initdb exited with 1" in done.stderr
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert "MY_SECRET" not in env and env["PATH"].startswith(str(bin_dir))


def test_postgres_answers_select_1_to_the_password_and_refuses_others(data_dir: Path) -> None:
    port = free_port("127.0.0.1")
    ctx = Context("127.0.0.1", port, data_dir, secret=SECRET)
    server = Server(DRIVERS["postgres"], ctx)
    try:
        assert server.wait_healthy()
        assert not server.healthy(Context("127.0.0.1", port, data_dir, secret="wrong"))
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://rma:wrong@127.0.0.1:{port}/rma", connect_timeout=5)
        with psycopg.connect(f"postgresql://rma:{SECRET}@127.0.0.1:{port}/rma", connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("rma", "rma")
    finally:
        server.stop()
    # The password follows the coordinator: a new secret works after the next start, the old one does not.
    moved = Context("127.0.0.1", port, data_dir, secret="a-new-secret")
    server = Server(DRIVERS["postgres"], moved)
    try:
        assert server.wait_healthy()
        assert not server.healthy(ctx)
    finally:
        server.stop()


# --- chroma, minio, neo4j: commands; runnable only where the real binary is -----------------------------------


def test_chroma_persists_under_its_data_dir_without_phoning_home(tmp_path: Path) -> None:
    launch = DRIVERS["chromadb"].launch(Context("10.0.0.7", 8001, tmp_path, secret=SECRET))
    assert launch.argv == (find_binary("chroma"), "run", "--path", str(tmp_path.resolve() / "chroma"),
                           "--host", "10.0.0.7", "--port", "8001")
    assert launch.env["ANONYMIZED_TELEMETRY"] == "False"


def test_snapshots_only_where_given_the_key_and_follow_s3_where_it_moves(tmp_path: Path) -> None:
    chroma = DRIVERS["chromadb"]
    alone = Context("10.0.0.7", 8001, tmp_path / "alone", secret=SECRET)
    chroma.prepare(alone)
    assert chroma.launch(alone).companions == () and not (tmp_path / "alone" / snapshots.TARGET).exists()
    # S3 not serving yet: nothing to restore from, and the companion waits for an endpoint
    env = {SNAPSHOT_KEY_VARIABLE: "snapshot-key", SNAPSHOT_INTERVAL_VARIABLE: "30"}
    snapshotted = Context("10.0.0.7", 8001, tmp_path / "held", secret=SECRET, env=env)
    chroma.prepare(snapshotted)
    [companion] = chroma.launch(snapshotted).companions
    assert "snapshot-key" not in " ".join(companion.argv) and "snapshot-key" not in str(companion.env)
    target = tmp_path / "held" / snapshots.TARGET
    assert target.stat().st_mode & 0o777 == 0o600
    assert snapshots.Target.load(tmp_path / "held") == snapshots.Target("", "snapshot-key", 30.0)
    chroma.reconfigure(tmp_path / "held", env | {"MINIO_ENDPOINT": "10.0.0.8:9000"})
    assert snapshots.Target.load(tmp_path / "held").endpoint == "10.0.0.8:9000"


def test_a_chroma_holder_with_its_store_starts_with_it_while_s3_cannot_be_reached(tmp_path: Path) -> None:
    chroma = DRIVERS["chromadb"]
    (tmp_path / "chroma").mkdir()
    (tmp_path / "chroma" / "chroma.sqlite3").write_bytes(b"records")
    (tmp_path / snapshots.LINEAGE).write_text(json.dumps({"id": "own", "began": 0}))
    nowhere = f"127.0.0.1:{free_port('127.0.0.1')}"  # no S3 listens there
    env = {SNAPSHOT_KEY_VARIABLE: "snapshot-key", "MINIO_ENDPOINT": nowhere}
    chroma.prepare(Context("127.0.0.1", 8001, tmp_path, secret=SECRET, env=env))
    assert (tmp_path / "chroma" / "chroma.sqlite3").read_bytes() == b"records"


def test_minio_gets_its_root_password_through_the_environment_only(tmp_path: Path) -> None:
    minio = DRIVERS["minio"]
    ctx = Context("::1", 9001, tmp_path, secret=SECRET)
    minio.prepare(ctx)
    launch = minio.launch(ctx)
    assert launch.argv[:3] == ("minio", "server", str(tmp_path.resolve() / "data"))
    assert launch.argv[launch.argv.index("--address") + 1] == "[::1]:9001"
    assert "--anonymous" in launch.argv  # the startup banner would print the credentials
    assert SECRET not in " ".join(launch.argv)
    assert dict(launch.env) == {"MINIO_ROOT_USER": "rma", "MINIO_ROOT_PASSWORD": SECRET, "MINIO_BROWSER": "off"}
    with pytest.raises(PermissionError):
        minio.prepare(Context("127.0.0.1", 9001, tmp_path))


def test_neo4j_keeps_config_and_data_under_its_data_dir(tmp_path: Path) -> None:
    neo4j = DRIVERS["neo4j"]
    ctx = Context("10.0.0.7", 7475, tmp_path, secret=SECRET)
    launch = neo4j.launch(ctx)
    assert launch.argv == ("neo4j", "console") and launch.env == {"NEO4J_CONF": str(tmp_path.resolve() / "conf")}
    with pytest.raises(PermissionError):
        neo4j.prepare(Context("127.0.0.1", 7475, tmp_path))
    if shutil.which("neo4j-admin") is None:  # the password step cannot run here; its file must not stay behind
        with pytest.raises(OSError):
            neo4j.prepare(ctx)
        assert not (tmp_path / "initial-password.args").exists()
    conf = (tmp_path / "conf" / "neo4j.conf").read_text()
    assert f"server.directories.data={tmp_path.resolve() / 'data'}\n" in conf
    assert "server.default_listen_address=10.0.0.7\n" in conf and "server.http.listen_address=:7475\n" in conf
    assert "dbms.security.auth_enabled=true\n" in conf and SECRET not in conf


def test_health_of_minio_and_neo4j_fails_cleanly_with_nothing_listening(tmp_path: Path) -> None:
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), tmp_path, secret=SECRET)
    assert not asyncio.run(DRIVERS["minio"].healthy(ctx))
    assert not asyncio.run(DRIVERS["neo4j"].healthy(ctx))


@pytest.mark.parametrize("store", ["minio", "neo4j", "postgres", "chroma"])
def test_a_store_is_runnable_only_where_its_binaries_are(store: str) -> None:
    binaries = {"minio": {"minio"}, "neo4j": {"neo4j"}, "postgres": {"postgres", "initdb"}, "chroma": {"chroma"}}[store]
    with_it = replace(Probe.system(), has_binary=lambda name: name in binaries)
    without = replace(Probe.system(), has_binary=lambda name: False)
    assert store in runnable_engines(with_it) and store not in runnable_engines(without)
    if store == "postgres":  # initdb alone, or postgres alone, is not enough
        assert store not in runnable_engines(replace(Probe.system(), has_binary=lambda name: name == "postgres"))


def test_private_files_are_owner_only_even_when_they_existed_looser(tmp_path: Path) -> None:
    path = tmp_path / "secret.conf"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, SECRET)
    assert path.read_text() == SECRET and path.stat().st_mode & 0o777 == 0o600
