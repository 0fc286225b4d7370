"""Calling other pool services from a service app: through a load balancer the coordinator lists.

Tier-2 apps lean on tier 1 (document-processing sends scanned pages to vision-ocr, notes-coa
asks llm-inference for the letter). They read the coordinator's routing table (the one the
routers read), so they know at once whether the service they need is covered, and send the
call through a healthy load-balancer replica, which picks the least busy replica and retries
where that is safe. With no load balancer running, the coordinator's own `/service` route
(the same routing engine) carries the call instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import httpx

from rma.routing.table import Endpoint, parse_table, with_replicas

TABLE_TTL_S = 2.0  # as fresh as the routers' own tables


class PeerUnavailable(Exception):
    """The service cannot be reached now; the message says why, for the caller's 503."""


class Peers:
    """Where to send a call to another pool service, from a cached copy of the routing table."""

    def __init__(self, coordinator_urls: Sequence[str], client: httpx.AsyncClient) -> None:
        self.configured = tuple(url.rstrip("/") for url in coordinator_urls)
        self.coordinator_urls = list(self.configured)
        self.client = client
        self._table: dict[str, tuple[Endpoint, ...]] = {}
        self._fetched_at = float("-inf")
        self._coordinator = ""

    async def _refresh(self) -> None:
        if time.monotonic() - self._fetched_at < TABLE_TTL_S:
            return
        if not self.coordinator_urls:
            raise PeerUnavailable("no coordinator URL was given to this service")
        problems = []
        for url in self.coordinator_urls:
            try:
                answer = await self.client.get(f"{url}/api/services/table")
                answer.raise_for_status()
                self._table = parse_table(answer.json())
                self.coordinator_urls = list(with_replicas(self.configured, self._table))
            except (httpx.HTTPError, ValueError) as error:
                problems.append(f"{url}: {type(error).__name__}")
                continue
            self._fetched_at, self._coordinator = time.monotonic(), url
            return
        if not self._table:  # else keep routing by the last table, as the routers do
            raise PeerUnavailable(f"the coordinator is unreachable ({'; '.join(problems)})")

    async def base_url(self, service: str) -> str:
        """`…/service/{service}` on a load balancer (or the coordinator); PeerUnavailable when uncovered."""
        await self._refresh()
        if not self._table.get(service):
            raise PeerUnavailable(f"{service} is not running anywhere in the pool now")
        balancers = self._table.get("load-balancer", ())
        router = random.choice(balancers).url if balancers else self._coordinator
        return f"{router}/service/{service}"
