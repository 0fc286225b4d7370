"""vision-ocr on a GPU: a vision-language model served by vLLM, behind the same /ocr as Tesseract.

vLLM is a program of its own here (`vllm serve ...` from its own virtualenv: it pins other torch
and fastapi versions than rma), so this app starts it as a child on a free loopback port, its
output going to this service's log, and answers on the service port:

* /health: 503 while vLLM loads the model, 200 once vLLM's own /health answers (and while it
  does). When vLLM exits, 503 with the reason for a moment, then this app exits too, so the
  worker restarts the service and, after a crash loop, the coordinator places it elsewhere.
* POST /ocr: the Tesseract app's upload (image or PDF, same limits) and the same answer shape,
  so document-processing works with either engine. Each page goes to the model as a PNG in an
  OpenAI chat message with a transcription prompt, at temperature 0. A VLM gives neither boxes
  nor confidences, so every line's `box` and `confidence` are null; Tesseract's `lang` is not
  used (the model reads the languages it knows).
* /v1/...: vLLM's OpenAI API passed through unchanged, streams included, so clients can send
  chat with image content themselves.

Nothing is served before vLLM is ready: /ocr and /v1 answer 503 until then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.background import BackgroundTask

from rma.routing.proxy import HOP_BY_HOP, answer_headers
from rma.services.apps.common import LOAD_FAILED_EXIT, ApiError, api_app, arguments, log, serve
from rma.services.apps.ocr import MAX_BODY_BYTES, read_upload
from rma.services.base import HEALTH_TIMEOUT_S, free_port, http_ok

PROMPT = ("Transcribe all the text in this image exactly as it is written, line by line, keeping the line breaks. "
          "Answer with the text only.")
POLL_S = 0.5  # how soon a loaded model shows as ready
EXIT_GRACE_S = 2.0  # after vLLM exits, /health says why for this long before the app exits
STOP_TIMEOUT_S = 8.0  # vLLM's time to free the GPU on TERM: within the worker's own 10 s before KILL
READ_TIMEOUT_S = 300.0  # a whole page's transcription; the routers wait as long for vision-ocr
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}  # httpx sets both for the child


class VllmServer:
    """The `vllm serve` child: started and stopped with the app, and watched while it runs."""

    def __init__(self, command: Sequence[str]) -> None:
        self.port = free_port("127.0.0.1")  # vLLM serves this app only
        self.command = (*command, "--host", "127.0.0.1", "--port", str(self.port))
        self.what = " ".join((Path(command[0]).name, *command[1:3]))  # "vllm serve <model>"
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}",
                                        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=HEALTH_TIMEOUT_S))
        self.model: str | None = None  # the id vLLM serves, known once it is ready
        self.failure: str | None = None
        self.since = time.monotonic()
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        log.info("starting %s", " ".join(self.command))
        self._proc = await asyncio.create_subprocess_exec(*self.command, stdin=asyncio.subprocess.DEVNULL)
        self._watcher = asyncio.create_task(self._watch(self._proc))

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for the model to load, then for vLLM to exit; then say why and end the app."""
        exited = asyncio.ensure_future(proc.wait())
        while not exited.done():
            if await http_ok("127.0.0.1", self.port, "/health"):
                self.model = await self._served_model()
            if self.model is not None:
                log.info("%s ready in %.1fs, serving %s", self.what, time.monotonic() - self.since, self.model)
                break
            await asyncio.wait({exited}, timeout=POLL_S)
        await exited
        when = "" if self.model else " before it was ready"
        self.failure = f"{self.what} exited with code {proc.returncode}{when}"
        log.error("%s; exiting (its output is above)", self.failure)
        await asyncio.sleep(EXIT_GRACE_S)
        os._exit(1 if self.model else LOAD_FAILED_EXIT)  # no cleanup to wait for: the child is gone

    async def _served_model(self) -> str | None:
        try:
            answer = await self.client.get("/v1/models", timeout=HEALTH_TIMEOUT_S)
            answer.raise_for_status()
            return str(answer.json()["data"][0]["id"])
        except (httpx.HTTPError, ValueError, LookupError, TypeError):
            return None

    def ready(self) -> str:
        """The served model's id; ApiError 503 until vLLM has loaded it."""
        if self.model is None or self.failure:
            raise ApiError(503, self.failure or f"{self.what} is still loading")
        return self.model

    async def health(self) -> JSONResponse:
        if self.failure:
            return JSONResponse({"status": "failed", "reason": self.failure}, 503)
        if self.model is None:
            waited = time.monotonic() - self.since
            return JSONResponse({"status": "loading", "reason": f"{self.what} loading for {waited:.0f}s"}, 503)
        if not await http_ok("127.0.0.1", self.port, "/health"):
            return JSONResponse({"status": "unhealthy", "reason": f"{self.what} does not answer its /health"}, 503)
        return JSONResponse({"status": "ok", "model": self.model})

    async def stop(self) -> None:
        """TERM vLLM, give it STOP_TIMEOUT_S, then KILL whatever is left of it (its engine processes too)."""
        if self._watcher is not None:
            self._watcher.cancel()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                started = psutil.Process(proc.pid).children(recursive=True)  # vLLM's engine processes
            except psutil.Error:
                started = []
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            for child in started:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await self.client.aclose()


