"""Each service module: the command it builds, and its health check against a real process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from rma.catalog import get
from rma.coordinator.secrets import STORE_VARIABLES
from rma.services import DRIVERS
from rma.services.base import LOCATION_VARIABLES, Context, ServiceDriver, http_ok, probe_host, tcp_lines, tcp_open
from rma.worker.process import free_port


def test_every_driver_names_a_catalogue_engine() -> None:
    for name, driver in DRIVERS.items():
        assert get(name).engine(driver.engine).name == driver.engine


def test_redis_is_append_only_under_its_data_dir(tmp_path: Path) -> None:
    argv = DRIVERS["redis"].launch(Context("10.0.0.7", 6400, tmp_path)).argv
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--dir") + 1] == str(tmp_path)
    assert argv[argv.index("--bind") + 1: argv.index("--bind") + 3] == ("10.0.0.7", "127.0.0.1")


def test_coordinator_replica_gets_port_data_interval_and_tokens(tmp_path: Path) -> None:
    ctx = Context("127.0.0.1", 8181, tmp_path, heartbeat_interval=1.0,
                  env={"RMA_JOIN_TOKEN": "j", "MODEL_NAME": "x"})
    coordinator = DRIVERS["coordinator"]
    launch = coordinator.launch(ctx)
    assert launch.argv[:4] == (sys.executable, "-m", "rma", "coordinator")
    assert "8181" in launch.argv and str(tmp_path) in launch.argv and "1" in launch.argv
    assert coordinator.environment(ctx, launch, {}) == {"RMA_JOIN_TOKEN": "j"}


def test_services_are_handed_the_stores_addresses_the_coordinator_sends() -> None:
    sent = {name for variables in STORE_VARIABLES.values() for name in variables("10.0.0.7", 1)}
    assert set(LOCATION_VARIABLES) == sent


async def until_healthy(driver: ServiceDriver, ctx: Context) -> bool:
    for _ in range(100):
        if await driver.healthy(ctx):
            return True
        await asyncio.sleep(0.05)
    return False


def test_redis_will_not_start_without_the_coordinators_password(tmp_path: Path) -> None:
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), tmp_path)
    with pytest.raises(PermissionError, match="redis starts only with the password the coordinator issues"):
        DRIVERS["redis"].prepare(ctx)
    assert not (tmp_path / "redis-secret.conf").exists()
    assert not asyncio.run(DRIVERS["redis"].healthy(ctx))


def test_redis_health_is_a_real_ping(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    ctx = Context("127.0.0.1", port, tmp_path, secret="s3cret-from-the-coordinator")
    redis = DRIVERS["redis"]
    assert not asyncio.run(redis.healthy(ctx))
    redis.prepare(ctx)
    proc = subprocess.Popen(list(redis.launch(ctx).argv), stdout=subprocess.DEVNULL, cwd=tmp_path)
    try:
        assert asyncio.run(until_healthy(redis, ctx))
    finally:
        proc.terminate()
        proc.wait()


def test_redis_requires_the_coordinators_password(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    ctx = Context("127.0.0.1", port, tmp_path, secret="right-password")
    redis = DRIVERS["redis"]
    redis.prepare(ctx)
    assert oct((tmp_path / "redis-secret.conf").stat().st_mode & 0o777) == "0o600"
    argv = redis.launch(ctx).argv
    assert "right-password" not in " ".join(argv)  # never in the process list
    proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, cwd=tmp_path)
    try:
        assert asyncio.run(until_healthy(redis, ctx))
        assert not asyncio.run(redis.healthy(Context("127.0.0.1", port, tmp_path, secret="wrong")))
        assert asyncio.run(tcp_lines("127.0.0.1", port, b"PING\r\n", 1))[0].startswith(b"-NOAUTH")
    finally:
        proc.terminate()
        proc.wait()


def test_probes_fail_cleanly_on_closed_ports() -> None:
    port = free_port("127.0.0.1")
    assert not asyncio.run(tcp_open("127.0.0.1", port))
    assert not asyncio.run(http_ok("127.0.0.1", port, "/health"))
    assert probe_host("0.0.0.0") == "127.0.0.1"


def test_programs_are_found_beside_python_and_in_debians_postgres_folder() -> None:
    """A worker started as .venv/bin/rma, venv not activated, still finds the venv's `chroma`."""
    found = subprocess.run([sys.executable, "-c", "from rma.services.base import find_binary as f;"
                            "print(f('chroma')); print(f('postgres')); print(f('no-such-program-here'))"],
                           capture_output=True, text=True, env={"PATH": "/nonexistent"}, check=True).stdout.split()
    assert found[0] == str(Path(sys.executable).parent / "chroma")
    assert found[1].startswith("/usr/lib/postgresql/") and found[1].endswith("/bin/postgres")
    assert found[2] == "None"
