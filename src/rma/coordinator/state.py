"""Settings and the per-process state the routes share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rma.coordinator.answers import Answers
from rma.coordinator.history import History
from rma.coordinator.metrics import Metrics
from rma.coordinator.registry import Registry
from rma.coordinator.watch import Watchers


@dataclass(frozen=True)
class CoordinatorSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".rma/coordinator")
    heartbeat_interval: float = 5.0
    # A worker silent for this many intervals is down and its services become gaps.
    grace_intervals: float = 3.0
    # A service that crash-looped on a worker is placed elsewhere for this long.
    failure_cooldown: float = 300.0
    join_token: str | None = None
    admin_token: str | None = None
    # Applications presenting one of these as X-API-Key may read a store's credentials in discovery.
    api_keys: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024
    # Heartbeat times reach the disk this often (seconds), in one batch.
    flush_interval: float = 2.0


@dataclass
class CoordinatorState:
    settings: CoordinatorSettings
    registry: Registry
    metrics: Metrics
    answers: Answers
    watchers: Watchers
    history: History
