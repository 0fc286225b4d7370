"""What a router counts of the requests it routes, per service: a latency histogram and the 5xx answers.

Counting is a handful of operations per request: the fast path holds each service's counts in its
route, and takes the time from the clock reads it makes anyway. Latency is from the router taking
the request to the answer's head (the replica's, or the router's own error): what the service
costs, whatever the client's download speed or a stream's length.
"""

from __future__ import annotations

from bisect import bisect_right

from rma.traffic_report import BUCKETS, LATENCY_BOUNDS_S, ServiceFigures, TrafficReport


class ServiceCounts:
    """One service's requests since the last report: how many per latency bucket, how many answered 5xx."""

    __slots__ = ("errors", "latency")

    def __init__(self) -> None:
        self.latency = [0] * BUCKETS
        self.errors = 0

    def record(self, status: int, seconds: float) -> None:
        self.latency[bisect_right(LATENCY_BOUNDS_S, seconds)] += 1
        if status >= 500:
            self.errors += 1


class Traffic:
    """Every service's counts in one router, and the interval they cover (`now` from a monotonic clock)."""

    def __init__(self, now: float) -> None:
        self.services: dict[str, ServiceCounts] = {}
        self.since = now

    def of(self, service: str) -> ServiceCounts:
        counts = self.services.get(service)
        if counts is None:
            counts = self.services[service] = ServiceCounts()
        return counts

    def record(self, service: str, status: int, seconds: float) -> None:
        self.of(service).record(status, seconds)

    def report(self, now: float) -> TrafficReport:
        """What was counted since the last report that reached the coordinator."""
        services = {name: ServiceFigures(tuple(c.latency), c.errors)
                    for name, c in self.services.items() if any(c.latency)}
        return TrafficReport(now - self.since, services)

    def sent(self, report: TrafficReport) -> None:
        """`report` reached the coordinator: count on from where it ended. The counts are kept, less what
        it carried, since the fast path's routes hold them and requests may have come since."""
        for name, figures in report.services.items():
            counts = self.services[name]
            counts.latency = [have - sent for have, sent in zip(counts.latency, figures.latency, strict=True)]
            counts.errors -= figures.errors
        self.since += report.interval_s
