from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from procs import RmaProcess  # noqa: E402


@pytest.fixture
def processes() -> Iterator[list[RmaProcess]]:
    """Every process a test appends here is stopped afterwards, even when the test fails."""
    started: list[RmaProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop(timeout=5)
