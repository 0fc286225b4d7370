"""Service implementations, one module each, registered in an explicit map by catalogue name."""

from __future__ import annotations

from rma.services.base import Context, Launch, ServiceDriver
from rma.services.coordinator import Coordinator
from rma.services.redis import Redis

DRIVERS: dict[str, ServiceDriver] = {driver.name: driver for driver in (Redis(), Coordinator())}

__all__ = ["DRIVERS", "Context", "Launch", "ServiceDriver"]
