"""The wait for a snapshotted store's vanished holder, before the store is restored on another worker.

A store that cannot replicate (chromadb, neo4j) lives on one worker; a copy elsewhere would start from its newest
snapshot and lose what was written since. So when its holder goes, placement withholds the store for a grace
the operator sets (RMA_RESTORE_GRACE_S): a holder back within it keeps its store with nothing lost. After it,
the store is a gap like any other, and the worker that takes it restores the newest snapshot; the old holder
is no longer assigned it, so when it returns late its copy stays on its disk and serves no one.
"""

from __future__ import annotations

from collections.abc import Iterable


class HolderGrace:
    def __init__(self, services: frozenset[str], grace_s: float) -> None:
        self.services = services  # the snapshotted stores
        self.grace_s = grace_s
        self._waiting: dict[str, tuple[str, float]] = {}  # store → (its holder's worker id, when it went)

    def went(self, worker_id: str, assigned: Iterable[str], now: float) -> bool:
        """`worker_id`, assigned `assigned`, went down or away: wait for it; whether anything is waited for now."""
        gone = [service for service in assigned if service in self.services and service not in self._waiting]
        for service in gone:
            self._waiting[service] = (worker_id, now)
        return bool(gone)

    def returned(self, worker_id: str) -> bool:
        """`worker_id` is back: its stores are no longer waited for; whether any was."""
        back = [service for service, (holder, _) in self._waiting.items() if holder == worker_id]
        for service in back:
            del self._waiting[service]
        return bool(back)

    def expired(self, now: float) -> dict[str, str]:
        """Each store whose holder stayed away past the grace → that holder: placed elsewhere from now on."""
        over = {service: holder for service, (holder, since) in self._waiting.items() if now - since >= self.grace_s}
        for service in over:
            del self._waiting[service]
        return over

    def withheld(self, now: float) -> dict[str, str]:
        """Each store waited for → why no other worker is given it (the gap report's reason)."""
        return {service: f"waiting for its holder {holder} to return ({now - since:.0f} of {self.grace_s:.0f} s); "
                         "then restored on another worker from its newest snapshot"
                for service, (holder, since) in self._waiting.items()}
