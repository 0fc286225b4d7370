"""The coordinator as an ASGI app: routes, error translation, body limit and the health timers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.responses import FileResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rma import catalog
from rma.body_limit import BodyLimit
from rma.catalog import REPLICATED, SNAPSHOTTED
from rma.coordinator.answers import Answers
from rma.coordinator.etcd import EtcdError
from rma.coordinator.history import History, WorkerFigures
from rma.coordinator.mesh import MeshAuthority
from rma.coordinator.metrics import Metrics
from rma.coordinator.openapi import install as install_openapi
from rma.coordinator.registry import Registry
from rma.coordinator.routes import router, worker_routes
from rma.coordinator.sentinel import CoordinatorSentinel
from rma.coordinator.state import CoordinatorSettings, CoordinatorState
from rma.coordinator.store import Store, open_store
from rma.coordinator.watch import Watchers
from rma.placement import gap_report
from rma.protocol import ApiError
from rma.routing import GatewaySettings, ServiceRouter, coordinator_service

log = logging.getLogger("rma.coordinator")
DASHBOARD = Path(__file__).parent / "dashboard"
PRIMARIES_RETRY_S = 1.0


async def _timers(state: CoordinatorState, services: ServiceRouter) -> None:
    """One loop for the timers: mark silent workers down, batch heartbeat times to disk, keep the history."""
    settings = state.settings
    period = max(0.1, min(settings.heartbeat_interval / 4, settings.flush_interval))
    since_flush = 0.0
    while True:
        await asyncio.sleep(period * random.uniform(0.9, 1.1))
        state.registry.sweep()
        _record(state.history, state.registry, services)
        since_flush += period
        if since_flush >= settings.flush_interval:
            since_flush = 0.0
            state.registry.flush()


async def _follow(store: Store, registry: Registry) -> None:
    """Take in the other coordinators' changes to a shared store as they commit them."""
    async for batch in store.changes():
        for change in batch:
            registry.apply(change)
        registry.caught_up()


async def _follow_primaries(store: Store, registry: Registry) -> None:
    """Name each replicated store's primary as its engine elects it; while the shared store cannot be read,
    keep the last known and try again."""
    while True:
        try:
            async for service, worker_id in store.primaries():
                registry.elected(service, worker_id)
            return
        except EtcdError as error:
            log.warning("cannot read the stores' primaries (%s); trying again", error)
            await asyncio.sleep(PRIMARIES_RETRY_S)


def _record(history: History, registry: Registry, services: ServiceRouter) -> None:
    """The coordinator's own /service traffic, and once a step the pool's healthy replicas and worker figures."""
    now = registry.clock()
    report = services.traffic.report(services.clock())
    history.add_traffic(report, now)
    services.traffic.sent(report)
    if history.due(now):
        pool = registry.pool()
        history.sample(now, {name: pool.serving(name) for name in history.services}, {
            w.worker_id: WorkerFigures(w.metrics.get("cpu_percent", 0.0), w.metrics.get("ram_percent", 0.0), w.load)
            if w.healthy else None for w in registry.workers.values()})


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return JSONResponse({"error": error.message}, status_code=error.status)


async def _invalid(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"error": "invalid request", "detail": _plain(error.errors())}, status_code=422)


async def _store_unreachable(request: Request, error: Exception) -> JSONResponse:
    """No etcd member answered: nothing was kept, so the caller tries again (or another coordinator)."""
    log.warning("the pool's store: %s", error)
    return JSONResponse({"error": "the pool's store (etcd) is unreachable; nothing was changed, try again"},
                        status_code=503, headers={"Retry-After": "1"})


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


