"""Replica choice and the ejection state machine, pure: a seeded rng and `now` passed in."""

from __future__ import annotations

import random
from collections import Counter

from rma.routing.balancer import BACKOFF_BASE_S, EJECT_AFTER_5XX, Balancer, ReplicaHealth, RetryBudget
from rma.routing.table import Endpoint

A, B, C = (Endpoint("ner-extraction", w, f"http://10.0.0.{i}:8108") for i, w in enumerate("abc", 1))


def test_two_choices_prefer_the_less_busy_replica() -> None:
    balancer = Balancer(random.Random(1))
    for _ in range(5):
        balancer.begin(A.url)
    picks = Counter(balancer.choose([A, B], (), now=0.0).worker_id for _ in range(100))  # type: ignore[union-attr]
    assert picks == {"b": 100}


def test_outstanding_requests_stay_even_across_replicas() -> None:
    balancer = Balancer(random.Random(7))
    for _ in range(300):
        chosen = balancer.choose([A, B, C], (), now=0.0)
        assert chosen is not None
        balancer.begin(chosen.url)
    counts = [balancer.health(e.url).outstanding for e in (A, B, C)]
    assert max(counts) - min(counts) <= 2, counts


def test_excluded_replicas_are_not_chosen_and_none_when_all_tried() -> None:
    balancer = Balancer(random.Random(3))
    assert balancer.choose([A, B], [A.url], 0.0) == B
    assert balancer.choose([A, B], [A.url, B.url], 0.0) is None


def test_unreachable_replica_stays_out_until_a_health_check_passes() -> None:
    balancer = Balancer(random.Random(2))
    balancer.unreachable(A.url, now=10.0, reason="connect failed")
    assert all(balancer.choose([A, B], (), 10.0 + t) == B for t in (0.0, 5.0, 500.0))
    balancer.probed(A.url, ok=False, now=600.0)
    assert balancer.choose([A, B], [B.url], 601.0) == A  # panic mode: every candidate is out, try anyway
    balancer.probed(A.url, ok=True, now=602.0)
    assert balancer.health(A.url).admitted(602.0)


def test_5xx_ejection_backs_off_and_doubles_on_repeat() -> None:
    health = ReplicaHealth()
    for _ in range(EJECT_AFTER_5XX - 1):
        health.answered_5xx(0.0, 503)
    assert health.admitted(0.0)
    health.answered_5xx(0.0, 503)
    assert not health.admitted(BACKOFF_BASE_S - 0.01) and health.admitted(BACKOFF_BASE_S)
    health.readmit()  # a passing /health does not readmit a replica that fails real requests
    assert not health.admitted(0.5)
    for _ in range(EJECT_AFTER_5XX):
        health.answered_5xx(BACKOFF_BASE_S, 500)
    assert not health.admitted(BACKOFF_BASE_S * 2.9) and health.admitted(BACKOFF_BASE_S * 3)
    health.succeeded(10.0)
    assert health.ejections == 0 and health.failures == 0


def test_a_success_between_5xx_resets_the_run() -> None:
    health = ReplicaHealth()
    for _ in range(10):
        health.answered_5xx(0.0, 500)
        health.succeeded(0.0)
    assert health.admitted(0.0)


def test_forgotten_replicas_keep_state_while_busy() -> None:
    balancer = Balancer(random.Random(0))
    balancer.begin(A.url)
    balancer.health(B.url)
    balancer.forget_except([C.url])
    assert set(balancer.replicas) == {A.url}


def test_retry_budget_is_a_fraction_of_traffic_plus_a_floor() -> None:
    budget = RetryBudget(ratio=0.2, floor_per_s=1.0, cap=5.0)
    retries = sum(budget.try_retry(0.0) for _ in range(20))
    assert retries == 5  # the cap
    for _ in range(50):
        budget.request()
    assert sum(budget.try_retry(0.0) for _ in range(20)) == 5  # 50 requests x 0.2, capped at 5
    assert not budget.allows(0.0)
    assert budget.allows(1.0)  # the floor refills one per second
