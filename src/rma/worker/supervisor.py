"""One supervisor per running service: start it, check it, restart it, report it.

States: starting (spawned, not yet healthy) → healthy ⇄ unhealthy; a process that exits,
or stays unready or unhealthy too long, is crashed and restarts after an exponential
backoff; `crash_loop` crashes in a row without ever becoming healthy make it failed, which
the coordinator reads as "place it elsewhere" (it is retried here after `failed_retry_s`).
The supervisor owns its status; everyone else reads `status`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from rma.services.base import BUSY, Context, ServiceDriver
from rma.worker.process import choose_port, end_tree, reap_group, spawn

log = logging.getLogger(__name__)


class State(StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    CRASHED = "crashed"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Policy:
    """Timings of supervision. Defaults suit real engines; tests shorten them."""

    health_interval_s: float = 2.0
    start_timeout_s: float = 120.0  # a model or an AOF replay may load this long
    unhealthy_restart_s: float = 30.0  # healthy once, then failing checks this long: restart
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    crash_loop: int = 5
    failed_retry_s: float = 300.0
    stop_timeout_s: float = 10.0

    def backoff(self, crashes: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, crashes - 1)))


@dataclass(frozen=True)
class Status:
    state: State
    port: int | None = None
    restarts: int = 0
    message: str = ""
    pid: int | None = None


@dataclass(frozen=True)
class Placement:
    """Where a supervised service lives on this worker."""

    host: str
    port: int  # the assigned (or catalogue) port; another is taken when it is busy
    data_dir: Path
    log_path: Path
    coordinator_urls: tuple[str, ...] = ()
    heartbeat_interval: float | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)  # the service variables; some are tokens
    secret: str | None = field(default=None, repr=False)  # a store's credential, from the coordinator
    engine: str | None = None  # the engine to run the service with
    on_mesh: bool = False  # `host` is the worker's overlay address: a caller's address there is its certificate's


class Supervisor:
    def __init__(self, driver: ServiceDriver, placement: Placement, policy: Policy | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.driver = driver
        self.placement = placement
        self.policy = policy or Policy()
        # Called when the state changes, so the agent can report it without waiting a beat.
        self.on_change = on_change
        self._status = Status(State.STARTING)
        self._stop = asyncio.Event()
        self._port: int | None = None

    @property
    def name(self) -> str:
        return self.driver.name

    @property
    def status(self) -> Status:
        return self._status

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the supervisor to end the service; `run` returns once the process tree is gone."""
        self._stop.set()

    def _set(self, state: State, message: str = "", **changes: object) -> None:
        changed = state != self._status.state
        if changed:
            log.info("%s: %s%s", self.name, state, f" ({message})" if message else "")
        self._status = replace(self._status, state=state, message=message, **changes)  # type: ignore[arg-type]
        if changed and self.on_change is not None:
            self.on_change()

    async def run(self) -> None:
        crashes = 0  # in a row, without reaching healthy
        while not self.stopping:
            reason, was_healthy = await self._run_once()
            if self.stopping:
                break
            crashes = 1 if was_healthy else crashes + 1
            self._set(State.CRASHED, reason, restarts=self._status.restarts + 1, pid=None)
            wait = self.policy.backoff(crashes)
            if crashes >= self.policy.crash_loop:
                self._set(State.FAILED, f"crash loop: {crashes} starts in a row failed; last: {reason}")
                wait, crashes = self.policy.failed_retry_s, 0
            await self._sleep(wait)
        self._set(State.STOPPED, pid=None)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return

    async def _run_once(self) -> tuple[str, bool]:
        """Start the service and watch it until it dies, goes bad, or we are stopped."""
        where = self.placement
        port = choose_port(where.host, self._port, where.port,
                           usable=lambda host, each: self.driver.port_usable(host, each, where.engine))
        if self._port and port != self._port:
            log.warning("%s: port %d is taken now, moving to %d", self.name, self._port, port)
        elif port != where.port:
            log.warning("%s: port %d is taken, using %d", self.name, where.port, port)
        self._port = port
        ctx = Context(where.host, port, where.data_dir, where.coordinator_urls, where.heartbeat_interval, where.env,
                      where.secret, where.engine, where.on_mesh)
        try:
            # In a thread: a first start may take seconds (initdb), and the worker must keep beating.
            await asyncio.to_thread(self.driver.prepare, ctx)
            launch = self.driver.launch(ctx)
            where.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(where.log_path, "ab") as header:
                header.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(launch.argv)}\n".encode())
        except OSError as exc:
            return f"cannot start: {exc}", False
        procs: list[asyncio.subprocess.Process] = []
        try:
            for part in (launch, *launch.companions):
                procs.append(await spawn(part.argv, self.driver.environment(ctx, part), part.cwd, where.log_path))
        except OSError as exc:
            await self._end(procs)
            return f"cannot start: {exc}", False
        proc = procs[0]
        self._set(State.STARTING, f"pid {proc.pid}", port=port, pid=proc.pid)
        try:
            return await self._watch(proc, ctx, procs[1:])
        finally:
            await self._end(procs)

    async def _end(self, procs: list[asyncio.subprocess.Process]) -> None:
        for proc in procs:
            if proc.returncode is None:
                await end_tree(proc, self.policy.stop_timeout_s)
            else:
                reap_group(proc.pid)

    async def _watch(self, proc: asyncio.subprocess.Process, ctx: Context,
                     companions: list[asyncio.subprocess.Process]) -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        engine = self.driver.service.engine(ctx.engine or self.driver.engine)
        start_limit = max(self.policy.start_timeout_s, engine.start_s)
        bad_since: float | None = None
        was_healthy = False
        exited = asyncio.ensure_future(asyncio.wait([asyncio.ensure_future(p.wait()) for p in (proc, *companions)],
                                                    return_when=asyncio.FIRST_COMPLETED))
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                ok = await self.driver.healthy(ctx)
                now = loop.time()
                if (ended := _ended(proc, companions)) is not None:
                    return ended, was_healthy
                if ok is BUSY:  # alive, every slot taken: routed elsewhere meanwhile, never restarted for it
                    was_healthy, bad_since = True, None
                    self._set(State.UNHEALTHY, "busy: every work slot is taken")
                elif ok:
                    was_healthy, bad_since = True, None
                    self._set(State.HEALTHY)
                elif not was_healthy:
                    if now - started > start_limit:
                        return f"not healthy {start_limit:g}s after start", False
                else:
                    bad_since = bad_since or now
                    self._set(State.UNHEALTHY, "health check failing")
                    if now - bad_since > self.policy.unhealthy_restart_s:
                        return f"unhealthy for {self.policy.unhealthy_restart_s:g}s", True
                # Check often while starting, so a ready service is reported at once.
                interval = self.policy.health_interval_s if was_healthy else min(0.25, self.policy.health_interval_s)
                await asyncio.wait({exited, stopped}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                if self.stopping:
                    return "stopped", was_healthy
                if (ended := _ended(proc, companions)) is not None:
                    return ended, was_healthy
        finally:
            for waiter in (exited, stopped):
                waiter.cancel()


def _ended(proc: asyncio.subprocess.Process, companions: list[asyncio.subprocess.Process]) -> str | None:
    """Why the service is over, when its process or a companion exited; None while all run."""
    if proc.returncode is not None:
        return f"exited with code {proc.returncode}"
    for companion in companions:
        if companion.returncode is not None:
            return f"its companion (pid {companion.pid}) exited with code {companion.returncode}"
    return None