def create_app(settings: CoordinatorSettings, gateway: GatewaySettings | None = None) -> Starlette:
    """The coordinator app: the worker protocol on plain Starlette, everything else on FastAPI.

    `/service` goes through `gateway`; by default the edge proxy's settings, read from the same
    variables (RMA_API_KEYS, RMA_CORS_ORIGINS, RMA_MAX_BODY_MB, RMA_RATE_LIMIT, RMA_RATE_BURST).
    """
    store = open_store(settings.store_url, settings.data_dir)
    withheld = LONE_REGISTRY if not store.shared else ONE_MESH_CA if settings.mesh is not None else {}
    # A store's engine elects its primary in the shared store, which its replicas reach off the mesh only.
    replicated = REPLICATED if store.shared and settings.mesh is None else frozenset()
    # A store that cannot replicate keeps snapshots in S3 where S3 replicates.
    snapshotted = SNAPSHOTTED if "minio" in replicated else frozenset()
    registry = Registry(store, settings.heartbeat_interval, settings.grace_intervals, settings.failure_cooldown,
                        withheld=withheld, replicated=replicated, snapshotted=snapshotted,
                        restore_grace=settings.restore_grace)
    mesh = None if settings.mesh is None else MeshAuthority(settings.mesh, settings.data_dir / "mesh-ca", store,
                                                             registry.clock)
    answers = Answers(registry, settings.heartbeat_interval, mesh, settings.store_url if store.shared else None,
                      settings.snapshot_interval)
    state = CoordinatorState(settings, registry, Metrics(registry), answers, Watchers(registry, answers.encoded),
                             History(), mesh)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not settings.join_token:
            log.warning("RMA_JOIN_TOKEN is unset: registration is accepted from loopback only")
        if not settings.admin_token:
            log.warning("RMA_ADMIN_TOKEN is unset: /api/admin is open to loopback only")
        tasks = [asyncio.create_task(_timers(state, services)), asyncio.create_task(_follow(store, registry)),
                 asyncio.create_task(_follow_primaries(store, registry))]
        if "redis" in replicated:
            sentinel = CoordinatorSentinel(settings.data_dir / "sentinel", settings.host)
            tasks.append(asyncio.create_task(sentinel.follow(registry)))
        try:
            async with services.running():
                yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            registry.flush()
            store.close()

    handlers: dict[Any, Any] = {
        ApiError: _api_error, RequestValidationError: _invalid, StarletteHTTPException: _http_error,
        EtcdError: _store_unreachable,
    }
    api = FastAPI(title="RMA pool coordinator", exception_handlers=handlers)
    api.state.coordinator = state
    api.include_router(router)
    install_openapi(api, settings.max_body_bytes)  # the whole contract, not FastAPI's routes alone
    # The coordinator's own `/service/{name}/{path}`: the routing engine over the registry itself, guarded as
    # the edge proxy is (a second public way to the services).
    if gateway is None:  # `rma coordinator --api-keys` (or RMA_API_KEYS) guards /service, as on the edge
        from_env = GatewaySettings.from_env(os.environ)
        gateway = dataclasses.replace(from_env, api_keys=settings.api_keys or from_env.api_keys)
    table, reasons = (registry.routing_table, lambda: _gap_reasons(registry)) if mesh is None else (
        dict, lambda: NOT_ON_THE_MESH)  # not a member of its pool's mesh: the overlay addresses are out of its reach
    services, guarded = coordinator_service(table, gateway, reasons=reasons, version=lambda: registry.generation)
    app = Starlette(
        routes=[
            *worker_routes(state),
            Mount("/service", app=guarded),
            # The operator's dashboard: static files that read /api/admin (and its token) like any client.
            Route("/", _dashboard_page, methods=["GET"]),
            Mount("/dashboard", app=StaticFiles(directory=DASHBOARD)),
            Mount("", app=api),
        ],
        exception_handlers=handlers,
        # Uploads through /service stream to a replica; the gateway in front of it caps those itself.
        middleware=[Middleware(BodyLimit, limit=settings.max_body_bytes,
                               error_body=lambda message: json.dumps({"error": message}).encode(),
                               skip_prefix="/service/")],
        lifespan=lifespan,
    )
    app.state.coordinator = state
    return app


# A coordinator on its own SQLite file gives no worker the `coordinator` service: a replica needs the pool's
# registry, and one started on a file of its own would be a second pool (two placements, two sets of secrets).
LONE_REGISTRY = {"coordinator": "needs a shared store: this coordinator keeps the pool in its own SQLite file, "
                                "and a replica on a file of its own would be a second, split pool"}


# A mesh pool's CA key is on its first coordinator's disk alone: a replica could not sign members' certificates.
ONE_MESH_CA = {"coordinator": "a mesh pool's replicas would need its CA key, which only the first coordinator has"}


# Why a mesh pool's coordinator routes nothing through its `/service`: it signs the members' certificates but is
# not one of them. Users call the services through an edge proxy.
NOT_ON_THE_MESH = {name: "this pool runs on a mesh the coordinator is not a member of: call an edge proxy"
                   for name in catalog.BY_NAME}


async def _dashboard_page(request: Request) -> FileResponse:
    return FileResponse(DASHBOARD / "index.html")


def _gap_reasons(registry: Registry) -> dict[str, str]:
    return {g.service: g.reason for g in gap_report(registry.views(), registry.pool()) if g.reason}


def _plain(errors: Any) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors]
