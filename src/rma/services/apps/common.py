"""What every engine app shares: a model loaded off the event loop, an honest /health, JSON errors.

The model loads in a thread after the server binds, so /health can say "loading" (503) instead of
refusing connections, and turns 200 only once the model answers. A model that fails to load ends
the process with the reason in the log: the supervisor restarts it and, after a crash loop, the
coordinator places the service elsewhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rma.body_limit import BodyLimit

log = logging.getLogger("rma.apps")

T = TypeVar("T")
# Exit status of an app whose model could not load: distinct from a crash in the server itself.
LOAD_FAILED_EXIT = 3


class ApiError(Exception):
    """A request the app refuses: answered as OpenAI's error shape with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


class Loaded(Generic[T]):
    """A model that loads once in the background; requests read it only once it is there."""

    def __init__(self, what: str, load: Callable[[], T]) -> None:
        self.what, self._load = what, load
        self.value: T | None = None
        self.since = time.monotonic()

    def start(self) -> None:
        threading.Thread(target=self._run, name="model-load", daemon=True).start()

    def _run(self) -> None:
        log.info("loading %s", self.what)
        try:
            self.value = self._load()
        except Exception:
            log.exception("%s failed to load; exiting", self.what)
            os._exit(LOAD_FAILED_EXIT)
        log.info("%s loaded in %.1fs; ready", self.what, time.monotonic() - self.since)

    def get(self) -> T:
        if self.value is None:
            raise ApiError(503, f"{self.what} is still loading")
        return self.value


def api_app(title: str, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
            max_body_bytes: int) -> FastAPI:
    """An app with JSON errors and a request body limit; its /health is the caller's to add."""
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        return error_response(400, f"{param or 'body'}: {first.get('msg', 'invalid request')}", param)

    app.add_middleware(BodyLimit, limit=max_body_bytes,
                       error_body=lambda message: bytes(error_response(413, message).body))
    return app


def build_app(title: str, model: Loaded[T], max_body_bytes: int) -> FastAPI:
    """An app with /health tied to `model`, JSON errors, and a request body limit."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        model.start()
        yield

    app = api_app(title, lifespan, max_body_bytes)

    @app.get("/health")
    def health() -> JSONResponse:
        if model.value is None:
            waited = time.monotonic() - model.since
            return JSONResponse({"status": "loading", "reason": f"{model.what} loading for {waited:.0f}s"}, 503)
        return JSONResponse({"status": "ok", "model": model.what})

    return app


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads: the worker's share, not nproc")
    return parser


def serve(app: FastAPI, host: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
