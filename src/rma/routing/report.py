"""A router tells the coordinator what it routed, every few seconds.

The body is `TrafficReport` as JSON: counts since the last report a coordinator took, so a
coordinator keeps no state per router; while none takes it, the router counts on and the next
report covers the whole interval.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from collections.abc import Callable

import httpx

from rma.routing.traffic import Traffic
from rma.traffic_report import REPORT_EVERY_S

log = logging.getLogger("rma.routing")

REPORT_PATH = "/api/admin/router-report"
POST_TIMEOUT_S = 2.0


class TrafficReporter:
    """Posts the router's traffic to the first coordinator that takes it, every `every_s` (with jitter)."""

    def __init__(self, coordinator_urls: tuple[str, ...], admin_token: str | None = None,
                 every_s: float = REPORT_EVERY_S, rng: random.Random | None = None) -> None:
        self.urls = coordinator_urls
        self.headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
        self.every_s = every_s
        self.rng = rng or random.Random()
        self.problem = ""

    async def run(self, client: httpx.AsyncClient, traffic: Traffic, clock: Callable[[], float]) -> None:
        """Snapshot (the counts) → post → forget what was taken → sleep with jitter, until cancelled."""
        while True:
            await asyncio.sleep(self.every_s * self.rng.uniform(0.8, 1.2))
            await self.report(client, traffic, clock())

    async def report(self, client: httpx.AsyncClient, traffic: Traffic, now: float) -> bool:
        """Post what `traffic` counted until `now`; True when a coordinator took it (or it was empty)."""
        report = traffic.report(now)
        if report.services and not await self._post(client, json.dumps(dataclasses.asdict(report)).encode()):
            return False
        traffic.sent(report)
        return True

    async def _post(self, client: httpx.AsyncClient, body: bytes) -> bool:
        problems = []
        for url in self.urls:
            try:
                response = await client.post(url + REPORT_PATH, content=body, timeout=POST_TIMEOUT_S,
                                             headers={**self.headers, "content-type": "application/json"})
                response.raise_for_status()
            except httpx.HTTPStatusError as error:
                status = error.response.status_code
                problems.append(f"{url}: HTTP {status}" + ("; set RMA_ADMIN_TOKEN" if status in (401, 403) else ""))
            except httpx.HTTPError as error:
                problems.append(f"{url}: {error or type(error).__name__}")
            else:
                self.problem = ""
                return True
        problem = "no coordinator took the traffic report, keeping the counts (" + "; ".join(problems) + ")"
        if problem != self.problem:
            log.warning("%s", problem)
            self.problem = problem
        return False
