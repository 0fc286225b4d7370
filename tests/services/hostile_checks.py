"""What the hostile-input tests check: a refusal is 4xx JSON saying why, and others are served meanwhile."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx


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
