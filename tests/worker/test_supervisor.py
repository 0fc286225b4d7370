"""Supervision of a real redis-server: healthy, restarted when killed, moved off a busy port, failed on a crash loop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from rma.services import DRIVERS
from rma.services.base import Context, Launch, ServiceDriver
from rma.services.redis import Redis
from rma.worker.supervisor import Placement, State, Supervisor

from .conftest import FAST, SECRET

pytestmark = pytest.mark.timeout(60)


async def until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def supervised(sup: Supervisor, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(sup.run())
    try:
        await body()
    finally:
        sup.stop()
        await asyncio.wait_for(task, 10)


def test_redis_becomes_healthy_and_stops_cleanly(placement: Placement) -> None:
    sup = Supervisor(DRIVERS["redis"], placement, FAST)
    pids: list[int] = []

    async def body() -> None:
        await until(lambda: sup.status.state == State.HEALTHY)
        assert sup.status.port == placement.port
        assert sup.status.pid is not None
        pids.append(sup.status.pid)

    asyncio.run(supervised(sup, body))
    assert sup.status.state == State.STOPPED
    assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == psutil.STATUS_ZOMBIE
    assert (placement.data_dir / "appendonlydir").is_dir(), "redis keeps an append-only file"
    assert b"start: redis-server" in placement.log_path.read_bytes()


def test_redis_without_its_password_never_starts_and_says_why(placement: Placement) -> None:
    sup = Supervisor(DRIVERS["redis"], replace(placement, secret=None), FAST)

    async def body() -> None:
        await until(lambda: sup.status.state == State.FAILED)
        assert "redis starts only with the password the coordinator issues" in sup.status.message
        assert sup.status.pid is None

    asyncio.run(supervised(sup, body))
    assert not placement.log_path.exists(), "no redis-server was started"
    assert not (placement.data_dir / "redis-secret.conf").exists()


def test_killed_service_is_restarted_and_counted(placement: Placement) -> None:
    sup = Supervisor(DRIVERS["redis"], placement, FAST)

    async def body() -> None:
        await until(lambda: sup.status.state == State.HEALTHY)
        first = sup.status.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: sup.status.restarts == 1 and sup.status.state == State.HEALTHY)
        assert sup.status.pid != first
        assert sup.status.port == placement.port, "a restart keeps the port"

    asyncio.run(supervised(sup, body))


def test_busy_port_is_replaced_by_a_free_one(placement: Placement) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", placement.port))
        squatter.listen()
        sup = Supervisor(DRIVERS["redis"], placement, FAST)

        async def body() -> None:
            await until(lambda: sup.status.state == State.HEALTHY)
            assert sup.status.port not in (None, placement.port)

        asyncio.run(supervised(sup, body))


class Exits(Redis):
    """redis-server refusing a bad option: a real engine in a real crash loop."""

    def launch(self, ctx: Context) -> Launch:
        return replace(super().launch(ctx), argv=("redis-server", "--no-such-option", "1"))


def test_crash_loop_is_reported_failed(placement: Placement) -> None:
    sup = Supervisor(Exits(), placement, FAST)

    async def body() -> None:
        await until(lambda: sup.status.state == State.FAILED)
        assert sup.status.restarts == FAST.crash_loop
        assert "crash loop" in sup.status.message

    asyncio.run(supervised(sup, body))


def test_stop_ends_the_whole_process_tree(tmp_path: Path) -> None:
    class Forks(Redis):
        def launch(self, ctx: Context) -> Launch:
            script = f"redis-server --port {ctx.port} --bind 127.0.0.1 --save '' & sleep 300 & wait"
            return Launch(("sh", "-c", script), cwd=ctx.data_dir)

    port = Placement("127.0.0.1", 0, tmp_path / "d", tmp_path / "l.log", secret=SECRET)
    from rma.worker.process import free_port

    sup = Supervisor(Forks(), replace(port, port=free_port("127.0.0.1")), FAST)
    tree: list[psutil.Process] = []

    async def body() -> None:
        await until(lambda: sup.status.state == State.HEALTHY)
        assert sup.status.pid is not None
        tree.extend(psutil.Process(sup.status.pid).children(recursive=True))
        assert len(tree) == 2

    asyncio.run(supervised(sup, body))
    gone, alive = psutil.wait_procs(tree, timeout=3)
    assert not alive


class NeverReady(ServiceDriver):
    """llm-inference that never answers its health check: a model still loading."""

    name = "llm-inference"
    engines = ("vllm", "llama-cpp")
    engine = "llama-cpp"

    def launch(self, ctx: Context) -> Launch:
        return Launch(("sleep", "30"))

    async def healthy(self, ctx: Context) -> bool:
        return False


@pytest.mark.parametrize(("engine", "still_loading"), [("vllm", True), ("llama-cpp", False)])
def test_an_engine_that_loads_for_minutes_gets_its_catalogue_start_time(
        placement: Placement, engine: str, still_loading: bool) -> None:
    sup = Supervisor(NeverReady(), replace(placement, engine=engine), replace(FAST, start_timeout_s=0.3))

    async def body() -> None:
        await until(lambda: sup.status.pid is not None)
        first = sup.status.pid
        await asyncio.sleep(1.5)
        assert (sup.status.state == State.STARTING and sup.status.pid == first) is still_loading

    asyncio.run(supervised(sup, body))


BUSY_SERVER = """
import http.server, sys
class Busy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(429)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Busy).serve_forever()
"""


class AlwaysBusy(ServiceDriver):
    """document-processing whose /health always answers 429: alive, every work slot taken."""

    name = "document-processing"
    engines = ("pdf-docx",)
    engine = "pdf-docx"

    def launch(self, ctx: Context) -> Launch:
        return Launch((sys.executable, "-c", BUSY_SERVER, str(ctx.port)))


def test_a_busy_service_is_reported_unhealthy_but_never_restarted_for_it(placement: Placement) -> None:
    """429 from a health check is a full app, not a stuck one: routed elsewhere (not healthy), left running."""
    sup = Supervisor(AlwaysBusy(), placement, FAST)

    async def body() -> None:
        await until(lambda: sup.status.state == State.UNHEALTHY)
        first = sup.status.pid
        assert "busy" in sup.status.message
        await asyncio.sleep(FAST.unhealthy_restart_s + 1)
        assert (sup.status.state, sup.status.pid, sup.status.restarts) == (State.UNHEALTHY, first, 0)

    asyncio.run(supervised(sup, body))


def test_a_companion_that_dies_restarts_the_service_and_both_end_with_it(placement: Placement) -> None:
    """redis's Sentinel runs beside its server: one of the two ending is the service crashing."""
    class WithCompanion(Redis):
        def launch(self, ctx: Context) -> Launch:
            server = super().launch(ctx)
            return replace(server, companions=(Launch(("sleep", "300")),))

    sup = Supervisor(WithCompanion(), placement, FAST)
    companions: list[psutil.Process] = []

    async def body() -> None:
        await until(lambda: sup.status.state == State.HEALTHY)
        [companion] = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "300"]]
        companion.kill()
        await until(lambda: sup.status.restarts == 1 and sup.status.state == State.HEALTHY)
        companions.extend(p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "300"])
        assert len(companions) == 1  # started again with its server

    asyncio.run(supervised(sup, body))
    _, alive = psutil.wait_procs(companions, timeout=3)
    assert not alive  # stopping the service ends its companion too
