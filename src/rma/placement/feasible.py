"""Can this worker run this service, and with which engine? Every "no" carries its reason."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rma.catalog import Engine, Kind, Service
from rma.catalog import get as service_named
from rma.placement.model import Pool, WorkerState


@dataclass(frozen=True)
class Verdict:
    engine: Engine | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.engine is not None


def kind_reason(service: Service, worker: WorkerState) -> str:
    """Why the worker's kind cannot run the service at all; empty when it can."""
    if service.kind == worker.kind:
        return ""
    if worker.kind == Kind.GPU and service.kind == Kind.CPU:
        return ""
    if worker.kind == Kind.CPU and service.kind == Kind.GPU:
        return ""
    return f"needs a worker of kind {service.kind}"


def _trusted(service: Service, worker: WorkerState) -> bool:
    """A worker with no engine list runs every service of its declared kind (the seed's agent)."""
    return service.kind == worker.kind or (worker.kind == Kind.GPU and service.kind == Kind.CPU)


def _resources_used(worker: WorkerState, besides: str, running: Iterable[str]) -> tuple[int, int]:
    """GPU memory and RAM (MB) taken by the worker's other services."""
    gpu = ram = 0
    for name in running:
        if name == besides:
            continue
        engine = engine_for(service_named(name), worker).engine
        if engine is not None:
            gpu += engine.gpu_memory_mb
            ram += engine.ram_mb
    return gpu, ram


def engine_for(service: Service, worker: WorkerState) -> Verdict:
    """The best engine of `service` this worker could run on an empty machine."""
    reason = kind_reason(service, worker)
    if reason:
        return Verdict(None, reason)
    reasons = []
    for engine in service.engines:
        if engine.needs_gpu:
            if worker.kind != Kind.GPU:
                reasons.append(f"{engine.name} needs a GPU worker")
                continue
            if not worker.has_gpu:
                reasons.append("worker claims gpu but reports no GPU")
                continue
            if worker.gpu_memory_mb is not None and worker.gpu_memory_mb < engine.gpu_memory_mb:
                reasons.append(
                    f"{engine.name} needs {engine.gpu_memory_mb} MB of GPU memory,"
                    f" worker has {worker.gpu_memory_mb} MB"
                )
                continue
        elif service.kind == Kind.GPU and worker.kind != Kind.CPU:
            # A tier-1 service on its CPU engine belongs on a CPU worker; a GPU
            # worker that cannot fit the GPU engine leaves it to them.
            reasons.append(f"{engine.name} runs tier-1 services on CPU workers only")
            continue
        if worker.engines is None:
            if not _trusted(service, worker):
                reasons.append(f"worker reports no engine list, so only {worker.kind} services")
                continue
        elif engine.name not in worker.engines:
            reasons.append(f"engine {engine.name} not available")
            continue
        if worker.ram_mb is not None and worker.ram_mb < engine.ram_mb:
            reasons.append(f"{engine.name} needs {engine.ram_mb} MB RAM, worker has {worker.ram_mb} MB")
            continue
        return Verdict(engine)
    return Verdict(None, "; ".join(reasons))


def check(service: Service, worker: WorkerState, others: Pool, running: Iterable[str]) -> Verdict:
    """May `worker` run `service` beside the services in `running`, given the rest of the pool?"""
    if service.name in others.withheld:
        return Verdict(None, others.withheld[service.name])
    if not worker.healthy:
        return Verdict(None, "worker is down")
    if service.name in worker.failed:
        return Verdict(None, "crash-looped on this worker recently")
    verdict = engine_for(service, worker)
    if not verdict.ok:
        return verdict
    engine = verdict.engine
    assert engine is not None
    gpu_used, ram_used = _resources_used(worker, service.name, running)
    if engine.needs_gpu and worker.gpu_memory_mb is not None:
        free = worker.gpu_memory_mb - gpu_used
        if free < engine.gpu_memory_mb:
            return Verdict(None, f"{engine.name} needs {engine.gpu_memory_mb} MB of GPU memory, {free} MB free")
    if worker.ram_mb is not None:
        free = worker.ram_mb - ram_used
        if free < engine.ram_mb:
            return Verdict(None, f"{engine.name} needs {engine.ram_mb} MB RAM, {free} MB free")
    return verdict
