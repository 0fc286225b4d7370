"""The driver's two ways to run postgres: the plain server, and a member of a Patroni cluster on the pool's etcd
(the processes, their failover and a returning old primary: tests/e2e/test_store_failover.py)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rma.replication import PATRONI_API_PORT, PATRONI_LEADER_KEY, REPLICA_NAME_VARIABLE, STORE_URL_VARIABLE
from rma.services import patroni
from rma.services.base import Context, find_binary
from rma.services.postgres import PGDATA, Postgres

SECRET = "coordinator-issued-s3cret"
ROOT = os.geteuid() == 0


def _missing() -> str | None:
    if find_binary("patroni") is None:
        return "patroni is not installed (Debian: apt-get install patroni)"
    if find_binary("postgres") is None or find_binary("initdb") is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    return None


def test_the_plain_server_stays_plain_without_the_pools_etcd(tmp_path: Path) -> None:
    launch = Postgres().launch(Context("127.0.0.1", 5440, tmp_path, secret=SECRET))
    assert launch.argv[launch.argv.index("--") + 1] == find_binary("postgres")
    assert STORE_URL_VARIABLE in Postgres.passes and REPLICA_NAME_VARIABLE in Postgres.passes
    assert "POSTGRES_HOST" in Postgres.passes


def test_the_patroni_config_holds_the_timing_and_durability_choices(data_root: Path) -> None:
    if reason := _missing():
        pytest.skip(reason)
    tmp_path = data_root
    env = {STORE_URL_VARIABLE: "etcd://10.0.0.1:2379,10.0.0.2:2379", REPLICA_NAME_VARIABLE: "w-1"}
    ctx = Context("10.0.0.7", 5440, tmp_path / "pg", env=env, secret=SECRET)
    Postgres().prepare(ctx)
    path = tmp_path / "pg" / patroni.CONFIG
    settings = json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.stat().st_uid == (pwd.getpwnam("postgres").pw_uid if ROOT else os.geteuid())
    assert settings["name"] == "w-1" and settings["etcd3"]["hosts"] == ["10.0.0.1:2379", "10.0.0.2:2379"]
    assert f"{settings['namespace']}{settings['scope']}/leader" == PATRONI_LEADER_KEY
    assert settings["restapi"]["listen"] == f"10.0.0.7:{PATRONI_API_PORT}"
    assert settings["restapi"]["authentication"] == {"username": "rma", "password": SECRET}
    assert settings["postgresql"]["listen"] == "10.0.0.7:5440"
    assert settings["postgresql"]["data_dir"] == str((tmp_path / "pg").resolve() / PGDATA)
    dcs = settings["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"] <= 8  # a machine death costs about ttl
    assert not any("trust" in line or "peer" in line for line in settings["postgresql"]["pg_hba"])
    argv = Postgres().launch(ctx).argv
    assert argv[argv.index("--") + 1:] == (find_binary("patroni"), str(path.resolve()))
    assert SECRET not in " ".join(argv) and SECRET not in settings["bootstrap"]["post_bootstrap"]
    with pytest.raises(PermissionError):
        Postgres().prepare(Context("10.0.0.7", 5440, tmp_path / "pg", env=env))
    with pytest.raises(ConnectionError):
        Postgres().prepare(Context("0.0.0.0", 5440, tmp_path / "pg", env=env, secret=SECRET))


@pytest.fixture
def data_root() -> Iterator[Path]:
    """Member folders the `postgres` account can reach: pytest's own are root's alone (0700)."""
    folder = Path(tempfile.mkdtemp(prefix="rma-patroni-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
