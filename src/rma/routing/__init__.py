"""Routing: one engine (table, replica choice, health, retries, streaming) for every front end."""

from rma.routing.app import create_edge_proxy, create_load_balancer, service_router
from rma.routing.router import ServiceRouter
from rma.routing.table import CallableSource, Endpoint, HttpTableSource, Table, TableSource

__all__ = [
    "CallableSource", "Endpoint", "HttpTableSource", "ServiceRouter", "Table", "TableSource",
    "create_edge_proxy", "create_load_balancer", "service_router",
]
