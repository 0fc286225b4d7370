"""Prometheus metrics: pool state is read from the registry at scrape time, so it is never stale."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rma.catalog import SERVICES
from rma.coordinator.registry import Registry


class PoolCollector(Collector):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        workers = GaugeMetricFamily("rma_workers", "Registered workers by state", labels=["state"])
        healthy = sum(1 for w in self.registry.workers.values() if w.healthy)
        workers.add_metric(["healthy"], healthy)
        workers.add_metric(["down"], len(self.registry.workers) - healthy)
        yield workers
        pool = self.registry.pool()
        replicas = GaugeMetricFamily("rma_service_replicas", "Replicas per service", labels=["service", "state"])
        covered = GaugeMetricFamily("rma_service_covered", "1 when a service has a healthy replica",
                                    labels=["service"])
        for service in SERVICES:
            replicas.add_metric([service.name, "assigned"], pool.assigned(service.name))
            replicas.add_metric([service.name, "serving"], pool.serving(service.name))
            covered.add_metric([service.name], 1 if pool.serving(service.name) else 0)
        yield replicas
        yield covered


class Metrics:
    def __init__(self, registry: Registry) -> None:
        self.prometheus = CollectorRegistry()
        self.prometheus.register(PoolCollector(registry))
        self.registrations = Counter("rma_registrations", "Worker registrations accepted",
                                     registry=self.prometheus)
        self.heartbeat_seconds = Histogram(
            "rma_heartbeat_seconds", "Time to handle one heartbeat",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5), registry=self.prometheus,
        )
