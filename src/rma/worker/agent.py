"""The universal worker's loop: register, then heartbeat and converge to the desired services.

One loop, one shape: snapshot the supervisors → send it (register or heartbeat) → diff the
answer against what runs (pure) → start and stop supervisors → sleep with jitter. The
coordinator being down changes nothing that runs: services keep the last desired set.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from rma.catalog import BY_NAME
from rma.protocol import Assignment, Capabilities, HeartbeatRequest, RegisterRequest, ServiceConfig, ServiceStatus
from rma.services import DRIVERS, ServiceDriver
from rma.worker.client import (
    CoordinatorClient,
    CoordinatorError,
    IdTaken,
    Unauthorized,
    UnknownWorker,
    Unreachable,
)
from rma.worker.config import Identity, WorkerConfig, load_identity, save_identity
from rma.worker.engines import service_dir
from rma.worker.mesh_node import MeshError, MeshNode, fences
from rma.worker.probe import Probe
from rma.worker.reconcile import Running, diff
from rma.worker.supervisor import Placement, Policy, State, Supervisor

log = logging.getLogger(__name__)

JITTER = 0.1  # ±10% on every sleep, so a pool restarted together does not beat in step
REGISTER_BACKOFF_MAX_S = 30.0
UNREGISTER_TIMEOUT_S = 3.0
WATCH_RETRY_S = 0.5
# The coordinator writes a keep-alive line every interval; this many silent intervals end the stream.
WATCH_IDLE_INTERVALS = 3


@dataclass(frozen=True)
class Profile:
    """What registration says about this machine, fixed at start."""

    capabilities: Capabilities
    engines: dict[str, tuple[str, ...]]  # service → engines this worker can run it with, best first
    mesh: bool = False  # Nebula can run here: the worker joins a pool that runs on the mesh


class Agent:
    def __init__(self, config: WorkerConfig, profile: Profile, client: CoordinatorClient, *,
                 probe: Probe | None = None, policy: Policy | None = None,
                 drivers: dict[str, ServiceDriver] | None = None, rng: random.Random | None = None,
                 on_assignment: Callable[[Assignment], None] | None = None) -> None:
        self.config = config
        self.profile = profile
        self.client = client
        self.probe = probe or Probe.system()
        self.policy = policy or Policy()
        self.drivers = DRIVERS if drivers is None else drivers
        self.rng = rng or random.Random()
        self.on_assignment = on_assignment
        self.identity = initial_identity(config)
        self.supervisors: dict[str, Supervisor] = {}
        self.refused: dict[str, str] = {}
        self.interval = 5.0
        self.registered = False
        self._assigned: tuple[str, ...] | None = None
        self._configured: dict[str, dict[str, str]] = {}  # service → the config env its driver was last told of
        self.mesh = MeshNode(config.data_dir / "mesh", config.data_dir / "logs" / "nebula.log") \
            if profile.mesh else None
        # Set when a service changes state: the next heartbeat goes now, not an interval later.
        self._report_now = asyncio.Event()

    @property
    def worker_id(self) -> str:
        assert self.identity.worker_id is not None
        return self.identity.worker_id

    @property
    def assigned(self) -> tuple[str, ...] | None:
        """The services the coordinator last assigned; None before the first answer."""
        return self._assigned

    def statuses(self) -> dict[str, ServiceStatus]:
        report = {name: ServiceStatus(state=State.FAILED.value, message=why) for name, why in self.refused.items()}
        for name, sup in self.supervisors.items():
            status = sup.status
            report[name] = ServiceStatus(state=status.state.value, port=status.port, restarts=status.restarts,
                                         message=status.message[:500],
                                         snapshot_at=sup.driver.snapshot_at(sup.placement.data_dir))
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then end every service and unregister."""
        async with asyncio.TaskGroup() as group:
            watching = group.create_task(self._watch(stop, group), name="watch")
            failures = 0
            while not stop.is_set():
                try:
                    answer = await (self._heartbeat() if self.registered else self._register())
                except (UnknownWorker, Unauthorized) as exc:
                    if self.registered:
                        log.warning("heartbeat refused (%s): registering again", exc)
                        self.registered = False
                        continue
                    failures += 1
                    log.error("registration refused: %s", exc)
                except Unreachable as exc:
                    failures += 1
                    log.warning("coordinator unreachable (%s); services keep running", exc)
                except IdTaken as exc:
                    failures += 1
                    self._new_id_unless_chosen(exc)
                except Exception as exc:  # noqa: BLE001 - a bad answer must not end the worker
                    failures += 1
                    log.error("coordinator call failed: %s", exc)
                else:
                    failures = 0
                    try:
                        await self._apply(answer, group)
                    except MeshError as exc:
                        log.error("mesh: %s; no service starts until it is joined", exc)
                if self.registered:
                    await self._until_next_beat(stop, self.interval * self.rng.uniform(1 - JITTER, 1 + JITTER))
                else:
                    backoff = min(REGISTER_BACKOFF_MAX_S, 2.0 ** min(failures, 5) / 2)
                    await self._sleep(stop, backoff * self.rng.uniform(1 - JITTER, 1 + JITTER))
            watching.cancel()
            for sup in self.supervisors.values():
                sup.stop()
        await self._unregister()
        if self.mesh is not None:
            await self.mesh.stop()

    async def _watch(self, stop: asyncio.Event, group: asyncio.TaskGroup) -> None:
        """Apply what the coordinator pushes between heartbeats; reconnect whenever the stream drops.

        The open stream is also how the coordinator learns at once that this process died.
        """
        while not stop.is_set():
            token = self.identity.worker_token
            if self.registered and token:
                try:
                    async for answer in self.client.watch(self.worker_id, token, WATCH_IDLE_INTERVALS * self.interval):
                        await self._apply(answer, group)
                except (CoordinatorError, MeshError) as exc:
                    log.debug("watch stream ended: %s", exc)
            await self._sleep(stop, WATCH_RETRY_S * self.rng.uniform(1 - JITTER, 1 + JITTER))

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            return

    async def _until_next_beat(self, stop: asyncio.Event, seconds: float) -> None:
        """Sleep until the next heartbeat is due, or a service changed state, or we are stopping."""
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._report_now.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._report_now.clear()

    def _register_request(self) -> RegisterRequest:
        public = self.config.public_url
        return RegisterRequest(worker_id=self.worker_id, advertise_host=self.config.host,
                               tunnel_url=public, capabilities=self.profile.capabilities,
                               mesh_public_key=self.mesh.public_key() if self.mesh is not None else None,
                               services_status={k: v.model_dump() for k, v in self.statuses().items()})

    async def _register(self) -> Assignment:
        answer = await self.client.register(self._register_request(), self.identity.worker_token)
        self.identity = Identity(answer.worker_id, answer.worker_token)
        save_identity(self.config.data_dir, self.identity)
        self.registered = True
        log.info("registered with %s as %s (%s, tier %s)", self.client.url, answer.worker_id,
                 answer.worker_type, answer.tier)
        return answer

    async def _heartbeat(self) -> Assignment:
        cpu = psutil.cpu_percent(None)
        request = HeartbeatRequest(
            worker_id=self.worker_id, status="healthy", current_load=cpu / 100, cpu_percent=cpu,
            ram_percent=psutil.virtual_memory().percent, gpu_utilization=self.probe.gpu_utilization(),
            services_status=dict(self.statuses()),
            mesh=self.mesh.state() if self.mesh is not None else None)
        assert self.identity.worker_token is not None
        return await self.client.heartbeat(request, self.identity.worker_token)

    def _new_id_unless_chosen(self, exc: IdTaken) -> None:
        if self.config.worker_id:
            log.error("worker id %s is held by another worker (%s); set another WORKER_ID", self.worker_id, exc)
            return
        self.identity = Identity(new_worker_id(), None)
        log.warning("saved worker id is held by another worker; registering as %s", self.worker_id)

    async def _apply(self, answer: Assignment, group: asyncio.TaskGroup) -> None:
        self.interval = answer.heartbeat_interval
        self.client.learn(answer.coordinators)
        if answer.mesh is not None:
            if self.mesh is None:
                raise MeshError("the pool runs on the mesh, and Nebula cannot run here")
            # Before any service starts: they bind to the overlay address, which Nebula brings up, and each
            # assigned port is fenced to those the catalogue lets reach it.
            await self.mesh.apply(answer.mesh, fences((c.name, c.port) for c in answer.service_configs
                                                      if c.name in answer.assigned_services))
        if self.on_assignment and tuple(answer.assigned_services) != self._assigned:
            self.on_assignment(answer)
        self._assigned = tuple(answer.assigned_services)
        desired = [c for c in answer.service_configs if c.name in answer.assigned_services]
        desired += [c for c in _bare_configs(answer) if c.name not in {d.name for d in desired}]
        running = {name: Running(name, sup.stopping) for name, sup in self.supervisors.items()}
        actions = diff(desired, running, self.profile.engines, self.drivers.keys())
        self.refused = dict(actions.refused)
        for name in actions.stop:
            log.info("%s: no longer assigned, stopping", name)
            self.supervisors[name].stop()
        for config in actions.start:
            self._start(config, group)
        self._reconfigure(desired, actions.start)

    def _reconfigure(self, desired: list[ServiceConfig], started: tuple[ServiceConfig, ...]) -> None:
        """Tell each running service's driver when its config changed since it started or was last told."""
        for config in desired:
            sup = self.supervisors.get(config.name)
            if sup is None or config in started:
                continue
            env = self._service_env(config)
            if env != self._configured.get(config.name, sup.placement.env):
                self._configured[config.name] = env
                sup.driver.reconfigure(sup.placement.data_dir, env)

    def _service_env(self, config: ServiceConfig) -> dict[str, str]:
        """A service's variables: the worker's own, then its config's."""
        return {**self.config.service_env, **config.env}

    def _start(self, config: ServiceConfig, group: asyncio.TaskGroup) -> None:
        name, port, data_dir = config.name, config.port, self.config.data_dir
        overlay = self._overlay_host(name)
        placement = Placement(overlay or self.config.bind_host, port, service_dir(data_dir, name),
                              data_dir / "logs" / f"{name}.log", self.config.coordinator_urls, self.interval,
                              self._service_env(config), config.secret,
                              config.engine or next(iter(self.profile.engines.get(name, ())), None),
                              on_mesh=overlay is not None)
        self._configured.pop(name, None)
        sup = Supervisor(self.drivers[name], placement, self.policy, on_change=self._report_now.set)
        self.supervisors[name] = sup
        log.info("%s: assigned, starting on port %d (log %s)", name, port, placement.log_path)
        group.create_task(self._supervise(sup), name=f"supervise-{name}")

    def _overlay_host(self, service: str) -> str | None:
        """The overlay address a service listens on, so that nothing off the mesh reaches it; None off the mesh,
        and for the edge proxy, the pool's way in, which listens where the internet reaches it (the bind host)."""
        address = self.mesh.address if self.mesh is not None else None
        return address if address and not BY_NAME[service].internet_facing else None

    async def _supervise(self, sup: Supervisor) -> None:
        """Run one supervisor; a fault in it ends that service, never the worker."""
        try:
            await sup.run()
        except Exception:
            log.exception("%s: supervisor failed", sup.name)
        finally:
            if self.supervisors.get(sup.name) is sup:
                del self.supervisors[sup.name]

    async def _unregister(self) -> None:
        if not (self.registered and self.identity.worker_token):
            return
        try:
            await asyncio.wait_for(self.client.unregister(self.worker_id, self.identity.worker_token),
                                   UNREGISTER_TIMEOUT_S)
            log.info("unregistered %s", self.worker_id)
        except Exception as exc:  # noqa: BLE001 - leaving anyway; the coordinator times us out
            log.warning("could not unregister: %s", exc)


def _bare_configs(answer: Assignment) -> list[ServiceConfig]:
    """Assigned names the answer gives no config for: the catalogue's port, any engine."""
    named = {c.name for c in answer.service_configs}
    return [ServiceConfig(name=n, port=BY_NAME[n].port, priority=BY_NAME[n].priority, tier=BY_NAME[n].tier,
                          kind=BY_NAME[n].kind.value, engine=None)
            for n in answer.assigned_services if n not in named and n in BY_NAME]


def initial_identity(config: WorkerConfig) -> Identity:
    """The saved identity, unless WORKER_ID names another one; a fresh id when there is none."""
    saved = load_identity(config.data_dir)
    if config.worker_id and config.worker_id != saved.worker_id:
        return Identity(config.worker_id, None)
    return saved if saved.worker_id else Identity(new_worker_id(), None)


def new_worker_id() -> str:
    return f"worker-{uuid.uuid4().hex[:12]}"
