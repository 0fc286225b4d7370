"""What the hostile-input tests share: an engine app as its own process, JSON refusals, others served meanwhile."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from procs import free_port, wait_until


@dataclass
class EngineApp:
    """An engine app (`python -m rma.services.apps.<module>`) running on a free loopback port."""

    url: str
    process: subprocess.Popen[bytes]

    def rss(self) -> int:
        """The app's resident memory, its children's (parse children, pipeline processes) included."""
        main = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in (main, *main.children(recursive=True)))

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health", timeout=5)

    def status(self) -> int:
        """/health's status, or 0 while the app does not answer yet."""
        try:
            return self.health().status_code
        except httpx.HTTPError:
            return 0


@contextmanager
def engine_app(module: str, folder: Path, *flags: str, env: dict[str, str] | None = None,
               ready_s: float = 60) -> Iterator[EngineApp]:
    """The app with `flags`, logging into `folder`, once /health is 200; stopped (killed if it lingers) at the end."""
    port = free_port()
    log = folder / f"{module}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", f"rma.services.apps.{module}", "--port", str(port), *flags],
                                   env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    app = EngineApp(f"http://127.0.0.1:{port}", process)
    try:
        wait_until(lambda: app.status() == 200, ready_s, what=f"{module} healthy ({log})")
        yield app
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:  # uvicorn waits for the requests still running
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class Served:
    """The seconds each small request took, and the answers that were not 200."""

    took: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def p99(self) -> float:
        return statistics.quantiles(self.took, n=100, method="inclusive")[98] if len(self.took) > 1 else self.took[0]

    def summary(self) -> str:
        return (f"{len(self.took)} small requests meanwhile: p50 {statistics.median(self.took) * 1000:.0f} ms, "
                f"p99 {self.p99() * 1000:.0f} ms, max {max(self.took) * 1000:.0f} ms")


def assert_json_refusal(answer: httpx.Response, statuses: tuple[int, ...], says: str = "") -> None:
    """`answer` has one of `statuses` and a JSON error whose message holds `says`."""
    assert answer.status_code in statuses, answer.text[:500]
    message = answer.json()["error"]["message"]
    assert says in message, message


@contextmanager
def served_meanwhile(send: Callable[[], httpx.Response], every_s: float = 0.1) -> Iterator[Served]:
    """`send()` every `every_s` while the block runs; afterwards, asserts some were answered and all were 200."""
    served, stop = Served(), threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            answer = send()
            served.took.append(time.monotonic() - started)
            if answer.status_code != 200:
                served.failures.append(answer.text[:200])
            stop.wait(every_s)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        stop.set()
        thread.join(60)
    assert served.took, "no small request was answered meanwhile"
    assert not served.failures, served.failures[:3]
    print(served.summary())
