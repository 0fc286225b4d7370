"""Which workers `rma up` runs on a machine: one per kind it has engines for, over named machines."""

from __future__ import annotations

from pathlib import Path

from rma.catalog import Kind
from rma.worker.local_pool import local_workers, serves_kind, worker_id_for
from worker.test_hardware import A4090, machine

# A laptop with this project's CPU engines and the stores' servers installed.
LAPTOP = machine(modules=("rma", "llama_cpp", "spacy", "pypdf", "docx", "pytesseract", "sentence_transformers"),
                 binaries=("tesseract", "redis-server", "postgres", "initdb"))


def kinds(workers: list) -> list[Kind]:  # type: ignore[type-arg]
    return [w.kind for w in workers]


def test_a_laptop_runs_a_cpu_a_storage_and_an_edge_worker(tmp_path: Path) -> None:
    workers = local_workers(tmp_path, "http://127.0.0.1:8080", "127.0.0.1", "auto", {}, LAPTOP)
    assert kinds(workers) == [Kind.CPU, Kind.STORAGE, Kind.EDGE]
    assert [w.config.data_dir for w in workers] == [tmp_path / "workers" / k for k in ("cpu", "storage", "edge")]
    assert [w.config.worker_type for w in workers] == ["cpu", "storage", "edge"]
    storage = workers[1]
    assert storage.config.persistent_data and storage.profile.capabilities.worker_type == "storage"


def test_a_gpu_worker_only_where_a_gpu_is_found(tmp_path: Path) -> None:
    gpu_box = machine(nvml=[A4090], modules=("rma", "spacy", "pypdf", "docx"), binaries=("redis-server",))
    assert kinds(local_workers(tmp_path, "http://127.0.0.1:8080", "127.0.0.1", "auto", {}, gpu_box)) == [
        Kind.GPU, Kind.CPU, Kind.STORAGE, Kind.EDGE]
    bare = machine(modules=("rma",))  # only this project's own engines: notes-coa and the routers
    assert kinds(local_workers(tmp_path, "http://127.0.0.1:8080", "127.0.0.1", "auto", {}, bare)) == [
        Kind.CPU, Kind.EDGE]


def test_a_requested_kind_is_the_only_worker(tmp_path: Path) -> None:
    assert kinds(local_workers(tmp_path, "http://127.0.0.1:8080", "127.0.0.1", "storage", {}, LAPTOP)) == [
        Kind.STORAGE]


def test_what_each_kind_can_serve() -> None:
    assert serves_kind(Kind.CPU, {"vision-ocr": ("tesseract",)}, has_gpu=False)  # tier 1 on a CPU engine
    assert not serves_kind(Kind.CPU, {"llm-inference": ("vllm",)}, has_gpu=True)  # needs the GPU worker
    assert serves_kind(Kind.STORAGE, {"redis": ("redis-server",)}, has_gpu=False)
    assert not serves_kind(Kind.GPU, {"llm-inference": ("vllm",)}, has_gpu=False)


def test_worker_ids_are_the_machine_name_and_kind() -> None:
    assert worker_id_for(Kind.CPU, "laptop.local") == "laptop.local-cpu"
    assert worker_id_for(Kind.EDGE, "my box (2)") == "my-box--2-edge"
    assert worker_id_for(Kind.GPU, "!!!") == "local-gpu"
