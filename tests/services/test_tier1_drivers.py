"""Tier-1 drivers without their engines running: the commands they build and what the worker reports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from rma.catalog import get
from rma.protocol import ServiceConfig
from rma.services import DRIVERS
from rma.services.base import Context, cpu_threads
from rma.worker.config import service_env
from rma.worker.engines import engines_by_service, runnable_engines
from rma.worker.probe import Probe
from rma.worker.reconcile import diff

TIER1 = ("llm-inference", "vision-ocr", "rag-embeddings")
ENGINE_MODULES = ("rma", "llama_cpp", "pytesseract", "sentence_transformers")


def machine(modules: tuple[str, ...] = ENGINE_MODULES, binaries: tuple[str, ...] = ("tesseract",)) -> Probe:
    return Probe(lambda: None, lambda: None, lambda: 0.0, lambda: 8, lambda: 16384, lambda _: 100_000,
                 lambda _: ("/", "ext4"), lambda: ["127.0.0.1"], lambda m: m in modules, lambda b: b in binaries)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, str]:
    """A GGUF file, a sentence-transformers folder and a cached Hugging Face model, all on disk."""
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "modules.json").write_text("[]")
    (tmp_path / "hub" / "models--org--llm" / "snapshots").mkdir(parents=True)
    return {"gguf": str(tmp_path / "tiny.gguf"), "st": str(tmp_path / "st"), "HF_HUB_CACHE": str(tmp_path / "hub")}


def test_tier1_drivers_name_catalogue_engines_best_first() -> None:
    for name in TIER1:
        driver = DRIVERS[name]
        catalogue = [engine.name for engine in get(name).engines]
        assert [e for e in catalogue if e in driver.engines] == list(driver.engines)
        assert driver.engine in driver.engines


def test_without_engine_modules_no_tier1_engine_is_reported() -> None:
    found = engines_by_service(machine(modules=("rma",), binaries=()), DRIVERS, {})
    assert not set(found) & set(TIER1)


def test_vision_ocr_offers_vllm_vision_only_with_vllm_and_its_model_on_disk(models: dict[str, str]) -> None:
    hub = Path(models["HF_HUB_CACHE"])
    gpu_image = machine(binaries=("tesseract", "vllm"))
    cached = {"VISION_MODEL_NAME": "org/llm", "HF_HUB_CACHE": str(hub)}
    assert engines_by_service(gpu_image, DRIVERS, cached)["vision-ocr"] == ("vllm-vision", "tesseract")
    assert engines_by_service(machine(), DRIVERS, cached)["vision-ocr"] == ("tesseract",)  # no `vllm` program
    absent = {"VISION_MODEL_NAME": "org/other", "HF_HUB_CACHE": str(hub)}
    assert engines_by_service(gpu_image, DRIVERS, absent)["vision-ocr"] == ("tesseract",)
    folder = {"VISION_MODEL_NAME": models["st"]}  # a local folder is on disk too
    assert "vllm-vision" in engines_by_service(gpu_image, DRIVERS, folder)["vision-ocr"]
    # MODEL_NAME is the LLM's; without VISION_MODEL_NAME the engine needs LLaVA 1.5 in the cache.
    llm_only = {"MODEL_NAME": "org/llm", "HF_HUB_CACHE": str(hub)}
    assert engines_by_service(gpu_image, DRIVERS, llm_only)["vision-ocr"] == ("tesseract",)
    (hub / "models--llava-hf--llava-1.5-7b-hf" / "snapshots").mkdir(parents=True)
    assert "vllm-vision" in engines_by_service(gpu_image, DRIVERS, llm_only)["vision-ocr"]
    assert "tesseract" not in runnable_engines(machine(binaries=()))  # pytesseract without the binary


def test_the_worker_hands_vision_ocr_its_model_and_the_hub_cache() -> None:
    environ = {"VISION_MODEL_NAME": "org/vlm", "HF_HOME": "/models/hf", "HF_HUB_CACHE": "/models/hub", "OTHER": "x"}
    assert service_env(environ, None) == {k: v for k, v in environ.items() if k != "OTHER"}


def test_llm_engines_are_reported_only_with_their_model_on_disk(models: dict[str, str], tmp_path: Path) -> None:
    with_models = {"MODEL_NAME": models["gguf"], "HF_HUB_CACHE": models["HF_HUB_CACHE"]}
    assert engines_by_service(machine(), DRIVERS, with_models)["llm-inference"] == ("llama-cpp",)
    missing_gguf = {"MODEL_NAME": str(tmp_path / "absent.gguf")}
    assert "llm-inference" not in engines_by_service(machine(), DRIVERS, missing_gguf)
    cached = {"MODEL_NAME": "org/llm", "HF_HUB_CACHE": models["HF_HUB_CACHE"]}
    gpu_image = machine(binaries=("tesseract", "vllm"))  # vLLM in its own virtualenv, its program on PATH
    assert "vllm" in engines_by_service(gpu_image, DRIVERS, cached).get("llm-inference", ())
    assert "vllm" not in engines_by_service(gpu_image, DRIVERS, {"MODEL_NAME": "org/other"}).get("llm-inference", ())
    assert "vllm" not in engines_by_service(machine(), DRIVERS, cached).get("llm-inference", ())


def test_cuda_embeddings_need_a_cuda_build_of_torch(models: dict[str, str]) -> None:
    from rma.services.apps.models import torch_has_cuda

    reported = engines_by_service(machine(), DRIVERS, {"MODEL_NAME": models["st"]})["rag-embeddings"]
    assert reported == (("sentence-transformers-cuda", "sentence-transformers") if torch_has_cuda()
                        else ("sentence-transformers",))


def test_vllm_command_carries_the_seed_variables(tmp_path: Path) -> None:
    env = {"MODEL_NAME": "meta-llama/Llama-3.2-3B-Instruct", "GPU_MEMORY_UTILIZATION": "0.5", "MAX_MODEL_LEN": "2048"}
    launch = DRIVERS["llm-inference"].launch(Context("0.0.0.0", 8105, tmp_path, env=env, engine="vllm"))
    assert launch.argv == ("vllm", "serve", "meta-llama/Llama-3.2-3B-Instruct", "--host", "0.0.0.0", "--port", "8105",
                           "--gpu-memory-utilization", "0.5", "--max-model-len", "2048")
    assert launch.env["HF_HUB_OFFLINE"] == "1"


def test_vllm_vision_command_wraps_vllm_serve_in_the_ocr_app(tmp_path: Path) -> None:
    env = {"VISION_MODEL_NAME": "org/vlm", "MODEL_NAME": "org/llm", "GPU_MEMORY_UTILIZATION": "0.4",
           "MAX_MODEL_LEN": "2048"}
    launch = DRIVERS["vision-ocr"].launch(Context("0.0.0.0", 8104, tmp_path, env=env, engine="vllm-vision"))
    assert launch.argv == (sys.executable, "-m", "rma.services.apps.vlm_ocr", "--host", "0.0.0.0", "--port", "8104",
                           "--", "vllm", "serve", "org/vlm", "--gpu-memory-utilization", "0.4",
                           "--max-model-len", "2048", "--limit-mm-per-prompt", '{"image": 1}')
    assert launch.env == {"HF_HUB_OFFLINE": "1"} and launch.cwd == tmp_path
    default = DRIVERS["vision-ocr"].launch(Context("127.0.0.1", 8104, tmp_path, engine="vllm-vision")).argv
    assert default[default.index("serve") + 1:] == ("llava-hf/llava-1.5-7b-hf", "--gpu-memory-utilization", "0.90",
                                                    "--max-model-len", "4096", "--limit-mm-per-prompt", '{"image": 1}')


def test_tesseract_command_reads_pages_on_the_cpu_share(tmp_path: Path) -> None:
    for engine in ("tesseract", None):
        ctx = Context("127.0.0.1", 9104, tmp_path, env={"OMP_NUM_THREADS": "3"}, engine=engine)
        launch = DRIVERS["vision-ocr"].launch(ctx)
        assert launch.argv == (sys.executable, "-m", "rma.services.apps.ocr", "--host", "127.0.0.1", "--port", "9104",
                               "--threads", "3")
        assert launch.env == {"OMP_THREAD_LIMIT": "1"}


def test_llama_command_serves_the_gguf_on_the_cpu_share(models: dict[str, str], tmp_path: Path) -> None:
    ctx = Context("127.0.0.1", 9105, tmp_path, env={"MODEL_NAME": models["gguf"], "OMP_NUM_THREADS": "3"},
                  engine="llama-cpp")
    argv = DRIVERS["llm-inference"].launch(ctx).argv
    assert argv[:3] == (sys.executable, "-m", "rma.services.apps.llm")
    assert argv[argv.index("--model") + 1] == models["gguf"]
    assert argv[argv.index("--threads") + 1] == "3" and argv[argv.index("--port") + 1] == "9105"


def test_embeddings_pick_the_device_from_the_chosen_engine(models: dict[str, str], tmp_path: Path) -> None:
    env = {"MODEL_NAME": models["st"], "OMP_NUM_THREADS": "2"}
    for engine, device in (("sentence-transformers-cuda", "cuda"), ("sentence-transformers", "cpu"), (None, "cpu")):
        launch = DRIVERS["rag-embeddings"].launch(Context("127.0.0.1", 9102, tmp_path, env=env, engine=engine))
        assert launch.argv[launch.argv.index("--device") + 1] == device
        assert launch.argv[launch.argv.index("--model") + 1] == models["st"]
        assert launch.env["OMP_NUM_THREADS"] == "2" and launch.env["HF_HUB_OFFLINE"] == "1"


def test_threads_come_from_the_cpu_share_not_the_machine(tmp_path: Path) -> None:
    assert cpu_threads(Context("127.0.0.1", 1, tmp_path, env={"OMP_NUM_THREADS": "1"})) == 1
    assert 1 <= cpu_threads(Context("127.0.0.1", 1, tmp_path)) <= len(os.sched_getaffinity(0))


def test_a_worker_starts_any_engine_it_reported_and_refuses_others() -> None:
    def config(engine: str) -> ServiceConfig:
        return ServiceConfig(name="rag-embeddings", port=1, priority=2, tier=1, kind="gpu", engine=engine)

    engines = {"rag-embeddings": ("sentence-transformers",)}
    assert diff([config("sentence-transformers")], {}, engines, DRIVERS.keys()).start
    refused = diff([config("sentence-transformers-cuda")], {}, engines, DRIVERS.keys()).refused
    assert refused == (("rag-embeddings", "engine sentence-transformers-cuda not available here"),)
