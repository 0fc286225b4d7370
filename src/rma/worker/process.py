"""Starting and ending service processes: each in its own session, ended as a whole tree.

A service runs in a new session (its own process group) so that TERM-then-KILL reaches every
process it forked. On Linux it also gets SIGTERM when the worker dies, even by kill -9: an
orphaned store holding its port and data dir would block the worker's next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from rma.services.base import free_port, port_free

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def spawn(argv: tuple[str, ...], env: Mapping[str, str], cwd: Path | None,
                log_path: Path) -> asyncio.subprocess.Process:
    """Start `argv` in a new session with exactly `env` (nothing of the worker's own), output to `log_path`."""
    with open(log_path, "ab") as log:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_all(pid: int, procs: list[psutil.Process], sig: signal.Signals) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, sig)  # the session's group: pid == pgid
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


async def end_tree(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    """TERM the process and every descendant, then KILL whatever is left after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    descendants = _descendants(proc.pid)
    _signal_all(proc.pid, descendants, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), timeout_s)
    left = max(0.1, deadline - loop.time())
    # Not our children, so psutil polls them rather than reaping (asyncio reaps the leader).
    _, alive = await loop.run_in_executor(None, lambda: psutil.wait_procs(descendants, timeout=left))
    if alive or proc.returncode is None:
        _signal_all(proc.pid, alive, signal.SIGKILL)
        await proc.wait()


def reap_group(pid: int) -> None:
    """After the leader exited: KILL what it left behind in its group."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


PORT_TRIES = 50


def choose_port(host: str, *preferred: int | None, usable: Callable[[str, int], bool] = port_free) -> int:
    """The first preferred port that is usable on `host`, else one the OS picks that is."""
    for port in preferred:
        if port and usable(host, port):
            return port
    for _ in range(PORT_TRIES):
        port = free_port(host)
        if usable(host, port):
            return port
    raise OSError(f"no usable port on {host} after {PORT_TRIES} tries")
