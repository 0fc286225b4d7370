"""Fixtures for placement tests: named machines and a fresh harness per test."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from placement_harness import Harness, machine

from rma.placement import WorkerState


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture(name="machine")
def machine_fixture() -> Callable[..., WorkerState]:
    """`machine("gpu_nvidia_t4_16g", "g1")`: a WorkerState for a named hardware fixture."""

    return machine
