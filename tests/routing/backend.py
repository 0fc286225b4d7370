"""A real HTTP backend for routing tests, optionally playing the worker protocol for one service.

Run: python backend.py PORT NAME [COORDINATOR_URL SERVICE]. With a coordinator it registers as
worker NAME and beats every 0.5 s reporting SERVICE healthy on PORT, so `kill -9` of this one
process is the crash of a whole worker: the service and its heartbeats stop together.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rma.front import client_context

PORT, NAME = int(sys.argv[1]), sys.argv[2]
COORDINATOR, SERVICE = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
KB = b"x" * 1024


async def play_worker() -> None:
    async with httpx.AsyncClient(base_url=COORDINATOR or "", timeout=2, trust_env=False,
                                 verify=client_context()) as client:
        caps = {"worker_type": "cpu", "engines": ["spacy", "rma-notes-coa"], "cpu_cores": 4, "ram_mb": 8000}
        answer = (await client.post("/api/worker/register", json={
            "worker_id": NAME, "advertise_host": "127.0.0.1", "capabilities": caps})).json()
        headers = {"authorization": f"Bearer {answer['worker_token']}"}
        beat = {"worker_id": NAME, "services_status": {SERVICE: {"state": "healthy", "port": PORT}}}
        while True:
            with contextlib.suppress(httpx.HTTPError):
                await client.post("/api/worker/heartbeat", json=beat, headers=headers)
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    task = asyncio.create_task(play_worker()) if COORDINATOR else None
    yield
    if task:
        task.cancel()


async def health(request: Request) -> Response:
    return JSONResponse({"status": "healthy", "name": NAME})


async def echo(request: Request) -> Response:
    body = await request.body()
    info = {"name": NAME, "method": request.method, "path": request.url.path,
            "raw_path": request.scope["raw_path"].decode(), "query": request.scope["query_string"].decode(),
            "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]], "body": body.decode()}
    return Response(json.dumps(info), media_type="application/json",
                    headers={"x-backend": NAME, "x-custom": "kept"})


async def status(request: Request) -> Response:
    code = int(request.path_params["code"])
    response = Response(f"status {code} from {NAME}", status_code=code, headers={"x-backend": NAME})
    response.headers.append("set-cookie", "a=1")
    response.headers.append("set-cookie", "b=2")
    return response


async def kb(request: Request) -> Response:
    return Response(KB, media_type="application/octet-stream", headers={"x-backend": NAME})


async def events(request: Request) -> Response:
    count, gap = int(request.query_params.get("n", "5")), float(request.query_params.get("gap", "0.3"))

    async def stream() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"data: event {i}\n\n".encode()
            await asyncio.sleep(gap)

    return StreamingResponse(stream(), media_type="text/event-stream")


async def upload(request: Request) -> Response:
    digest, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"bytes": size, "sha256": digest.hexdigest(), "name": NAME})


app = Starlette(routes=[
    Route("/health", health),
    Route("/status/{code:int}", status, methods=["GET", "POST", "HEAD"]),
    Route("/kb", kb),
    Route("/events", events),
    Route("/upload", upload, methods=["POST", "PUT"]),
    Route("/{path:path}", echo, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", loop="uvloop", http="httptools")
