"""Hardware detection and the worker's type: GPU → Edge → Storage → CPU.

Each finding becomes one log line starting with `Detected`, so a volunteer (or
`docker logs ... | grep Detected`) sees why the machine got its type.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rma.catalog import Kind
from rma.worker.probe import VOLATILE_FS, GpuInfo, Probe

WORKER_TYPES = ("auto", "gpu", "cpu", "storage", "edge")


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GpuInfo, ...]
    gpu_source: str  # "nvml", "nvidia-smi" or ""
    cpu_cores: int
    ram_mb: int
    disk_free_mb: int
    public_addresses: tuple[str, ...]
    data_mount: str  # the data dir's own mountpoint; "" when it sits on the root or a volatile fs

    @property
    def gpu_memory_mb(self) -> int:
        return sum(gpu.memory_mb for gpu in self.gpus)


@dataclass(frozen=True)
class Role:
    """The worker's type and the evidence for it."""

    kind: Kind
    has_edge: bool
    has_storage: bool
    reasons: tuple[str, ...]


def public_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(a for a in addresses if ipaddress.ip_address(a).is_global)


def detect_hardware(probe: Probe, data_dir: Path) -> Hardware:
    gpus, source = probe.nvml(), "nvml"
    if gpus is None:
        gpus, source = probe.nvidia_smi(), "nvidia-smi"
    mountpoint, fstype = probe.mount(data_dir)
    own_mount = mountpoint if mountpoint != "/" and fstype not in VOLATILE_FS else ""
    return Hardware(tuple(gpus or ()), source if gpus else "", probe.cpu_cores(), probe.ram_mb(),
                    probe.disk_free_mb(data_dir), public_addresses(probe.addresses()), own_mount)


def choose_role(requested: str, hw: Hardware, *, public_url: str | None = None,
                persistent_data: bool = False, stores: bool = True) -> Role:
    """The worker type: the requested one, or for `auto` the first of GPU, Edge, Storage, CPU with evidence.

    A low-latency link alone does not make an edge node: it needs a globally routable address
    on a local interface, an explicit public URL, or WORKER_TYPE=edge. A data volume makes a
    storage node only where a store can run (`stores`): every container has one.
    """
    if requested not in WORKER_TYPES:
        raise ValueError(f"WORKER_TYPE must be one of {', '.join(WORKER_TYPES)}, not {requested!r}")
    edge_evidence = [f"public address {a}" for a in hw.public_addresses]
    if public_url:
        edge_evidence.append(f"public URL {public_url}")
    storage_evidence = [f"data dir on its own volume {hw.data_mount}"] if hw.data_mount else []
    if persistent_data:
        storage_evidence.append("data dir declared persistent")
    if requested != "auto":
        kind = Kind(requested)
        reasons = [f"worker type {requested} requested"]
        if kind == Kind.GPU and not hw.gpus:
            reasons.append("but no GPU found: GPU engines will not be placed here")
    elif hw.gpus:
        kind, reasons = Kind.GPU, [f"{len(hw.gpus)} GPU(s)"]
    elif edge_evidence:
        kind, reasons = Kind.EDGE, edge_evidence
    elif storage_evidence and stores:
        kind, reasons = Kind.STORAGE, storage_evidence
    elif storage_evidence:
        kind, reasons = Kind.CPU, ["no GPU, no public address", *storage_evidence, "but no store engine here"]
    else:
        kind, reasons = Kind.CPU, ["no GPU, no public address, no persistent data volume"]
    return Role(kind, bool(edge_evidence) or kind == Kind.EDGE, bool(storage_evidence) or kind == Kind.STORAGE,
                tuple(reasons))


def describe(hw: Hardware, role: Role, engines: Iterable[str]) -> list[str]:
    """The `Detected ...` lines for the log."""
    lines = [f"Detected GPU: {g.name}, {g.memory_mb} MB ({g.free_mb} MB free), driver {g.driver or '?'}"
             f" via {hw.gpu_source}" for g in hw.gpus] or ["Detected GPU: none"]
    lines.append(f"Detected CPU: {hw.cpu_cores} cores, RAM {hw.ram_mb} MB, data dir free disk {hw.disk_free_mb} MB")
    lines.append(f"Detected edge: {'yes' if role.has_edge else 'no'}"
                 f" (public addresses: {', '.join(hw.public_addresses) or 'none'})")
    lines.append(f"Detected storage: {'yes' if role.has_storage else 'no'}"
                 f" (data volume: {hw.data_mount or 'root file system'})")
    lines.append(f"Detected engines: {', '.join(sorted(engines)) or 'none'}")
    lines.append(f"Detected worker type: {role.kind} ({'; '.join(role.reasons)})")
    return lines
