"""vision-ocr: a vision-language model on vLLM (GPU) or Tesseract (CPU), both behind the same /ocr.

On a GPU, rma.services.apps.vlm_ocr runs `vllm serve` on VISION_MODEL_NAME (LLaVA 1.5 by
default) as its child, answers /ocr with the model's transcription and passes OpenAI chat
(image content included) through under /v1. The model comes from disk: vLLM runs with
HF_HUB_OFFLINE=1 and the engine is reported only when the model is a local folder or already
in the Hugging Face cache. On CPU, rma.services.apps.ocr reads pages with Tesseract.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from rma.services.apps.models import hub_cached, package_dir, vision_model
from rma.services.base import (
    GPU_VARIABLES,
    LOCATION_VARIABLES,
    MODEL_VARIABLES,
    THREAD_VARIABLES,
    Context,
    Launch,
    ServiceDriver,
    cpu_threads,
)
from rma.services.llm_inference import DEFAULT_GPU_MEMORY_UTILIZATION, DEFAULT_MAX_MODEL_LEN

GPU_ENGINE = "vllm-vision"
IMAGES_PER_PROMPT = 1  # /ocr sends one page per request; LLaVA 1.5 was trained on one image


class VisionOcr(ServiceDriver):
    name = "vision-ocr"
    engines = (GPU_ENGINE, "tesseract")
    engine = engines[-1]  # the CPU engine, the default
    # TESSDATA_PREFIX: where Tesseract's language data is, when not in the system's folder.
    passes = (*LOCATION_VARIABLES, *MODEL_VARIABLES, *GPU_VARIABLES, *THREAD_VARIABLES, "TESSDATA_PREFIX")

    def missing(self, engine: str, env: Mapping[str, str]) -> str | None:
        if not package_dir("pypdfium2"):  # both engines render PDF pages with it
            return "no pypdfium2 to render PDF pages"
        if engine == GPU_ENGINE:
            model = vision_model(env)
            return None if hub_cached(model, env) else f"model {model} is not on disk"
        return None

    def launch(self, ctx: Context) -> Launch:
        return self._vllm(ctx) if ctx.engine == GPU_ENGINE else self._tesseract(ctx)

    def _vllm(self, ctx: Context) -> Launch:
        # The app adds --host 127.0.0.1 --port <a free port> to the vLLM command after `--`.
        return Launch(
            (sys.executable, "-m", "rma.services.apps.vlm_ocr", "--host", ctx.host, "--port", str(ctx.port), "--",
             "vllm", "serve", vision_model(ctx.env),
             "--gpu-memory-utilization", ctx.env.get("GPU_MEMORY_UTILIZATION", DEFAULT_GPU_MEMORY_UTILIZATION),
             "--max-model-len", ctx.env.get("MAX_MODEL_LEN", DEFAULT_MAX_MODEL_LEN),
             "--limit-mm-per-prompt", json.dumps({"image": IMAGES_PER_PROMPT})),
            env={"HF_HUB_OFFLINE": "1"},
            cwd=ctx.data_dir,
        )

    def _tesseract(self, ctx: Context) -> Launch:
        threads = cpu_threads(ctx)
        return Launch(
            (sys.executable, "-m", "rma.services.apps.ocr", "--host", ctx.host, "--port", str(ctx.port),
             "--threads", str(threads)),
            # One Tesseract thread per page; the app reads `threads` pages side by side.
            env={"OMP_THREAD_LIMIT": "1"},
            cwd=ctx.data_dir,
        )