def png_data_url(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


async def transcribe(server: VllmServer, model: str, number: int, image: Image.Image) -> dict[str, Any]:
    """One page read by the model, as the Tesseract app answers it (lines without boxes or confidence)."""
    page = {"type": "image_url", "image_url": {"url": await run_in_threadpool(png_data_url, image)}}
    message = {"role": "user", "content": [{"type": "text", "text": PROMPT}, page]}
    body = {"model": model, "temperature": 0, "messages": [message]}
    try:
        answer = await server.client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        raise ApiError(502, f"{server.what} did not answer page {number}: {type(exc).__name__}") from exc
    if answer.status_code != 200:  # a 4xx is about the page (say, more image tokens than MAX_MODEL_LEN)
        raise ApiError(422 if answer.status_code < 500 else 502,
                       f"{server.what} answered {answer.status_code} for page {number}: {answer.text[:300]}")
    text = (answer.json()["choices"][0]["message"]["content"] or "").strip()
    lines = [{"text": line.strip(), "box": None, "confidence": None} for line in text.splitlines() if line.strip()]
    return {"page": number, "text": text, "lines": lines}


def create_app(command: Sequence[str]) -> FastAPI:
    server = VllmServer(command)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = api_app("vision-ocr", lifespan, MAX_BODY_BYTES)

    @app.get("/health")
    async def health() -> JSONResponse:
        return await server.health()

    @app.post("/ocr")
    async def ocr(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        model = server.ready()
        images = await read_upload(file)
        pages = await asyncio.gather(*(transcribe(server, model, n, image) for n, image in enumerate(images, start=1)))
        return {"text": "\n\n".join(p["text"] for p in pages), "pages": pages}

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def openai(request: Request) -> StreamingResponse:
        """vLLM's own answer, streamed back as it comes (server-sent events included)."""
        server.ready()
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in NOT_FORWARDED]
        outgoing = server.client.build_request(request.method, url, headers=headers, content=await request.body())
        try:
            answer = await server.client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            raise ApiError(502, f"{server.what} did not answer: {type(exc).__name__}") from exc
        back = {k.decode("latin-1"): v.decode("latin-1")
                for k, v in answer_headers([(k.lower(), v) for k, v in answer.headers.raw])}
        return StreamingResponse(answer.aiter_raw(), answer.status_code, back, background=BackgroundTask(answer.aclose))

    return app


def main() -> None:
    parser = arguments("OCR and OpenAI chat with images from a vision-language model that vLLM serves")
    parser.add_argument("command", nargs="+", help="after `--`: vLLM's command, `vllm serve MODEL ...`; "
                                                   "this app adds --host and --port")
    args = parser.parse_args()
    serve(create_app(args.command), args.host, args.port)


if __name__ == "__main__":
    main()
