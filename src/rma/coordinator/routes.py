"""The coordinator's HTTP routes: thin translations between the contract and the registry."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from rma.catalog import BY_NAME, SERVICES
from rma.coordinator.auth import (
    bearer,
    bearer_value,
    has_store_key,
    is_admin,
    relayed,
    require_secret,
    same_secret,
)
from rma.coordinator.mesh import MeshAuthority
from rma.coordinator.record import WorkerRecord, url_host, worker_kind
from rma.coordinator.registry import Registry
from rma.coordinator.router_report import ReportBody
from rma.coordinator.secrets import CONNECTION_URLS
from rma.coordinator.state import CoordinatorState
from rma.gap_reasons import short_reason
from rma.placement import gap_report
from rma.protocol import (
    ApiError,
    ClientRequest,
    HeartbeatRequest,
    NotFound,
    RegisterRequest,
    Unauthorized,
    Unavailable,
)

router = APIRouter()
# The worker protocol is the coordinator's steady load (10,000 workers beating): these routes
# are plain Starlette endpoints (see `worker_routes`), which skips ~150 µs of FastAPI per request.
Model = TypeVar("Model", bound=BaseModel)


class InvalidBody(ApiError):
    status = 422

    def __init__(self, error: ValidationError | ValueError) -> None:
        if isinstance(error, ValidationError):
            details = [
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in error.errors(include_url=False, include_context=False, include_input=False)
            ]
        else:
            details = [str(error)]
        super().__init__("invalid request body: " + "; ".join(details))


def _state(request: Request) -> CoordinatorState:
    state: CoordinatorState = request.app.state.coordinator
    return state


async def _parse(request: Request, model: type[Model]) -> Model:
    body = await request.body()
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as error:
        raise InvalidBody(error) from None


def _worker_token_check(state: CoordinatorState, request: Request, worker_id: str) -> None:
    _check_worker_token(state, bearer(request), worker_id)


def _check_worker_token(state: CoordinatorState, token: str | None, worker_id: str) -> None:
    """Before anything says whether the id exists: an unknown id answers as a wrong token does."""
    if token is None:
        raise Unauthorized("this route needs the worker's token as 'Authorization: Bearer <token>'")
    if not state.registry.token_matches(worker_id, token):
        raise Unauthorized("the worker token does not match this worker")


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    registry = _state(request).registry
    healthy = sum(1 for w in registry.workers.values() if w.healthy)
    return {"status": "healthy", "workers": {"total": len(registry.workers), "active": healthy,
                                             "stale": len(registry.workers) - healthy}}


async def register(request: Request) -> JSONResponse:
    """POST /api/worker/register."""
    state = _state(request)
    settings = state.settings
    require_secret(request, settings.join_token, "registration", "RMA_JOIN_TOKEN")
    body = await _parse(request, RegisterRequest)
    peer = request.client.host if request.client else "127.0.0.1"
    advertised = body.advertise_host or body.vpn_ip or url_host(body.tunnel_url)
    presented = request.headers.get("x-worker-token")
    kind = worker_kind(body.capabilities).value
    if state.mesh is None:
        host = state.admission.host(advertised, peer, relayed(request))
    else:  # routers reach the worker at the overlay address in its certificate, wherever it dials from
        body.worker_id = state.registry.admissible_id(body.worker_id, presented)
        # Only an edge worker's own address matters: every member dials its lighthouse there.
        underlay = state.admission.host(advertised, peer, relayed(request)) if kind == "edge" else peer
        host = state.mesh.admit(body.worker_id, kind, body.mesh_public_key, underlay)
    record, token = state.registry.register(body, host, presented)
    if state.mesh is not None and kind == "edge":
        _tell_every_member(state)  # a new lighthouse: members dial it now, not at their next heartbeat
    state.metrics.registrations.inc()
    answer = state.answers.assignment(record) | {
        "status": "registered", "worker_type": record.kind.value,
        "tier": min((BY_NAME[s].tier for s in record.assigned), default=_KIND_TIER[record.kind.value]),
        "worker_token": token,
        "message": f"Worker registered with {len(record.assigned)} service(s)",
    }
    return JSONResponse(answer)


_KIND_TIER = {"gpu": 1, "cpu": 2, "storage": 3, "edge": 4}


class Heartbeat:
    """POST /api/worker/heartbeat, the pool's steady load, as a bare ASGI app.

    It skips Starlette's Request and Response objects (about 40 µs of a ~200 µs beat): the
    body is read from `receive`, the token from the raw headers, and the answer is the
    encoded assignment cached in `Answers`. Errors still raise ApiError for the app's handler.
    """

    def __init__(self, state: CoordinatorState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        state = self.state
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            body = HeartbeatRequest.model_validate_json(b"".join(chunks) or b"{}")
        except ValidationError as error:
            raise InvalidBody(error) from None
        token = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        _check_worker_token(state, bearer_value(token), body.worker_id)
        record = state.registry.heartbeat(body)
        state.port_checks.after_beat(record)
        answer = state.answers.encoded(record)
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})
        state.metrics.heartbeat_seconds.observe(time.perf_counter() - started)


async def unregister(request: Request) -> JSONResponse:
    """DELETE /api/worker/unregister/{worker_id}."""
    worker_id = request.path_params["worker_id"]
    state = _state(request)
    admin = state.settings.admin_token
    if not (admin and same_secret(bearer(request), admin)):
        _worker_token_check(state, request, worker_id)
    state.registry.unregister(worker_id)
    state.answers.forget(worker_id)
    return JSONResponse({"status": "ok", "message": f"worker {worker_id} unregistered"})


def _admin(request: Request) -> CoordinatorState:
    state = _state(request)
    require_secret(request, state.settings.admin_token, "/api/admin", "RMA_ADMIN_TOKEN")
    return state


def _worker_json(record: WorkerRecord, now: float, mesh: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "worker_id": record.worker_id,
        "worker_type": record.kind.value,
        "host": record.host,
        "tunnel_url": record.tunnel_url,
        "healthy": record.healthy,
        "is_healthy": record.healthy,
        "status": record.status if record.healthy else "down",
        "assigned_services": list(record.assigned),
        "services_status": {k: v.model_dump() for k, v in record.services_status.items()},
        "capabilities": record.capabilities.model_dump(mode="json"),
        "current_load": record.load,
        "metrics": record.metrics,
        "holds_data": sorted(record.holds_data),
        # Reported ports routers do not use (yet): the assigned port, or one the coordinator confirmed, only.
        "port_checks": record.port_checks(),
        "registered_at": record.registered_at,
        "last_heartbeat": record.last_seen,
        "age_seconds": round(now - record.last_seen, 3),
        "mesh": mesh,  # its overlay address, groups and certificate's expiry, on a pool that runs on the mesh
    }


@router.post("/api/admin/mesh/revoke/{worker_id}")
async def mesh_revoke(worker_id: str, request: Request) -> dict[str, Any]:
    """Cut a worker off the mesh: its certificates reach every node's blocklist with their next heartbeat,
    it is unregistered, and its id and key can never join again."""
    state = _admin(request)
    if state.mesh is None:
        raise NotFound("this pool does not run on the mesh (RMA_MESH_NETWORK is unset)")
    fingerprints = state.mesh.revoke(worker_id)
    if worker_id in state.registry.workers:
        state.registry.unregister(worker_id)
        state.answers.forget(worker_id)
    _tell_every_member(state)  # down every watch stream now: each node drops the worker at once
    return {"status": "revoked", "worker_id": worker_id, "fingerprints": fingerprints}


@router.post("/api/admin/mesh/clients")
async def mesh_client(request: Request) -> dict[str, Any]:
    """Admit an application's server to the mesh as a client member (group `client`): its certificate, the CA
    and the lighthouses, for `rma client-cert` to write its Nebula config."""
    state = _admin(request)
    if state.mesh is None:
        raise NotFound("this pool does not run on the mesh (RMA_MESH_NETWORK is unset)")
    body = await _parse(request, ClientRequest)
    return state.mesh.admit_client(body.name, body.public_key).model_dump()


def _tell_every_member(state: CoordinatorState) -> None:
    """Push every worker its answer now, for what changed for the whole mesh (a revocation, a lighthouse)."""
    for record in state.registry.workers.values():
        state.watchers.push(record)


def _mesh_json(mesh: MeshAuthority | None, record: WorkerRecord) -> dict[str, Any] | None:
    """The worker's place on the mesh (address, groups, certificate) and how its node says it is reached."""
    summary = mesh.summary(record.worker_id) if mesh is not None else None
    if summary is None:
        return None
    reached = record.mesh_state.model_dump(include={"direct", "relayed", "lighthouse_rtt_ms"}) \
        if record.mesh_state is not None else None
    return summary | {"tunnels": reached}


