"""Desired services against running ones: a pure diff, applied by the agent.

The latest desired set wins, except that a pending stop is never overwritten: a service
stopping now is started again only after it is gone (at a later reconcile).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from rma.protocol import ServiceConfig


@dataclass(frozen=True)
class Running:
    """What the agent knows of one supervised service."""

    name: str
    stopping: bool


@dataclass(frozen=True)
class Actions:
    start: tuple[ServiceConfig, ...] = ()
    stop: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()  # (service, why it cannot run here)


def diff(desired: Sequence[ServiceConfig], running: Mapping[str, Running],
         engines: Mapping[str, Collection[str]], implemented: Collection[str]) -> Actions:
    """`engines` maps each implemented service to the engines this worker can run it with."""
    start, refused = [], []
    wanted = set()
    for config in desired:
        wanted.add(config.name)
        if config.name not in implemented:
            refused.append((config.name, "no implementation on this worker"))
        elif config.engine and config.engine not in engines.get(config.name, ()):
            refused.append((config.name, f"engine {config.engine} not available here"))
        elif config.name not in running:
            start.append(config)
    stop = [name for name, state in sorted(running.items()) if name not in wanted and not state.stopping]
    return Actions(tuple(start), tuple(stop), tuple(refused))
