"""The pure desired-vs-running diff."""

from __future__ import annotations

from rma.protocol import ServiceConfig
from rma.worker.reconcile import Running, diff

ENGINES = {"redis": ("redis-server",), "coordinator": ("rma-coordinator",)}
IMPLEMENTED = {"redis", "coordinator"}


def config(name: str, engine: str | None = None) -> ServiceConfig:
    return ServiceConfig(name=name, port=1, priority=1, tier=3, kind="storage", engine=engine)


def test_starts_new_and_stops_removed() -> None:
    actions = diff([config("redis", "redis-server")], {"coordinator": Running("coordinator", False)},
                   ENGINES, IMPLEMENTED)
    assert [c.name for c in actions.start] == ["redis"] and actions.stop == ("coordinator",)


def test_running_services_are_left_alone() -> None:
    actions = diff([config("redis")], {"redis": Running("redis", False)}, ENGINES, IMPLEMENTED)
    assert actions.start == () and actions.stop == ()


def test_a_pending_stop_is_not_overwritten() -> None:
    stopping = {"redis": Running("redis", True)}
    assert diff([config("redis")], stopping, ENGINES, IMPLEMENTED).start == ()
    assert diff([], stopping, ENGINES, IMPLEMENTED).stop == ()


def test_what_cannot_run_here_is_refused_with_a_reason() -> None:
    actions = diff([config("postgres", "postgres"), config("redis", "redis-cluster")], {}, ENGINES, IMPLEMENTED)
    assert dict(actions.refused) == {"postgres": "no implementation on this worker",
                                     "redis": "engine redis-cluster not available here"}
    assert actions.start == ()
