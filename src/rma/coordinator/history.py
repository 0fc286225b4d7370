"""The pool's last hour in fixed steps: per service requests/s, latency and healthy replicas; per worker
CPU, RAM and load. What the dashboard draws its charts from.

Pure: `now` (Unix seconds) comes in with every call. Bounded whatever the pool's size: a ring of
WINDOW_STEPS rows per series; 14 services × 360 steps × 19 numbers (0.8 MB), and rings for at most
MAX_WORKERS workers (first come; one that leaves the registry frees its place), 360 × 3 float32
each (0.4 MB in all). A full hour over 10,000 workers holds 1.25 MB and answers in 1.1 MB of JSON,
made once a step (80 ms).
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rma.catalog import BY_NAME
from rma.traffic_report import BUCKETS, LATENCY_BOUNDS_S, REPORT_EVERY_S, TrafficReport

STEP_S = 10.0
WINDOW_STEPS = 360  # an hour of 10 s steps
MAX_WORKERS = 100  # the dashboard lists every worker; past this many, the later ones have no charts
# A router's report covers up to 1.2 × REPORT_EVERY_S before it arrives: a step is shown once every
# report that may cover part of it is in, so its last point does not dip and then recover.
SETTLE_S = REPORT_EVERY_S * 1.2 + 1.0
HEALTHY, ERRORS, LATENCY = 0, 1, 2  # the columns of a service's row: LATENCY.. holds the BUCKETS counts
NAN = float("nan")


@dataclass(frozen=True)
class WorkerFigures:
    """What a worker's last heartbeat said of its machine."""

    cpu_percent: float
    ram_percent: float
    load: float


class Ring:
    """The last `size` steps of a row of numbers each, in one flat array; a step starts as `blank`."""

    def __init__(self, blank: Sequence[float], size: int, typecode: str = "d") -> None:
        self.blank = array(typecode, blank)
        self.width = len(blank)
        self.size = size
        self.data = array(typecode, list(blank) * size)
        self.first: int | None = None  # the first step written
        self.newest = -1  # the newest step written

    def offset(self, step: int) -> int | None:
        """Where `step`'s row starts, blanking the rows a newer step takes over; None when out of the window."""
        if step <= self.newest - self.size:
            return None
        if step > self.newest:
            for skipped in range(max(self.newest + 1, step - self.size + 1), step + 1):
                at = (skipped % self.size) * self.width
                self.data[at:at + self.width] = self.blank
            self.newest = step
        if self.first is None or step < self.first:
            self.first = step
        return (step % self.size) * self.width

    def add(self, step: int, column: int, amount: float) -> None:
        at = self.offset(step)
        if at is not None:
            self.data[at + column] += amount

    def put(self, step: int, column: int, value: float) -> None:
        at = self.offset(step)
        if at is not None:
            self.data[at + column] = value

    def columns(self, until: int) -> tuple[int, list[array[float]]]:
        """The steps from the first still held to `until`: the first of them, and each column's values in
        step order (blank where nothing was written). Sliced in C: a reader may take every ring at once."""
        if self.first is None:
            return until + 1, [self.data[:0] for _ in range(self.width)]
        first = max(self.first, until - self.size + 1, self.newest - self.size + 1)
        held = min(until, self.newest) - first + 1  # rows written; the rest, up to `until`, are blank
        rows = self.data[:0]
        if held > 0:
            start, stop = first % self.size * self.width, (first + held - 1) % self.size * self.width + self.width
            rows = self.data[start:stop] if start < stop else self.data[start:] + self.data[:stop]
        rows += self.blank * max(0, until - first + 1 - max(held, 0))
        return first, [rows[column::self.width] for column in range(self.width)]


def spread(start: float, end: float, step_s: float) -> Iterator[tuple[int, float]]:
    """The steps that [start, end] overlaps, each with its share of the interval."""
    first, last = math.floor(start / step_s), math.floor(end / step_s)
    if end <= start or first == last:
        yield last, 1.0
        return
    for step in range(first, last + 1):
        overlap = min(end, (step + 1) * step_s) - max(start, step * step_s)
        if overlap > 0:
            yield step, overlap / (end - start)


