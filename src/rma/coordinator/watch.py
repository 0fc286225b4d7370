"""Watch streams: each worker keeps one open, and hears of a new assignment the moment it is made.

Two things follow. A dead worker's services reach survivors without waiting for their next
heartbeat. And a worker process that dies (even by kill -9: the kernel closes its sockets)
drops its stream, which the coordinator takes as a sign to mark it down after one interval
instead of the full grace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from rma.coordinator.record import WorkerRecord
from rma.coordinator.registry import Registry

KEEPALIVE = b"\n"  # an empty line each interval: the worker sees a live coordinator, proxies keep the stream


class Watchers:
    def __init__(self, registry: Registry, encode: Callable[[WorkerRecord], bytes]) -> None:
        self.registry = registry
        self.encode = encode
        self.queues: dict[str, asyncio.Queue[bytes]] = {}
        registry.listeners.append(self.push)

    def push(self, record: WorkerRecord) -> None:
        queue = self.queues.get(record.worker_id)
        if queue is not None:
            queue.put_nowait(self.encode(record) + b"\n")

    async def stream(self, record: WorkerRecord, keepalive_s: float) -> AsyncIterator[bytes]:
        """The worker's current assignment, then each new one, with keep-alive lines between."""
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.queues[record.worker_id] = queue
        self.registry.watch_opened(record.worker_id)
        try:
            yield self.encode(record) + b"\n"
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), keepalive_s)
                except TimeoutError:
                    yield KEEPALIVE
        finally:
            # A reconnect may have replaced this stream already: only the current one counts.
            if self.queues.get(record.worker_id) is queue:
                del self.queues[record.worker_id]
                self.registry.watch_lost(record.worker_id)