@router.get("/api/admin/workers")
async def admin_workers(request: Request) -> dict[str, Any]:
    state = _admin(request)
    now = state.registry.clock()
    mesh = state.mesh
    workers = [_worker_json(r, now, _mesh_json(mesh, r)) for r in state.registry.workers.values()]
    return {"workers": workers, "total": len(workers), "healthy": sum(1 for w in workers if w["healthy"])}


@router.get("/api/admin/gaps")
async def admin_gaps(request: Request) -> dict[str, Any]:
    state = _admin(request)
    registry = state.registry
    now = registry.clock()
    gaps = [dataclasses.asdict(g) | {"short_reason": short_reason(g.reason),
                                     "engines": registry.engines_serving(g.service)}
            | _snapshot_age(registry, g.service, now) for g in gap_report(registry.views(), registry.pool())]
    critical = [g for g in gaps if g["status"] == "critical"]
    warnings = [g for g in gaps if g["status"] == "warning"]
    return {
        "gaps": gaps, "critical_gaps": critical, "warnings": warnings,
        "summary": {"total_services": len(gaps), "covered": len(gaps) - len(critical),
                    "needs_attention": len(critical) + len(warnings)},
    }


def _snapshot_age(registry: Registry, service: str, now: float) -> dict[str, float | None]:
    """A snapshotted store's `snapshot_age_s`: seconds since its newest snapshot was taken (None: there is none)."""
    if service not in registry.snapshotted:
        return {}
    taken = registry.snapshot_at(service)
    return {"snapshot_age_s": None if taken is None else round(max(0.0, now - taken), 1)}


