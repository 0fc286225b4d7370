"""Routing: one engine (table, replica choice, health, retries, streaming) for every front end."""

from rma.routing.app import coordinator_service, create_edge_proxy, create_load_balancer
from rma.routing.gateway import GatewaySettings
from rma.routing.router import ServiceRouter
from rma.routing.table import CallableSource, Endpoint, HttpTableSource, Table, TableSource

__all__ = [
    "CallableSource", "Endpoint", "GatewaySettings", "HttpTableSource", "ServiceRouter", "Table", "TableSource",
    "coordinator_service", "create_edge_proxy", "create_load_balancer",
]
