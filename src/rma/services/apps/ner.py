"""ner-extraction: spaCy's English pipeline with money-advice rules (rma.services.apps.money_ner) behind POST /extract.

spaCy holds the GIL for most of its work (measured on 2 cores: 6.7 texts/s in one thread, 5.9 in
two), so the pipeline runs in a pool of worker processes, one per thread of the worker's CPU share
(at most MAX_PROCESSES: each holds its own copy of the model). A batch is split across them.

Each part of a request holds a slot, one per process, while a process runs it, so the pool never
queues work out of sight: /health says busy (429) once every process has been taken for 2 s, and a
part that waits longer than --queue-wait-s for one makes its request a 503.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from rma.services.apps import money_ner
from rma.services.apps.common import QUEUE_WAIT_S, ApiError, Loaded, Slots, arguments, build_app, serve

log = logging.getLogger("rma.apps.ner")

MAX_TEXT_CHARS = 100_000
MAX_TEXTS = 64
MAX_TOTAL_CHARS = 400_000
MAX_BODY_BYTES = 4 * 2**20
MAX_PROCESSES = 4  # about 170 MB of RAM each

Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class ExtractRequest(BaseModel):
    """One `text`, or a batch of `texts` (answered as `results`, one per text, in order)."""

    model_config = ConfigDict(extra="forbid")
    text: Text | None = None
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)] | None = None


def start_pool(model: str, processes: int) -> ProcessPoolExecutor:
    """A pool of processes that each load the pipeline as they start; returns once they have answered.

    A model that cannot load breaks the pool here, at start, so the app exits with the reason."""
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=money_ner.load_into_process, initargs=(model,))
    for future in [pool.submit(money_ner.process_labels) for _ in range(processes)]:
        future.result()
    return pool


def create_app(model: str, threads: int, queue_wait_s: float = QUEUE_WAIT_S) -> Any:
    processes = max(1, min(threads, MAX_PROCESSES))
    loaded = Loaded(f"spaCy {model} ({processes} processes)", lambda: start_pool(model, processes))
    working = Slots(processes, queue_wait_s, "spaCy process")
    app = build_app("ner-extraction", loaded, MAX_BODY_BYTES, working)
    serving = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[None]:
        """Stop the pool with the server: uvicorn ends on the signal it caught, so no exit hook would run."""
        async with serving(running):
            yield
        if loaded.value is not None:
            loaded.value.shutdown(cancel_futures=True)

    app.router.lifespan_context = lifespan

    async def analyse(pool: ProcessPoolExecutor, texts: list[str]) -> list[dict[str, Any]]:
        """One part of a request in a pipeline process, holding a slot while it runs.

        A slot per part, not per request: a batch split across every process takes every slot, so /health
        cannot say ok while a single batch keeps the whole pool busy."""
        async with working.take():
            return await asyncio.get_running_loop().run_in_executor(pool, money_ner.analyse_in_process, texts)

    async def run(pool: ProcessPoolExecutor, texts: list[str]) -> list[dict[str, Any]]:
        size = -(-len(texts) // processes)
        try:
            parts = await asyncio.gather(*(analyse(pool, texts[i:i + size]) for i in range(0, len(texts), size)))
        except BrokenProcessPool:
            # A pipeline process died (out of memory): exit, so the worker restarts the service.
            log.critical("a spaCy process died; exiting")
            os._exit(1)
        return [result for part in parts for result in part]

    @app.post("/extract")
    async def extract(request: ExtractRequest) -> dict[str, Any]:
        if (request.text is None) == (request.texts is None):
            raise ApiError(400, "send either `text` (a string) or `texts` (a list of strings)", "text")
        texts = [request.text] if request.text is not None else request.texts or []
        if sum(map(len, texts)) > MAX_TOTAL_CHARS:
            raise ApiError(413, f"texts over {MAX_TOTAL_CHARS} characters in all", "texts")
        results = await run(loaded.get(), texts)
        return results[0] if request.text is not None else {"results": results}

    return app


def main() -> None:
    parser = arguments("Named entities for money advice, with spaCy", "spaCy process")
    parser.add_argument("--model", required=True, help="a spaCy pipeline package or folder")
    args = parser.parse_args()
    serve(create_app(args.model, args.threads, args.queue_wait_s), args.host, args.port)


if __name__ == "__main__":
    main()
