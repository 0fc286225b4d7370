"""A catalogue service started through its driver, as the worker starts it, for the services' own tests."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from rma.services import DRIVERS
from rma.services.base import Context
from rma.worker.process import free_port


@contextmanager
def driven_service(name: str, folder: Path, ready_path: str, timeout: float, env: dict[str, str],
                   engine: str | None = None,
                   while_loading: Callable[[httpx.Response], None] | None = None,
                   coordinator_urls: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield the service's base URL once `ready_path` answers 200; `while_loading` sees the answers before."""
    ctx = Context("127.0.0.1", free_port("127.0.0.1"), folder, coordinator_urls, env=env, engine=engine)
    driver = DRIVERS[name]
    driver.prepare(ctx)
    launch = driver.launch(ctx)
    with open(folder / "service.log", "wb") as log:
        proc = subprocess.Popen(launch.argv, env={**os.environ, **launch.env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ctx.port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"{url}{ready_path}", timeout=2)
                if answer.status_code == 200:
                    break
                if while_loading is not None:
                    while_loading(answer)
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail((folder / "service.log").read_text())
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
