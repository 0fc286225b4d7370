"""Stores' credentials and addresses: generated once, kept in the registry, handed out with care.

A store's secret goes to the worker that runs the store (in its service config) and, in
discovery, to callers holding the admin token or a store key (RMA_STORE_KEYS, sent as
X-API-Key); it is never logged and never in an unauthenticated answer.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable, Collection
from urllib.parse import quote

from rma.catalog import BY_NAME
from rma.coordinator.store import Store


class SecretBook:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._secrets = store.load_secrets()

    def secret_for(self, service: str) -> str | None:
        """The service's secret, made and persisted on first use; None for services that need none."""
        if not BY_NAME[service].stateful:
            return None
        secret = self._secrets.get(service)
        if secret is None:  # another coordinator on the same store may have made it first: theirs is kept
            secret = self._secrets[service] = self.store.claim_secret(service, secrets.token_urlsafe(24))
        return secret


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# service → the seed's variables (and their obvious companions) for a replica at host:port.
STORE_VARIABLES: dict[str, Callable[[str, int], dict[str, str]]] = {
    "chromadb": lambda h, p: {"CHROMADB_HOST": h, "CHROMADB_PORT": str(p)},
    "redis": lambda h, p: {"REDIS_HOST": h, "REDIS_PORT": str(p)},
    "postgres": lambda h, p: {"POSTGRES_HOST": h, "POSTGRES_PORT": str(p)},
    "minio": lambda h, p: {"MINIO_ENDPOINT": f"{_host(h)}:{p}"},
    "neo4j": lambda h, p: {"NEO4J_URI": f"bolt://{_host(h)}:7687", "NEO4J_HTTP_URI": f"http://{_host(h)}:{p}"},
}

def _user(service: str, engine: str | None) -> str:
    """The account clients of the store log in as on `engine` (the catalogue's), its first engine's if unknown."""
    store = BY_NAME[service]
    return quote((store.engine(engine) if engine else store.engines[0]).user, safe="")


# service → how a client connects to a replica at host:port, given its secret and the engine it runs.
CONNECTION_URLS: dict[str, Callable[[str, int, str, str | None], str]] = {
    "redis": lambda h, p, s, e: f"redis://:{quote(s, safe='')}@{_host(h)}:{p}/0",
    "postgres": lambda h, p, s, e: f"postgresql://{_user('postgres', e)}:{quote(s, safe='')}@{_host(h)}:{p}/rma",
    "chromadb": lambda h, p, s, e: f"http://{_host(h)}:{p}",
    "minio": lambda h, p, s, e: f"s3://{_user('minio', e)}:{quote(s, safe='')}@{_host(h)}:{p}",
    "neo4j": lambda h, p, s, e: f"bolt://{_user('neo4j', e)}:{quote(s, safe='')}@{_host(h)}:7687",
}


class NamedStores:
    """Which serving replica of each store the seed's variables (REDIS_HOST, ...) name.

    Every worker's service configs carry these addresses, so they should not move with each
    registration or load report: a named replica stays named while it serves (stability
    beats optimality). When it stops, the lowest worker id still serving succeeds it, taken
    from a heap of the store's replicas, so a choice never rescans them.
    """

    def __init__(self) -> None:
        self._named: dict[str, str] = {}
        # store → ids of workers that began serving it, lowest first; ids that stopped are
        # dropped when they reach the top.
        self._queued: dict[str, list[str]] = {service: [] for service in STORE_VARIABLES}

    def began_serving(self, service: str, worker_id: str, serving: Collection[str]) -> None:
        """`worker_id` now serves `service`; `serving` is every worker serving it, this one too."""
        queue = self._queued.get(service)
        if queue is None:
            return
        if len(queue) > 2 * len(serving) + 16:
            # Mostly ids that stopped serving: start again from the live ones (a sorted list is a heap).
            queue[:] = sorted(serving)
        else:
            heapq.heappush(queue, worker_id)

    def named(self, service: str, serving: Collection[str]) -> str | None:
        """The replica of `service` to name, given the workers serving it now; None when none does."""
        current = self._named.get(service)
        if current is not None and current in serving:
            return current
        queue = self._queued[service]
        while queue and queue[0] not in serving:
            heapq.heappop(queue)
        if not queue:
            self._named.pop(service, None)
            return None
        self._named[service] = queue[0]
        return queue[0]
