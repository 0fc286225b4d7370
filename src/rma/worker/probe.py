"""What detection may ask the machine, as one object of plain functions.

`Probe.system()` asks the real machine; tests build a `Probe` from named hardware instead,
so detection is tested without patching anything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from rma.services.base import find_binary

# File systems that do not outlive a reboot or a container: never a persistent data volume.
VOLATILE_FS = frozenset({"tmpfs", "ramfs", "overlay", "devtmpfs", "squashfs"})


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_mb: int
    free_mb: int
    driver: str = ""


@dataclass(frozen=True)
class Probe:
    nvml: Callable[[], list[GpuInfo] | None]  # None: NVML unavailable
    nvidia_smi: Callable[[], list[GpuInfo] | None]  # None: no nvidia-smi, or it failed
    gpu_utilization: Callable[[], float]  # percent, mean over GPUs
    cpu_cores: Callable[[], int]
    ram_mb: Callable[[], int]
    disk_free_mb: Callable[[Path], int]
    mount: Callable[[Path], tuple[str, str]]  # (mountpoint, file system type)
    addresses: Callable[[], list[str]]  # every address on a local interface
    has_module: Callable[[str], bool]
    has_binary: Callable[[str], bool]

    @classmethod
    def system(cls) -> Probe:
        return cls(_nvml, _nvidia_smi, _nvml_utilization, lambda: psutil.cpu_count() or 1,
                   lambda: psutil.virtual_memory().total // 2**20, _disk_free_mb, _mount, _addresses,
                   _has_module, lambda name: find_binary(name) is not None)


def _nvml() -> list[GpuInfo] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any NVML failure means "ask nvidia-smi instead"
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(GpuInfo(name if isinstance(name, str) else name.decode(),
                                int(memory.total) // 2**20, int(memory.free) // 2**20, str(driver)))
        return gpus
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _nvml_utilization() -> float:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML, no GPU load to report
        return 0.0
    try:
        count = pynvml.nvmlDeviceGetCount()
        loads = [pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(i)).gpu for i in range(count)]
        return float(sum(loads) / len(loads)) if loads else 0.0
    except pynvml.NVMLError:
        return 0.0
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Rows of `name, memory.total, memory.free, driver_version` (csv, noheader, nounits)."""
    gpus = []
    for row in text.strip().splitlines():
        parts = [part.strip() for part in row.split(",")]
        if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append(GpuInfo(parts[0], int(parts[1]), int(parts[2]), parts[3]))
    return gpus


def _nvidia_smi() -> list[GpuInfo] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,memory.total,memory.free,driver_version", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(done.stdout)


def _existing(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def _disk_free_mb(path: Path) -> int:
    return psutil.disk_usage(str(_existing(path))).free // 2**20


def _mount(path: Path) -> tuple[str, str]:
    """The mountpoint holding `path` (the longest one that contains it) and its file system."""
    target = _existing(path)
    best = ("/", "")
    for part in psutil.disk_partitions(all=True):
        mountpoint = Path(part.mountpoint)
        if (target == mountpoint or mountpoint in target.parents) and len(part.mountpoint) >= len(best[0]):
            best = (part.mountpoint, part.fstype)
    return best


def _addresses() -> list[str]:
    found = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.ip_address(addr.address.split("%")[0])))
    return found


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
