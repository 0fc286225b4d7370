"""Detection over named machines built from `Probe`: no patching, no real GPU needed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rma.catalog import Kind
from rma.worker.engines import data_services, runnable_engines, service_dir
from rma.worker.hardware import choose_role, describe, detect_hardware
from rma.worker.probe import GpuInfo, Probe, parse_nvidia_smi

A4090 = GpuInfo("NVIDIA GeForce RTX 4090", 24564, 23000, "550.54")


def machine(*, nvml: list[GpuInfo] | None = None, smi: list[GpuInfo] | None = None,
            addresses: tuple[str, ...] = ("127.0.0.1", "192.168.1.20", "fe80::1"),
            mount: tuple[str, str] = ("/", "ext4"), binaries: tuple[str, ...] = (),
            modules: tuple[str, ...] = ("rma",)) -> Probe:
    return Probe(lambda: nvml, lambda: smi, lambda: 0.0, lambda: 8, lambda: 16384, lambda _: 100_000,
                 lambda _: mount, lambda: list(addresses), lambda m: m in modules, lambda b: b in binaries)


LAPTOP = machine()
GPU_BOX = machine(nvml=[A4090])
SMI_ONLY = machine(smi=[A4090])
VPS = machine(addresses=("127.0.0.1", "10.0.0.5", "203.0.113.9"))
NAS = machine(mount=("/data", "ext4"))
TMPFS = machine(mount=("/tmp", "tmpfs"))


@pytest.mark.parametrize(("probe", "kind"), [
    (LAPTOP, Kind.CPU), (GPU_BOX, Kind.GPU), (SMI_ONLY, Kind.GPU), (NAS, Kind.STORAGE), (TMPFS, Kind.CPU),
    (machine(nvml=[A4090], addresses=("8.8.4.4",), mount=("/data", "xfs")), Kind.GPU),
    (machine(addresses=("8.8.4.4",), mount=("/data", "xfs")), Kind.EDGE),
])
def test_auto_type_follows_gpu_edge_storage_cpu(probe: Probe, kind: Kind, tmp_path: Path) -> None:
    assert choose_role("auto", detect_hardware(probe, tmp_path)).kind == kind


def test_documentation_addresses_are_not_public_but_real_ones_are(tmp_path: Path) -> None:
    # 203.0.113.0/24 is TEST-NET-3: not globally routable, so a VPS fixture with it stays CPU.
    assert detect_hardware(VPS, tmp_path).public_addresses == ()
    routed = replace(VPS, addresses=lambda: ["2a00:1450:4009:81f::200e", "100.64.0.1"])
    assert detect_hardware(routed, tmp_path).public_addresses == ("2a00:1450:4009:81f::200e",)


def test_public_url_or_explicit_type_makes_an_edge(tmp_path: Path) -> None:
    hw = detect_hardware(LAPTOP, tmp_path)
    assert choose_role("auto", hw, public_url="https://me.example.org").kind == Kind.EDGE
    role = choose_role("edge", hw)
    assert role.kind == Kind.EDGE and role.has_edge and not role.has_storage


def test_declared_persistent_data_makes_storage(tmp_path: Path) -> None:
    role = choose_role("auto", detect_hardware(LAPTOP, tmp_path), persistent_data=True)
    assert role.kind == Kind.STORAGE and role.has_storage


def test_a_data_volume_without_a_store_engine_stays_cpu(tmp_path: Path) -> None:
    """A container always has its data volume; an image without redis or postgres is no storage node."""
    role = choose_role("auto", detect_hardware(NAS, tmp_path), stores=False)
    assert role.kind == Kind.CPU and "no store engine" in role.reasons[-1]
    assert choose_role("storage", detect_hardware(NAS, tmp_path), stores=False).kind == Kind.STORAGE


def test_gpu_comes_from_nvml_then_nvidia_smi(tmp_path: Path) -> None:
    assert detect_hardware(GPU_BOX, tmp_path).gpu_source == "nvml"
    hw = detect_hardware(SMI_ONLY, tmp_path)
    assert hw.gpu_source == "nvidia-smi" and hw.gpu_memory_mb == 24564


def test_forced_gpu_without_a_gpu_says_so(tmp_path: Path) -> None:
    role = choose_role("gpu", detect_hardware(LAPTOP, tmp_path))
    assert role.kind == Kind.GPU and "no GPU found" in role.reasons[-1]


def test_unknown_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="WORKER_TYPE"):
        choose_role("quantum", detect_hardware(LAPTOP, tmp_path))


def test_every_finding_is_a_detected_line(tmp_path: Path) -> None:
    hw = detect_hardware(GPU_BOX, tmp_path)
    lines = describe(hw, choose_role("auto", hw), ["redis-server"])
    assert all(line.startswith("Detected") for line in lines)
    assert any("RTX 4090" in line and "550.54" in line for line in lines)


def test_nvidia_smi_rows_parse() -> None:
    text = "NVIDIA A100-SXM4-40GB, 40960, 40000, 535.104.05\nbroken row\n"
    assert parse_nvidia_smi(text) == [GpuInfo("NVIDIA A100-SXM4-40GB", 40960, 40000, "535.104.05")]


def test_engines_need_an_implementation_and_the_binary() -> None:
    own = ["rma-coordinator", "rma-edge-proxy", "rma-load-balancer", "rma-notes-coa"]
    assert runnable_engines(LAPTOP) == own
    assert runnable_engines(machine(binaries=("redis-server", "postgres", "initdb"))) == [
        "postgres", "redis-server", *own]
    assert runnable_engines(machine(modules=())) == []


def test_data_services_are_stores_with_data(tmp_path: Path) -> None:
    service_dir(tmp_path, "redis").mkdir(parents=True)
    assert data_services(tmp_path) == []
    (service_dir(tmp_path, "redis") / "appendonlydir").mkdir()
    service_dir(tmp_path, "coordinator").mkdir(parents=True)
    (service_dir(tmp_path, "coordinator") / "registry.db").touch()
    assert data_services(tmp_path) == ["redis"]


def test_the_real_machine_answers(tmp_path: Path) -> None:
    hw = detect_hardware(Probe.system(), tmp_path)
    assert hw.cpu_cores >= 1 and hw.ram_mb > 0 and hw.disk_free_mb > 0
