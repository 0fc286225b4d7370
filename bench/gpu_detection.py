"""On a machine with NVIDIA GPUs: what the worker detects, and what placement makes of it.

Prints the GPUs seen through NVML and through `nvidia-smi` (the fallback), the worker's
`Detected` lines both ways, and the services the coordinator's registry assigns such a
worker: with the engines really installed here, and with the GPU engines assumed present
(to show the GPU-memory rules on real figures), after a CPU worker has stood in for tier 1.
Exits 1 when neither way finds a GPU.

    python bench/gpu_detection.py
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from rma.coordinator.registry import Registry
from rma.coordinator.sqlite_store import SqliteStore
from rma.protocol import HeartbeatRequest, RegisterRequest
from rma.worker.config import WorkerConfig
from rma.worker.probe import Probe
from rma.worker.profile import build_profile

GPU_ENGINES = ["vllm", "vllm-vision", "sentence-transformers-cuda", "spacy", "pdf-docx"]
CPU_STAND_IN = ["llama-cpp", "tesseract", "sentence-transformers"]


def show_placement(gpu_capabilities: dict[str, object], title: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(SqliteStore(Path(tmp) / "registry.sqlite3"), heartbeat_interval=5)
        cpu = RegisterRequest.model_validate({"worker_id": "cpu-volunteer", "capabilities": {
            "worker_type": "cpu", "engines": CPU_STAND_IN, "ram_mb": 16384}})
        stand_in, _ = registry.register(cpu, "127.0.0.1", None)
        registry.heartbeat(HeartbeatRequest(worker_id="cpu-volunteer", services_status={
            s: {"state": "healthy"} for s in stand_in.assigned}))
        print(f"  {title}")
        print(f"    CPU worker first: {', '.join(stand_in.assigned)}")
        gpu, _ = registry.register(RegisterRequest.model_validate({"worker_id": "this-gpu-machine",
                                                                   "capabilities": gpu_capabilities}),
                                   "127.0.0.1", None)
        print(f"    this GPU machine joins: {', '.join(gpu.assigned) or 'nothing'}")
        registry.heartbeat(HeartbeatRequest(worker_id="this-gpu-machine", services_status={
            s: {"state": "healthy"} for s in gpu.assigned}))
        registry.heartbeat(HeartbeatRequest(worker_id="cpu-volunteer", services_status={
            s: {"state": "healthy"} for s in registry.get("cpu-volunteer").assigned}))
        print(f"    once it serves, the CPU worker keeps: {', '.join(registry.get('cpu-volunteer').assigned)}")
        for gap in (g for g in registry.events if g.kind == "unassigned"):
            print(f"      shed {gap.detail}")


def main() -> int:
    probe = Probe.system()
    nvml, smi = probe.nvml(), probe.nvidia_smi()
    for source, gpus in (("NVML", nvml), ("nvidia-smi", smi)):
        if gpus is None:
            print(f"{source}: unavailable")
            continue
        for gpu in gpus:
            print(f"{source}: {gpu.name}, {gpu.memory_mb} MiB total, {gpu.free_mb} MiB free, driver {gpu.driver}")
    if nvml and smi:
        agree = [abs(a.memory_mb - b.memory_mb) <= max(1, a.memory_mb // 100) for a, b in zip(nvml, smi, strict=False)]
        print(f"NVML and nvidia-smi agree on GPU memory: {all(agree) and len(nvml) == len(smi)}")
    with tempfile.TemporaryDirectory() as tmp:
        config = WorkerConfig(worker_type="auto", data_dir=Path(tmp), advertise_host="127.0.0.1")
        profile, lines = build_profile(config, probe)
        print("worker detection (NVML):")
        print("\n".join(f"  {line}" for line in lines))
        _, fallback = build_profile(config, replace(probe, nvml=lambda: None))
        print("worker detection with NVML unavailable (nvidia-smi fallback):")
        print("\n".join(f"  {line}" for line in fallback))
    capabilities = profile.capabilities.model_dump(mode="json")
    print("placement:")
    show_placement(capabilities, f"with the engines installed here ({', '.join(capabilities['engines']) or 'none'})")
    show_placement(capabilities | {"engines": GPU_ENGINES}, "with the GPU engines assumed installed")
    return 0 if (nvml or smi) else 1


if __name__ == "__main__":
    sys.exit(main())
