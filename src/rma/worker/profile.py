"""From detection to what registration says: capabilities, engines, and the `Detected` lines."""

from __future__ import annotations

from rma.catalog import BY_NAME, Kind
from rma.protocol import Capabilities, Gpu
from rma.services import DRIVERS
from rma.worker.agent import Profile
from rma.worker.config import WorkerConfig
from rma.worker.engines import data_services, engines_by_service
from rma.worker.hardware import choose_role, describe, detect_hardware
from rma.worker.mesh_node import mesh_unavailable
from rma.worker.probe import Probe


def build_profile(config: WorkerConfig, probe: Probe) -> tuple[Profile, list[str]]:
    hw = detect_hardware(probe, config.data_dir)
    by_service = engines_by_service(probe, DRIVERS, config.service_env)
    stores = any(BY_NAME[name].kind == Kind.STORAGE for name in by_service)
    role = choose_role(config.worker_type, hw, public_url=config.public_url, persistent_data=config.persistent_data,
                       stores=stores)
    engines = sorted(name for names in by_service.values() for name in names)
    held = data_services(config.data_dir)
    capabilities = Capabilities(
        worker_type=role.kind.value, has_gpu=bool(hw.gpus),
        gpus=[Gpu(name=g.name, memory_mb=g.memory_mb, free_mb=g.free_mb) for g in hw.gpus],
        gpu_memory_mb=hw.gpu_memory_mb, cpu_cores=hw.cpu_cores, ram_mb=hw.ram_mb, disk_free_mb=hw.disk_free_mb,
        has_storage=role.has_storage, has_edge=role.has_edge, has_public_ip=bool(hw.public_addresses),
        engines=engines, data_services=held,
    )
    lines = describe(hw, role, engines)
    if held:
        lines.append(f"Detected data of: {', '.join(held)} (they come back to this worker)")
    no_mesh = mesh_unavailable()
    lines.append("Detected mesh: Nebula (joins a pool that runs on the mesh)" if no_mesh is None else
                 f"Detected no mesh: {no_mesh}; a pool that runs on the mesh gives this worker no services")
    return Profile(capabilities, by_service, mesh=no_mesh is None), lines
