"""Service implementations, one module each, registered in an explicit map by catalogue name."""

from __future__ import annotations

from rma.services.base import Context, Launch, ServiceDriver
from rma.services.coordinator import Coordinator
from rma.services.edge_proxy import EdgeProxy
from rma.services.load_balancer import LoadBalancer
from rma.services.redis import Redis

DRIVERS: dict[str, ServiceDriver] = {
    driver.name: driver for driver in (Redis(), Coordinator(), EdgeProxy(), LoadBalancer())
}

__all__ = ["DRIVERS", "Context", "Launch", "ServiceDriver"]
