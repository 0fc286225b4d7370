"""Work a hostile input can blow up, run where it can be stopped: a forked child with memory and CPU limits.

A parse of an uploaded file runs in a child forked for it (the parsers are already imported, so a
fork costs milliseconds). The child's CPU time and address space are capped (`resource.setrlimit`:
the address space catches a large allocation at once), its resident heap is watched (what grows
inside memory the allocator had already reserved shows only there), and it is killed at its
wall-clock deadline or past its memory. Whatever it allocated goes back to the system when it ends,
so a bomb can neither stall the app nor leave it gigabytes larger. Each limit it hits is a 4xx
JSON error naming that limit (413 for memory, 422 for time), never a 500 or a stuck process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from rma.services.apps.common import ApiError

log = logging.getLogger("rma.apps")
T = TypeVar("T")
A = TypeVar("A")
KILLED_BY_CPU_LIMIT = (-signal.SIGXCPU, -signal.SIGKILL)  # the soft limit's signal, or the hard limit's
OUT_OF_MEMORY = ("Memory allocation failed", "out of memory", "Cannot allocate memory")  # C libraries' words
WATCH_S = 0.02  # how often the child's resident memory is read while it works


@dataclass(frozen=True)
class Budget:
    """What one request's work may use: memory (address space above the app's own), CPU and wall time."""

    memory_mb: int = 1024
    cpu_s: int = 30
    wall_s: float = 30.0

    def describe(self) -> dict[str, float]:
        return {"memory_mb": self.memory_mb, "cpu_s": self.cpu_s, "wall_s": self.wall_s}


def _memory(pid: int | str = "self") -> tuple[int, int]:
    """A process's virtual size and its resident anonymous memory (its own heap, not files mapped in), in bytes;
    zeros once it is gone. A forked child starts with its parent's anonymous pages (shared until written), but
    not always with its file pages in its count, so only the anonymous ones compare."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            size, resident, file_backed = (int(field) for field in statm.read().split()[:3])
    except (OSError, ValueError):
        return 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    return size * page, (resident - file_backed) * page


def _child(work: Callable[[A], T], argument: A, budget: Budget, out: Connection) -> None:
    """In the forked child: cap itself, do the work, send ("ok", result) or what stopped it; never return."""
    try:
        limit = _memory()[0] + budget.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CPU, (budget.cpu_s, budget.cpu_s + 1))
        try:
            outcome: tuple[str, Any] = ("ok", work(argument))
        except MemoryError:
            outcome = ("memory", None)
        except ApiError as exc:
            outcome = ("refused", (exc.status, exc.message, exc.param))
        except Exception as exc:
            memory = any(words in str(exc) for words in OUT_OF_MEMORY)
            outcome = ("memory", None) if memory else ("error", traceback.format_exc(limit=-8))
        try:
            out.send(outcome)
        except MemoryError:
            out.send(("memory", None))
    finally:
        os._exit(0)  # nothing of the parent's (atexit handlers, buffered logs, the server's sockets) runs here


def run_bounded(work: Callable[[A], T], argument: A, budget: Budget, what: str) -> T:
    """`work(argument)` in a child held to `budget`; blocking, so call it off the event loop.

    Raises ApiError: 413 past the memory limit, 422 past the CPU or wall time, 422 when the parser
    crashed (a signal), the child's own ApiError as it raised it, and 500 with a reason id (logged
    with the traceback) for anything else.
    """
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_child, args=(work, argument, budget, send),
                                                        daemon=True)
    shared = _memory()[1]  # the child starts with the parent's anonymous pages, counted in its memory too
    deadline = time.monotonic() + budget.wall_s
    child.start()
    send.close()
    pid = child.pid
    assert pid is not None  # started
    try:
        while not receive.poll(WATCH_S):
            if time.monotonic() > deadline:
                raise ApiError(422, f"{what} took longer than {budget.wall_s:g} s, the limit for one request",
                               "file")
            if _memory(pid)[1] - shared > budget.memory_mb * 2**20:
                raise _over_memory(what, budget)
        try:
            kind, value = receive.recv()
        except EOFError:  # the child died without a word: a signal
            child.join(5)
            if child.exitcode in KILLED_BY_CPU_LIMIT:
                raise ApiError(422, f"{what} used more than {budget.cpu_s} s of CPU, the limit for one request",
                               "file") from None
            raise ApiError(422, f"{what} crashed the parser (exit {child.exitcode}): the file is malformed",
                           "file") from None
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join(5)
    if kind == "ok":
        return value
    if kind == "memory":
        raise _over_memory(what, budget)
    if kind == "refused":
        raise ApiError(*value)
    reason = uuid.uuid4().hex[:12]
    log.error("%s failed (reason %s):\n%s", what, reason, value)
    raise ApiError(500, f"{what} failed unexpectedly (reason {reason}, in the service's log)")


def _over_memory(what: str, budget: Budget) -> ApiError:
    return ApiError(413, f"{what} needs more than {budget.memory_mb} MB of memory, the limit for one request", "file")
