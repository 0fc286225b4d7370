"""The workers `rma up` runs on one machine: one per kind of service the machine can serve.

Placement's rules are those of a real pool: a CPU worker runs tier 2 and the CPU engines of
tier 1, a storage worker the stores, an edge worker the routers, a GPU worker (only where a
GPU is found) the GPU engines. So `rma up` runs one worker of each kind this machine has
engines for, each with its own data dir (`DATA_DIR/workers/<kind>`), rather than a special
all-in-one role that placement would have to treat apart.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rma.catalog import BY_NAME, Kind
from rma.worker.agent import Profile
from rma.worker.config import WorkerConfig
from rma.worker.probe import Probe
from rma.worker.profile import build_profile

UP_KINDS = (Kind.GPU, Kind.CPU, Kind.STORAGE, Kind.EDGE)


@dataclass(frozen=True)
class LocalWorker:
    kind: Kind
    config: WorkerConfig
    profile: Profile
    detected: tuple[str, ...]  # the `Detected` lines of this worker


def serves_kind(kind: Kind, engines: Mapping[str, tuple[str, ...]], has_gpu: bool) -> bool:
    """Does a worker of `kind` have anything to run among these services' engines?"""
    if kind == Kind.GPU:
        return has_gpu
    if kind == Kind.CPU:
        # Tier 1 runs on CPU engines on a CPU worker; a GPU-only engine needs the GPU worker.
        return any(
            BY_NAME[name].kind == Kind.CPU
            or BY_NAME[name].kind == Kind.GPU and any(not BY_NAME[name].engine(e).needs_gpu for e in names)
            for name, names in engines.items()
        )
    return any(BY_NAME[name].kind == kind for name in engines)


def worker_id_for(kind: Kind, hostname: str | None = None) -> str:
    """A readable id: this machine's name and the worker's kind (`laptop-cpu`)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", hostname or socket.gethostname()).strip("-._") or "local"
    return f"{name[:50]}-{kind.value}"


def local_workers(data_dir: Path, coordinator_url: str, host: str, requested: str, env: dict[str, str],
                  probe: Probe) -> list[LocalWorker]:
    """The workers to run here: for `auto` every kind this machine serves, else the one requested."""
    kinds = UP_KINDS if requested == "auto" else (Kind(requested),)
    workers = []
    for kind in kinds:
        config = WorkerConfig((coordinator_url,), kind.value, worker_id_for(kind), None,
                              data_dir / "workers" / kind.value, host, None, kind == Kind.STORAGE, env)
        profile, lines = build_profile(config, probe)
        if requested == "auto" and not serves_kind(kind, profile.engines, profile.capabilities.has_gpu):
            continue
        workers.append(LocalWorker(kind, config, profile, tuple(lines)))
    return workers
