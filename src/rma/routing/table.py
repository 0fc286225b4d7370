"""The routing table: each service's healthy endpoints, as the coordinator last reported them.

The router reads a frozen `Table` on every request and never waits for the coordinator: a
refresher swaps in a new table every second or two, and keeps the last one when the
coordinator is unreachable (the data plane outlives the control plane).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

log = logging.getLogger("rma.routing")

REFRESH_S = 1.0  # how stale a replica list may get: a new replica gets traffic within ~1 s
GAPS_EVERY_S = 5.0  # the gap report is only read to explain a 503, so it may lag more
FETCH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Endpoint:
    """One healthy replica of a service."""

    service: str
    worker_id: str
    url: str  # http://host:port, the key the balancer keeps state under
    load: float = 0.0
    health_path: str = ""  # the replica's engine's health check, where the coordinator says (else the catalogue's)


@dataclass(frozen=True)
class Table:
    """A snapshot: service → endpoints (least loaded first), and why uncovered services are uncovered."""

    services: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)
    loaded: bool = False  # False until the first successful fetch
    problem: str = ""  # why the table may be stale (the last fetch error), empty when fresh

    def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return self.services.get(service, ())


class TableSource(Protocol):
    """Anything that hands the router its current table without blocking."""

    def current(self) -> Table: ...


def parse_table(payload: Any) -> dict[str, tuple[Endpoint, ...]]:
    """The coordinator's `/api/services/table` answer (or `Registry.routing_table()`) as endpoints."""
    services = payload.get("services", payload) if isinstance(payload, dict) else None
    if not isinstance(services, dict):
        raise ValueError("the routing table is not a JSON object of services")
    table: dict[str, tuple[Endpoint, ...]] = {}
    for name, replicas in services.items():
        if not isinstance(replicas, list):
            raise ValueError(f"replicas of {name!r} are not a list")
        table[name] = tuple(_endpoint(name, r) for r in replicas if isinstance(r, dict) and r.get("url"))
    return table


def _endpoint(service: str, replica: dict[str, Any]) -> Endpoint:
    load, health_path = replica.get("load"), replica.get("health_path")
    return Endpoint(service, str(replica.get("worker_id", "")), str(replica["url"]).rstrip("/"),
                    float(load) if isinstance(load, int | float) else 0.0,
                    health_path if isinstance(health_path, str) and health_path.startswith("/") else "")


def parse_reasons(payload: Any) -> dict[str, str]:
    """Why each uncovered service is uncovered, from the coordinator's gap report."""
    gaps = payload.get("gaps", []) if isinstance(payload, dict) else []
    return {str(g["service"]): str(g.get("reason") or "") for g in gaps
            if isinstance(g, dict) and "service" in g and g.get("reason")}


def with_replicas(urls: tuple[str, ...], services: Mapping[str, tuple[Endpoint, ...]]) -> tuple[str, ...]:
    """`urls` (the configured coordinators) and, after them, the coordinator replicas the table lists now: more
    places to read it from, should those go."""
    return (*urls, *(e.url for e in services.get("coordinator", ()) if e.url not in urls))


class HttpTableSource:
    """Polls the coordinator(s); the only writer of its table. Tries each URL in turn on failure."""

    def __init__(self, coordinator_urls: tuple[str, ...], admin_token: str | None = None,
                 refresh_s: float = REFRESH_S, rng: random.Random | None = None) -> None:
        self.configured = self.urls = coordinator_urls
        self.admin_token = admin_token
        self.refresh_s = refresh_s
        self.rng = rng or random.Random()
        self._table = Table(problem="the routing table has not been loaded from the coordinator yet")
        self._gaps_at = float("-inf")

    def current(self) -> Table:
        return self._table

    async def run(self, client: httpx.AsyncClient) -> None:
        """Snapshot (fetch) → decide (parse) → apply (swap) → sleep with jitter, until cancelled."""
        while True:
            await self.refresh(client)
            await asyncio.sleep(self.refresh_s * self.rng.uniform(0.8, 1.2))

    async def refresh(self, client: httpx.AsyncClient) -> None:
        problems = []
        for url in self.urls:
            try:
                services = parse_table(await self._get(client, f"{url}/api/services/table"))
                reasons = await self._reasons(client, url, services)
            except (httpx.HTTPError, ValueError, KeyError) as error:
                problems.append(f"{url}: {error or type(error).__name__}")
                continue
            self._table = Table(services, reasons, loaded=True)
            self.urls = with_replicas(self.configured, services)
            return
        problem = "coordinator unreachable, serving the last table (" + "; ".join(problems) + ")"
        if self._table.problem != problem:
            log.warning("%s", problem)
        self._table = Table(self._table.services, self._table.reasons, self._table.loaded, problem)

    async def _reasons(self, client: httpx.AsyncClient, url: str,
                       services: Mapping[str, tuple[Endpoint, ...]]) -> Mapping[str, str]:
        """Read the gap report only when some service is uncovered, and at most every GAPS_EVERY_S."""
        now = time.monotonic()
        if all(services.values()) or now - self._gaps_at < GAPS_EVERY_S:
            return self._table.reasons
        self._gaps_at = now
        try:
            return parse_reasons(await self._get(client, f"{url}/api/admin/gaps"))
        except httpx.HTTPStatusError as error:
            status = error.response.status_code
            why = f"the coordinator's gap report is not readable here (HTTP {status}; set RMA_ADMIN_TOKEN)"
            return {name: why for name, endpoints in services.items() if not endpoints}

    async def _get(self, client: httpx.AsyncClient, url: str) -> Any:
        headers = {"authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        response = await client.get(url, headers=headers, timeout=FETCH_TIMEOUT_S)
        response.raise_for_status()
        return response.json()


class LazyReasons(Mapping[str, str]):
    """The gap report's reasons, built only when a 503 needs one: a report over a large pool is not free."""

    def __init__(self, build: Callable[[], Mapping[str, str]]) -> None:
        self._build = build
        self._reasons: Mapping[str, str] | None = None

    def _get(self) -> Mapping[str, str]:
        if self._reasons is None:
            self._reasons = dict(self._build())
        return self._reasons

    def __getitem__(self, service: str) -> str:
        return self._get()[service]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class CallableSource:
    """A table built in-process (the coordinator's registry), rebuilt at most every `ttl_s`, and at once
    whenever `version()` changes (a replica joined or left), so a new or lost replica is never served stale."""

    def __init__(self, table: Callable[[], Any], reasons: Callable[[], Mapping[str, str]] | None = None,
                 ttl_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 version: Callable[[], int] | None = None) -> None:
        self._build_table = table
        self._build_reasons = reasons
        self._version = version
        self.ttl_s = ttl_s
        self.clock = clock
        self._table = Table()
        self._built_at = float("-inf")
        self._built_version: int | None = None

    def current(self) -> Table:
        now = self.clock()
        version = self._version() if self._version is not None else None
        if now - self._built_at >= self.ttl_s or version != self._built_version:
            services = parse_table(self._build_table())
            reasons: Mapping[str, str] = LazyReasons(self._build_reasons) if self._build_reasons else {}
            self._table = Table(services, reasons, loaded=True)
            self._built_at, self._built_version = now, version
        return self._table
