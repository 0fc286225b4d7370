"""What every engine app shares: a model loaded off the event loop, an honest /health, JSON errors.

The model loads in a thread after the server binds, so /health can say "loading" (503) instead of
refusing connections, and turns 200 only once the model answers. A model that fails to load ends
the process with the reason in the log: the supervisor restarts it and, after a crash loop, the
coordinator places the service elsewhere. An app whose every work slot has been taken for a while
says "busy" (429): the routers send the next request elsewhere, and the supervisor, seeing it
alive, does not restart it. Any error, even one nobody foresaw, is answered as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from rma.body_limit import BodyLimit
from rma.services.base import BUSY_STATUS

log = logging.getLogger("rma.apps")

T = TypeVar("T")
# Exit status of an app whose model could not load: distinct from a crash in the server itself.
LOAD_FAILED_EXIT = 3
BUSY_AFTER_S = 2.0  # every slot taken this long: /health says busy
QUEUE_WAIT_S = 30.0  # a request waits this long for a free work slot, then 503


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


class Slots:
    """At most `count` requests do heavy work at once; another waits for a slot up to `wait_s`, then gets 503.

    `busy_for()` is how long every slot has been taken (0 when one is free), which /health reports.
    """

    def __init__(self, count: int, wait_s: float, what: str) -> None:
        self.count, self.wait_s, self.what = count, wait_s, what
        self._free = asyncio.Semaphore(count)
        self.taken = 0
        self._full_since: float | None = None

    @asynccontextmanager
    async def take(self) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait_s)
        except TimeoutError:
            raise ApiError(503, f"all {self.count} {self.what} slots stayed busy for {self.wait_s:g} s: "
                                "try again, or another replica") from None
        self.taken += 1
        if self.taken == self.count:
            self._full_since = time.monotonic()
        try:
            yield
        finally:
            self.taken -= 1
            self._full_since = None
            self._free.release()

    def busy_for(self) -> float:
        return 0.0 if self._full_since is None else time.monotonic() - self._full_since


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

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        reason = uuid.uuid4().hex[:12]
        log.error("%s: unexpected error (reason %s)", title, reason, exc_info=exc)
        return error_response(500, f"unexpected error (reason {reason}, in the service's log)")

    app.add_middleware(BodyLimit, limit=max_body_bytes,
                       error_body=lambda message: bytes(error_response(413, message).body))
    return app


def build_app(title: str, model: Loaded[T], max_body_bytes: int, slots: Slots | None = None) -> FastAPI:
    """An app with /health tied to `model` (and to `slots`, where heavy work takes one), JSON errors, and a
    request body limit."""

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
        if slots is not None and slots.busy_for() > BUSY_AFTER_S:
            return JSONResponse({"status": "busy", "reason": f"all {slots.count} {slots.what} slots busy for "
                                                             f"{slots.busy_for():.0f}s"}, BUSY_STATUS)
        return JSONResponse({"status": "ok", "model": model.what})

    return app


def arguments(description: str, slots: str | None = None) -> argparse.ArgumentParser:
    """An app's command line; with `slots` (what its work slots are), also how long a request waits for one."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads: the worker's share, not nproc")
    if slots is not None:
        parser.add_argument("--queue-wait-s", type=float, default=QUEUE_WAIT_S, help=f"longest wait for a {slots} slot")
    return parser


def serve(app: FastAPI, host: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
