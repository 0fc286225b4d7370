"""Replica choice and replica health, with no I/O: `now` and a seeded `rng` come in as inputs.

Power-of-two-choices on outstanding requests keeps replicas evenly busy without the herding of
least-loaded (GPUStack #5709: round-robin left 7 requests on one replica and 1 on another).
Passive ejection takes a replica out at the first refused connection or after a run of 5xx;
see `ReplicaHealth` for how each comes back. A retry budget bounds retries to a fraction of traffic, so retries cannot
multiply an overload.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rma.routing.table import Endpoint

EJECT_AFTER_5XX = 3  # consecutive 5xx answers: one could be a bad request, three is the replica
BACKOFF_BASE_S = 1.0  # first ejection; doubled on each ejection without a success in between
BACKOFF_MAX_S = 30.0  # a replica that comes back is readmitted by the active check anyway


@dataclass
class ReplicaHealth:
    """One replica's passive-health state machine.

    admitted → ejected. A replica ejected for its 5xx answers comes back when its backoff ends
    (doubling on each repeat). One ejected as unreachable comes back only when an active health
    check passes: a dead replica gets no traffic however long the coordinator takes to notice.
    """

    outstanding: int = 0
    sent: int = 0  # attempts sent to it, for the operator's view
    failures: int = 0  # consecutive 5xx answers
    ejections: int = 0  # consecutive ejections; sets the backoff
    ejected_until: float = 0.0
    awaiting_probe: bool = False
    reason: str = ""

    def admitted(self, now: float) -> bool:
        return now >= self.ejected_until and not self.awaiting_probe

    def eject(self, now: float, reason: str, by_5xx: bool = False) -> None:
        if not by_5xx:
            self.awaiting_probe = True
        if now < self.ejected_until:
            return
        self.ejected_until = now + min(BACKOFF_BASE_S * 2 ** self.ejections, BACKOFF_MAX_S)
        self.ejections += 1
        self.failures = 0
        self.reason = reason

    def succeeded(self, now: float) -> None:
        self.failures = 0
        if self.admitted(now):
            self.ejections = 0
            self.reason = ""

    def answered(self, status: int, now: float) -> None:
        if status >= 500:
            self.answered_5xx(now, status)
        elif self.failures or self.ejections or self.reason:  # else nothing to forget: the usual case
            self.succeeded(now)

    def end(self) -> None:
        """An attempt sent to it is over, answered or not."""
        if self.outstanding > 0:
            self.outstanding -= 1

    def answered_5xx(self, now: float, status: int) -> None:
        self.failures += 1
        if self.failures >= EJECT_AFTER_5XX:
            self.eject(now, f"{self.failures} consecutive {status} answers", by_5xx=True)

    def readmit(self) -> None:
        """An active health check passed: an unreachable replica is back at once."""
        if self.awaiting_probe:
            self.awaiting_probe = False
            self.ejected_until = 0.0
            self.failures = 0


class Balancer:
    """The one owner of per-replica state, keyed by endpoint URL."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.replicas: dict[str, ReplicaHealth] = {}

    def health(self, url: str) -> ReplicaHealth:
        state = self.replicas.get(url)
        if state is None:
            state = self.replicas[url] = ReplicaHealth()
        return state

    def choose(self, endpoints: Sequence[Endpoint], exclude: Iterable[str], now: float) -> Endpoint | None:
        """Pick a replica not in `exclude`: two at random among the admitted, the less busy wins.

        With every candidate ejected, choose among all of them (a panic mode, as Envoy's): the
        coordinator still calls them healthy, and a try beats a certain 503.
        """
        skip = set(exclude) if exclude else ()
        candidates = [e for e in endpoints if e.url not in skip] if skip else endpoints
        if len(candidates) == 1:
            return candidates[0]  # admitted or not, the only one: see the panic mode above
        admitted = [e for e in candidates if self.health(e.url).admitted(now)]
        pool = admitted or candidates
        if len(pool) <= 1:
            return pool[0] if pool else None
        first, second = self.rng.sample(pool, 2)
        return min((first, second), key=self._busyness)

    def _busyness(self, endpoint: Endpoint) -> tuple[int, float, str]:
        return self.health(endpoint.url).outstanding, endpoint.load, endpoint.url

    def begin(self, url: str) -> ReplicaHealth:
        """An attempt goes to `url`; its state is returned so the caller can end it without a look-up."""
        state = self.health(url)
        state.outstanding += 1
        state.sent += 1
        return state

    def end(self, url: str) -> None:
        self.health(url).end()

    def answered(self, url: str, status: int, now: float) -> None:
        self.health(url).answered(status, now)

    def unreachable(self, url: str, now: float, reason: str) -> None:
        self.health(url).eject(now, reason)

    def probed(self, url: str, ok: bool, now: float, reason: str = "") -> None:
        state = self.health(url)
        if ok:
            state.readmit()
        else:
            state.eject(now, reason or "active health check failed")

    def forget_except(self, urls: Iterable[str]) -> None:
        """Drop state of replicas gone from the table (once idle), so memory follows the pool."""
        keep = set(urls)
        for url in [u for u, s in self.replicas.items() if u not in keep and s.outstanding == 0]:
            del self.replicas[url]


class RetryBudget:
    """Retries may add at most `ratio` of recent requests, plus `floor_per_s` so a quiet router can retry."""

    def __init__(self, ratio: float = 0.2, floor_per_s: float = 10.0, cap: float = 100.0) -> None:
        self.ratio = ratio
        self.floor_per_s = floor_per_s
        self.cap = cap
        self.tokens = cap
        self.requests = 0  # counted since the last refill: each adds `ratio` then (the fast path only counts)
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        earned = self.requests * self.ratio
        if self._at is not None:
            earned += max(0.0, now - self._at) * self.floor_per_s
        self.tokens = min(self.cap, self.tokens + earned)
        self.requests = 0
        self._at = now

    def request(self) -> None:
        self.requests += 1

    def allows(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1.0

    def try_retry(self, now: float) -> bool:
        self._refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