@router.get("/api/admin/services")
async def admin_services(request: Request) -> dict[str, Any]:
    state = _admin(request)
    services = []
    for service in SERVICES:
        replicas = state.registry.replicas(service.name)
        services.append({
            "name": service.name, "tier": service.tier, "requires": service.kind.value,
            "priority": service.priority, "port": service.port, "stateful": service.stateful,
            "workers": [r["worker_id"] for r in replicas], "worker_count": len(replicas),
        })
    return {"services": services, "total_services": len(services)}


@router.get("/api/admin/events")
async def admin_events(request: Request) -> dict[str, Any]:
    state = _admin(request)
    return {"events": [dataclasses.asdict(e) for e in reversed(state.registry.events)]}


@router.get("/api/admin/history")
async def admin_history(request: Request) -> Response:
    """The last hour per service and per worker, in steps, for the dashboard's charts."""
    state = _admin(request)
    return Response(state.history.encoded(state.registry.clock()), media_type="application/json")


@router.post("/api/admin/router-report")
async def router_report(request: Request) -> dict[str, Any]:
    """A router's traffic since its last report (rma.routing.report), into the history."""
    state = _admin(request)
    body = await _parse(request, ReportBody)
    state.history.add_traffic(body.report(), state.registry.clock())
    return {"status": "ok"}


@router.get("/api/services/discover/{service}")
async def discover(service: str, request: Request) -> dict[str, Any]:
    """Healthy replicas; a store's secret and connection URL only for admin callers and store keys (X-API-Key)."""
    state = _state(request)
    registry = state.registry
    if service not in BY_NAME:
        raise NotFound(f"unknown service {service!r}; the catalogue has: {', '.join(BY_NAME)}")
    replicas = registry.replicas(service)
    if not replicas:
        raise Unavailable(f"no healthy workers found for service: {service}")
    secret = registry.secrets.secret_for(service)
    trusted = is_admin(request, state.settings.admin_token) or has_store_key(request, state.settings.store_keys)
    if secret is not None and trusted:
        for replica in replicas:
            engine = registry.engine_of(service, replica["worker_id"])
            replica["secret"] = secret
            replica["engine"] = engine
            replica["connection_url"] = CONNECTION_URLS[service](replica["host"], replica["port"], secret, engine)
            if service == "minio":
                replica |= {"endpoint": replica["url"], "access_key": BY_NAME[service].engine(engine or "minio").user}
    return {"service": service, "workers": replicas, "count": len(replicas),
            "recommended": replicas[0]["worker_id"]}


@router.get("/api/services/table")
async def routing_table(request: Request) -> dict[str, Any]:
    """Every service's healthy replicas in one answer, for routers that refresh every second or two."""
    registry = _state(request).registry
    return {"services": registry.routing_table()}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = _state(request)
    return Response(generate_latest(state.metrics.prometheus), media_type=CONTENT_TYPE_LATEST)


async def watch(request: Request) -> StreamingResponse:
    """GET /api/worker/watch/{worker_id}: a JSON line per new assignment, pushed as it is made."""
    worker_id = request.path_params["worker_id"]
    state = _state(request)
    _worker_token_check(state, request, worker_id)
    record = state.registry.get(worker_id)
    lines = state.watchers.stream(record, state.settings.heartbeat_interval)
    return StreamingResponse(lines, media_type="application/x-ndjson")


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def worker_routes(state: CoordinatorState) -> list[Route]:
    """The worker protocol, kept off FastAPI (the hot path); each path answers any other method 405."""
    routes = []
    for path, endpoint, method in (
        ("/api/worker/register", register, "POST"),
        ("/api/worker/heartbeat", Heartbeat(state), "POST"),
        ("/api/worker/unregister/{worker_id}", unregister, "DELETE"),
        ("/api/worker/watch/{worker_id}", watch, "GET"),
    ):
        others = [m for m in HTTP_METHODS if m not in (method, "HEAD" if method == "GET" else method)]
        routes += [Route(path, endpoint, methods=[method]),
                   Route(path, _wrong_method(method), methods=others, include_in_schema=False)]
    return routes


def _wrong_method(allowed: str) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Without it, the catch-all mount behind these routes would answer another method 404."""
    async def refuse(request: Request) -> JSONResponse:
        return JSONResponse({"error": f"{request.url.path} takes {allowed} only"}, 405, headers={"allow": allowed})
    return refuse
