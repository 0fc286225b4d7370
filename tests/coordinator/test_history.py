"""The dashboard's history: rings of fixed steps, router reports spread over the steps they cover, bounds."""

from __future__ import annotations

import math

import pytest

from rma.coordinator.history import History, Ring, WorkerFigures, quantile, spread
from rma.traffic_report import BUCKETS, LATENCY_BOUNDS_S, ServiceFigures, TrafficReport

T0 = 1_700_000_000.0  # a step boundary (10 s steps)


def figures(requests: int, bucket: int, errors: int = 0) -> ServiceFigures:
    latency = [0] * BUCKETS
    latency[bucket] = requests
    return ServiceFigures(tuple(latency), errors)


def test_spread_shares_an_interval_between_the_steps_it_overlaps() -> None:
    assert list(spread(T0 + 2, T0 + 8, 10)) == [(T0 // 10, 1.0)]
    assert list(spread(T0 + 5, T0 + 15, 10)) == [(T0 // 10, 0.5), (T0 // 10 + 1, 0.5)]
    shares = list(spread(T0 + 7.5, T0 + 37.5, 10))
    assert [s for _, s in shares] == pytest.approx([1 / 12, 1 / 3, 1 / 3, 1 / 4])
    assert list(spread(T0 + 3, T0 + 3, 10)) == [(T0 // 10, 1.0)]  # an empty interval: all in its step


def test_quantile_interpolates_in_its_bucket() -> None:
    counts = [0.0] * BUCKETS
    counts[4] = 100  # all between 10 and 25 ms
    assert quantile(counts, 0.5) == pytest.approx(0.0175)
    assert quantile(counts, 0.95) == pytest.approx(0.02425)
    counts[0] = 100  # half under 1 ms: the median is the top of the first bucket
    assert quantile(counts, 0.5) == pytest.approx(0.001)
    assert quantile([0.0] * BUCKETS, 0.5) is None
    slowest = [0.0] * BUCKETS
    slowest[-1] = 3
    assert quantile(slowest, 0.5) == LATENCY_BOUNDS_S[-1]


def test_a_report_becomes_requests_per_second_and_latency_once_its_steps_settle() -> None:
    history = History(settle_s=7)
    history.sample(T0, {"ner-extraction": 2}, {})
    # 100 requests over the 10 s before T0 + 15: half in each of two steps; 4 of them 5xx.
    history.add_traffic(TrafficReport(10.0, {"ner-extraction": figures(100, 4, errors=4)}), T0 + 15)
    assert history.view(T0 + 16)["services"]["ner-extraction"]["t"] == []  # T0's step ends at T0 + 10 + 7
    ner = history.view(T0 + 27.5)["services"]["ner-extraction"]
    assert ner["t"] == [T0, T0 + 10]
    assert ner["rps"] == [5.0, 5.0]
    assert ner["errors"] == [0.2, 0.2]
    assert ner["p50_ms"] == [17.5, 17.5] and ner["p95_ms"] == pytest.approx([24.25, 24.25], abs=0.06)
    assert ner["healthy"] == [2, None]  # the pool is sampled once a step: not yet in the second
    quiet = history.view(T0 + 27.5)["services"]["redis"]
    assert quiet["rps"] == [0.0, 0.0] and quiet["p50_ms"] == [None, None] and quiet["healthy"] == [0, None]


def test_reports_from_several_routers_add_up() -> None:
    history = History(settle_s=0)
    for _ in range(3):
        history.add_traffic(TrafficReport(5.0, {"rag-embeddings": figures(10, 6)}), T0 + 5)
    assert history.view(T0 + 10)["services"]["rag-embeddings"]["rps"] == [3.0]


def test_a_report_older_than_the_window_keeps_only_what_falls_inside() -> None:
    history = History(settle_s=0, steps=6)
    history.add_traffic(TrafficReport(120.0, {"redis": figures(1200, 1)}), T0 + 60)  # 10 req/s for 2 minutes
    redis = history.view(T0 + 60)["services"]["redis"]
    assert redis["t"] == [T0 + 10 * k for k in range(6)] and redis["rps"] == [10.0] * 6


def test_the_rings_stay_their_size_however_long_the_coordinator_runs() -> None:
    history = History(settle_s=0, steps=36)
    ring = history.services["redis"]
    size = len(ring.data)
    for k in range(500):
        history.sample(T0 + 10 * k, {"redis": k % 3}, {"w1": WorkerFigures(k % 100, 50, 0.5)})
        history.add_traffic(TrafficReport(10.0, {"redis": figures(10, 2)}), T0 + 10 * k + 10)
    assert len(ring.data) == size and len(history.workers["w1"].data) == 36 * 3
    view = history.view(T0 + 5000)
    assert len(view["services"]["redis"]["t"]) == 36 and view["services"]["redis"]["t"][-1] == T0 + 4990
    assert view["services"]["redis"]["healthy"] == [k % 3 for k in range(464, 500)]  # in order across the wrap
    assert len(view["workers"]["w1"]["cpu"]) == 36 and view["workers"]["w1"]["cpu"][-1] == 499 % 100


def test_workers_are_tracked_up_to_the_bound_and_forgotten_when_they_leave() -> None:
    history = History(settle_s=0, max_workers=2)
    busy = WorkerFigures(cpu_percent=75.5, ram_percent=40.25, load=0.755)
    history.sample(T0, {}, {"a": busy, "b": busy, "c": busy})
    assert set(history.workers) == {"a", "b"}  # first come; c has no charts while the bound is reached
    history.sample(T0 + 10, {}, {"a": None, "c": busy})  # a is down, b left the registry
    assert set(history.workers) == {"a", "c"}
    view = history.view(T0 + 20)["workers"]
    assert view["a"] == {"t": [T0, T0 + 10], "cpu": [75.5, None], "ram": [40.2, None], "load": [0.755, None]}
    assert view["c"]["t"] == [T0 + 10] and view["c"]["cpu"] == [75.5]


def test_a_ring_blanks_the_steps_it_skips() -> None:
    ring = Ring([math.nan, 0.0], 4)
    ring.put(10, 0, 1.0)
    ring.add(10, 1, 2.0)
    ring.add(13, 1, 5.0)
    ring.add(6, 1, 9.0)  # out of the window: dropped
    first, (marks, counts) = ring.columns(14)  # step 14 is not written yet: blank
    assert first == 11 and list(counts) == [0.0, 0.0, 5.0, 0.0] and all(math.isnan(m) for m in marks)
    ring.add(11, 1, 1.0)  # late, but inside the window (steps 10 to 13): counted
    ring.add(9, 1, 1.0)  # out of it: dropped
    first, (marks, counts) = ring.columns(13)
    assert first == 10 and list(counts) == [2.0, 1.0, 0.0, 5.0] and marks[0] == 1.0
    assert ring.columns(11)[0] == 10 and list(ring.columns(11)[1][1]) == [2.0, 1.0]
    assert list(Ring([0.0], 4).columns(3)[1][0]) == []  # nothing written: no steps
