"""What `rma up` tells the person who started it: each service as it turns healthy, progress
while engines load, and when the pool is ready. Pure: snapshots of the local workers in, lines out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rma.catalog import BY_NAME, Kind
from rma.protocol import ServiceStatus

HEALTHY, FAILED = "healthy", "failed"
# A service still loading after this long gets a progress line this often, so a long first start
# (a model read from disk, a database initialised) is never silent.
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class WorkerSnapshot:
    """One local worker as `rma up` sees it: what it was assigned (None: not registered) and its services."""

    kind: Kind
    assigned: tuple[str, ...] | None
    statuses: Mapping[str, ServiceStatus]


def where(name: str, status: ServiceStatus, host: str, edge_url: str | None, scheme: str = "http") -> str:
    """How a person reaches a healthy service: through the edge proxy for applications; `scheme` is what
    the edge worker's listeners (edge proxy, load balancer, coordinator) serve."""
    service = BY_NAME[name]
    if service.kind == Kind.EDGE:
        return f"{scheme}://{host}:{status.port}"
    if service.kind == Kind.STORAGE:
        return f"{host}:{status.port}  (credentials: rma discover {name})"
    if edge_url:
        return f"{edge_url}/service/{name}/"
    return f"http://{host}:{status.port}  (direct: the edge proxy is not up yet)"


@dataclass
class Progress:
    """Remembers what was already said, so each line is printed once."""

    host: str
    scheme: str = "http"  # https when `rma up --tls`
    shown: set[tuple[str, str]] = field(default_factory=set)
    last_progress: float = 0.0
    ready: bool = False

    def lines(self, workers: Sequence[WorkerSnapshot], elapsed: float) -> list[str]:
        """New lines for this snapshot: services newly healthy (or failed), and progress while loading."""
        statuses = {name: st for w in workers for name, st in w.statuses.items()}
        edge = statuses.get("edge-proxy")
        edge_url = f"{self.scheme}://{self.host}:{edge.port}" if edge and edge.state == HEALTHY else None
        out = []
        # Applications are announced with their edge URL, unless no edge proxy is coming.
        edge_coming = edge_url is None and any(
            w.kind == Kind.EDGE and (w.assigned is None or "edge-proxy" in w.assigned) for w in workers
        ) and not (edge is not None and edge.state == FAILED)
        for name in sorted(statuses, key=_announce_order):
            status = statuses[name]
            application = BY_NAME[name].kind in (Kind.GPU, Kind.CPU)
            if status.state == HEALTHY and not (application and edge_coming):
                if (name, HEALTHY) not in self.shown:
                    self.shown.add((name, HEALTHY))
                    out.append(f"{name:<20} healthy   {where(name, status, self.host, edge_url, self.scheme)}")
            elif status.state == FAILED and (name, FAILED) not in self.shown:
                self.shown.add((name, FAILED))
                out.append(f"{name:<20} failed    {status.message}")
        waiting = self.waiting(workers)
        if waiting and elapsed - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = elapsed
            out.append(f"... {elapsed:.0f} s: still starting " + ", ".join(waiting))
        return out

    def waiting(self, workers: Sequence[WorkerSnapshot]) -> list[str]:
        """What the pool still waits for: workers not registered, services assigned but not settled."""
        pending = []
        for worker in workers:
            if worker.assigned is None:
                pending.append(f"the {worker.kind} worker (registering)")
                continue
            for name in worker.assigned:
                status = worker.statuses.get(name)
                if status is None or status.state not in (HEALTHY, FAILED):
                    state = status.state if status is not None else "assigned"
                    pending.append(f"{name} ({state})")
        return pending


def summary(gaps: Sequence[Mapping[str, object]], elapsed: float, short: Mapping[str, str]) -> str:
    """The ready line: how many of the catalogue's services answer, and what is uncovered and why."""
    healthy = [g for g in gaps if int(str(g["healthy_replicas"])) > 0]
    uncovered = [f"{g['service']} ({short.get(str(g['service']), g['reason'])})"
                 for g in gaps if int(str(g["healthy_replicas"])) == 0]
    line = f"Ready: {len(healthy)}/{len(gaps)} services healthy in {elapsed:.0f} s"
    return line + (f"; uncovered: {', '.join(uncovered)}" if uncovered else "")


def _announce_order(name: str) -> tuple[int, int, str]:
    """Edge first (its URL is everyone's way in), then by tier."""
    service = BY_NAME[name]
    return (0 if service.kind == Kind.EDGE else 1, service.tier, name)
