"""The load balancer's caller fence on the mesh: a service is called only by the services the catalogue says call it.

The load balancer carries one service's call to another (notes-coa → llm-inference), so whoever reaches it
could reach every service behind it, past the mesh's tier fences. On the mesh a caller's address is the
overlay address its certificate fixes, so the address proves which worker calls; the routing table says
which services each worker runs. A call passes when its address is that of a replica of a service whose
`calls` names the service asked for. Off the mesh an address proves nothing, and the load balancer does
not fence.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from rma import catalog
from rma.routing.table import Table, TableSource


def callers_by_service(table: Table) -> dict[str, frozenset[str]]:
    """Each service another calls → the addresses of the replicas of the services that call it."""
    found: dict[str, set[str]] = {}
    for callee, callers in catalog.CALLERS.items():
        hosts = found.setdefault(callee, set())
        for caller in callers:
            hosts.update(urlsplit(endpoint.url).hostname or "" for endpoint in table.endpoints(caller))
        hosts.discard("")
    return {callee: frozenset(hosts) for callee, hosts in found.items()}


class CallerFence:
    """`admits(service, client)`: whether the client's address may call the service, from the current table."""

    def __init__(self, source: TableSource) -> None:
        self.source = source
        self._table: Table | None = None
        self._callers: dict[str, frozenset[str]] = {}

    def admits(self, service: str, client: tuple[str, int] | None) -> bool:
        table = self.source.current()
        if table is not self._table:  # a table is replaced, never changed, when it refreshes
            self._callers, self._table = callers_by_service(table), table
        return client is not None and client[0] in self._callers.get(service, ())

    @staticmethod
    def refusal(service: str) -> str:
        """Why a call was refused, for the 403: who may call the service, if anyone."""
        callers = sorted(catalog.CALLERS.get(service, ()))
        if not callers:
            return f"no service calls {service} through the load balancer; the routers reach it directly"
        return f"only the workers running {' or '.join(callers)} call {service} through the load balancer"
