"""A router's traffic report, as routers send it and the coordinator reads it: plain data, no I/O.

Routers count each answer per service in a fixed-bucket latency histogram (rma.routing.traffic)
and post what they counted every REPORT_EVERY_S to the coordinator's history
(rma.coordinator.history); both sides share these shapes, and nothing else of each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

REPORT_EVERY_S = 5.0  # the dashboard's history has 10 s steps: two reports, or more, fill each

# Upper bounds (seconds) of the latency buckets; one more bucket holds everything slower.
# 1-2.5-5 steps from 1 ms (a store's answer) to 2 min (an LLM's long first token).
LATENCY_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BUCKETS = len(LATENCY_BOUNDS_S) + 1


@dataclass(frozen=True)
class ServiceFigures:
    """One service's requests over a report's interval."""

    latency: tuple[int, ...]  # requests per latency bucket (LATENCY_BOUNDS_S, then one for the slower)
    errors: int  # how many of them were answered 5xx

    @property
    def requests(self) -> int:
        return sum(self.latency)


@dataclass(frozen=True)
class TrafficReport:
    """A router's requests per service over the last `interval_s` seconds."""

    interval_s: float
    services: Mapping[str, ServiceFigures]
