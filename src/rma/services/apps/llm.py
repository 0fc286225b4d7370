"""llm-inference on CPU: llama-cpp-python's OpenAI-compatible server, set up for a pool.

Run as its stock `python -m llama_cpp.server`, two of its defaults hurt here. Every route but
the docs waits for the model's lock, so a health check on `/v1/models` queues behind a long
generation (and reads as a dead replica); and with `interrupt_requests` on, any request that
queues, health checks included, cuts the stream being generated short with `[DONE]` (a user
saw an empty answer when a probe landed first). Here streams run to their end, later
requests wait their turn, and `/health` answers without the lock: the model loads before the
server binds, so any answer means it is ready.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rma.services.apps.common import arguments, serve


def create_app(model: Path, context: int, threads: int) -> Any:
    from llama_cpp.server.app import create_app as llama_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    settings = ModelSettings(model=str(model), model_alias=model.stem, n_ctx=context, n_threads=threads,
                             n_threads_batch=threads, verbose=False)
    app = llama_app(server_settings=ServerSettings(interrupt_requests=False), model_settings=[settings])

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": model.stem}

    return app


def main() -> None:
    parser = arguments("llama.cpp's OpenAI-compatible server with a lock-free /health")
    parser.add_argument("--model", type=Path, required=True, help="a .gguf file")
    parser.add_argument("--context", type=int, default=4096, help="context window in tokens")
    args = parser.parse_args()
    serve(create_app(args.model, args.context, args.threads), args.host, args.port)


if __name__ == "__main__":
    main()
