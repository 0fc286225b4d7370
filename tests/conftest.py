from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from procs import RmaProcess  # noqa: E402


@pytest.fixture(autouse=True)
def traversable_tmp_path(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """As root, let service accounts (PostgreSQL runs as `postgres`) pass through the test's folders.

    pytest makes its folders 0700, and a root worker hands PostgreSQL a data dir below them.
    """
    if os.geteuid() != 0:
        return
    top = tmp_path_factory.getbasetemp().parent
    for folder in (tmp_path, *tmp_path.parents):
        folder.chmod(folder.stat().st_mode | 0o011)
        if folder == top:
            break


@pytest.fixture
def processes() -> Iterator[list[RmaProcess]]:
    """Every process a test appends here is stopped afterwards, even when the test fails."""
    started: list[RmaProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop(timeout=5)