def quantile(counts: Sequence[float], q: float) -> float | None:
    """The q-quantile (seconds) of a latency histogram, interpolated in its bucket; None with no requests.

    Past the largest bound it says the largest bound, as Prometheus' histogram_quantile does.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for index, count in enumerate(counts[:-1]):
        if count > 0 and seen + count >= rank:
            lower = LATENCY_BOUNDS_S[index - 1] if index else 0.0
            return lower + (LATENCY_BOUNDS_S[index] - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_S[-1]


class History:
    """Rings per service and per worker, filled by router reports and by a sample of the pool each step."""

    def __init__(self, step_s: float = STEP_S, steps: int = WINDOW_STEPS, max_workers: int = MAX_WORKERS,
                 settle_s: float = SETTLE_S) -> None:
        self.step_s = step_s
        self.steps = steps
        self.max_workers = max_workers
        self.settle_s = settle_s
        self.services = {name: Ring([NAN, 0.0, *[0.0] * BUCKETS], steps) for name in BY_NAME}
        self.workers: dict[str, Ring] = {}
        self.sampled = -1  # the last step the pool was sampled in
        self._encoded: tuple[int, bytes] = (-1, b"")  # the answer for the last settled step

    def step(self, t: float) -> int:
        return math.floor(t / self.step_s)

    def add_traffic(self, report: TrafficReport, now: float) -> None:
        """A report's counts, spread over the steps of the interval it covers (up to `now`) in proportion."""
        start = max(now - report.interval_s, now - self.steps * self.step_s)  # older steps are gone anyway
        shares = list(spread(start, now, self.step_s))
        scale = (now - start) / report.interval_s if report.interval_s > 0 else 1.0
        for name, figures in report.services.items():
            ring = self.services.get(name)
            if ring is None:
                continue
            for step, share in shares:
                part = share * scale
                ring.add(step, ERRORS, figures.errors * part)
                for bucket, count in enumerate(figures.latency):
                    if count:
                        ring.add(step, LATENCY + bucket, count * part)

    def due(self, now: float) -> bool:
        """The pool has not been sampled in this step yet."""
        return self.step(now) != self.sampled

    def sample(self, now: float, healthy: Mapping[str, int], workers: Mapping[str, WorkerFigures | None]) -> None:
        """The step's healthy replicas per service, and each registered worker's figures (None: it is down)."""
        step = self.step(now)
        self.sampled = step
        for name, ring in self.services.items():
            ring.put(step, HEALTHY, healthy.get(name, 0))
        for gone in [w for w in self.workers if w not in workers]:
            del self.workers[gone]
        for worker_id, figures in workers.items():
            if figures is None:
                continue
            kept = self.workers.get(worker_id)
            if kept is None:
                if len(self.workers) >= self.max_workers:
                    continue
                kept = self.workers[worker_id] = Ring([NAN] * 3, self.steps, "f")
            for column, value in enumerate((figures.cpu_percent, figures.ram_percent, figures.load)):
                kept.put(step, column, value)

    def view(self, now: float) -> dict[str, Any]:
        """Every series up to the last settled step, as `GET /api/admin/history` answers; null where unknown."""
        until = self.step(now - self.settle_s) - 1
        services = {name: self._service(ring, until) for name, ring in self.services.items()}
        workers = {}
        for worker_id, ring in self.workers.items():
            first, (cpu, ram, load) = ring.columns(until)
            workers[worker_id] = {"t": self._times(first, len(cpu)), "cpu": _rounded(cpu, 1),
                                  "ram": _rounded(ram, 1), "load": _rounded(load, 3)}
        return {"step_s": self.step_s, "window_s": self.step_s * self.steps, "services": services,
                "workers": workers}

    def encoded(self, now: float) -> bytes:
        """`view` as JSON, made once a step: it changes when a step settles, and a full hour is a megabyte."""
        until = self.step(now - self.settle_s) - 1
        if self._encoded[0] != until:
            self._encoded = (until, json.dumps(self.view(now), separators=(",", ":")).encode())
        return self._encoded[1]

    def _service(self, ring: Ring, until: int) -> dict[str, list[Any]]:
        first, columns = ring.columns(until)
        steps = list(zip(*columns[LATENCY:], strict=True))
        per_s = 1 / self.step_s
        return {
            "t": self._times(first, len(steps)),
            "rps": [round(sum(latency) * per_s, 3) for latency in steps],
            "errors": [round(errors * per_s, 3) for errors in columns[ERRORS]],
            "p50_ms": [_ms(quantile(latency, 0.5)) for latency in steps],
            "p95_ms": [_ms(quantile(latency, 0.95)) for latency in steps],
            "healthy": [None if math.isnan(v) else int(v) for v in columns[HEALTHY]],
        }

    def _times(self, first: int, count: int) -> list[float]:
        return [(first + k) * self.step_s for k in range(count)]


def _rounded(values: Sequence[float], digits: int) -> list[float | None]:
    return [None if v != v else round(v, digits) for v in values]  # v != v: NaN, nothing recorded


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
