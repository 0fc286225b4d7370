"""Stores' credentials and addresses: generated once, kept in the registry, handed out with care.

A store's secret goes to the worker that runs the store (in its service config) and to
callers holding the admin token (in discovery); it is never logged and never in an
unauthenticated answer.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
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
        if secret is None:
            secret = self._secrets[service] = secrets.token_urlsafe(24)
            self.store.save_secret(service, secret)
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

# service → how a client connects to a replica, given its secret.
CONNECTION_URLS: dict[str, Callable[[str, int, str], str]] = {
    "redis": lambda h, p, s: f"redis://:{quote(s, safe='')}@{_host(h)}:{p}/0",
    "postgres": lambda h, p, s: f"postgresql://rma:{quote(s, safe='')}@{_host(h)}:{p}/rma",
    "chromadb": lambda h, p, s: f"http://{_host(h)}:{p}",
    "minio": lambda h, p, s: f"http://{_host(h)}:{p}",
    "neo4j": lambda h, p, s: f"http://{_host(h)}:{p}",
}
