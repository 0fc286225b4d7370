"""document-processing: PDF, DOCX and plain text → {text, markdown, pages, metadata, warnings}.

The parsing itself is rma.services.apps.parsing. A PDF page without a text layer (a scanned
letter) goes to vision-ocr as a one-page PDF, through a load balancer the coordinator lists
(rma.services.apps.peers). When vision-ocr is not covered, or fails, the page says why in its
`note` and in `warnings`: never a silent empty page. What cannot be parsed gets a 4xx JSON error.

Each parse runs in a child held to a budget (rma.services.apps.budget: memory, CPU and wall time)
after cheap checks of what the file declares (pages, inflated size, XML elements), so a bomb costs
the app one refused request, not its memory or its other users' time.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
from fastapi import File, UploadFile
from fastapi.concurrency import run_in_threadpool

from rma.front import client_context
from rma.services.apps.budget import Budget, run_bounded
from rma.services.apps.common import QUEUE_WAIT_S, ApiError, Loaded, Slots, arguments, build_app, serve
from rma.services.apps.parsing import Page, load_parsers, parse_document
from rma.services.apps.peers import Peers, PeerUnavailable

MAX_UPLOAD_BYTES = 25 * 2**20
PARSE_BUDGET = Budget(memory_mb=1024, cpu_s=30, wall_s=30.0)  # one parse: a normal letter needs < 100 MB, < 1 s
OCR_PARALLEL = 4  # scanned pages in flight to vision-ocr at once, per replica of this service
OCR_TIMEOUT_S = 120.0


def error_message(answer: httpx.Response) -> str:
    """The reason in a JSON error from vision-ocr ({"error": {"message"}}) or a router ({"error", "reason"})."""
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", error))
    return "; ".join(str(part) for part in (error, body.get("reason")) if part) if isinstance(body, dict) else ""


def create_app(threads: int, coordinator_urls: list[str], budget: Budget = PARSE_BUDGET,
               queue_wait_s: float = QUEUE_WAIT_S) -> Any:
    loaded = Loaded("pypdf and python-docx", load_parsers)
    # One parse per CPU thread at once: each is a child process held to PARSE_BUDGET.
    parsing = Slots(threads, queue_wait_s, "parse")
    app = build_app("document-processing", loaded, MAX_UPLOAD_BYTES + 2**16, parsing)
    client = httpx.AsyncClient(timeout=httpx.Timeout(OCR_TIMEOUT_S, connect=5.0), verify=client_context())
    peers = Peers(coordinator_urls, client)
    reading = asyncio.Semaphore(OCR_PARALLEL)

    async def read(base: str, page: Page) -> None:
        scan = (f"page-{page.number}.pdf", page.scan or b"", "application/pdf")
        async with reading:
            try:
                answer = await client.post(f"{base}/ocr", files={"file": scan})
            except httpx.HTTPError as exc:
                page.unread(f"no text layer, and vision-ocr could not be reached ({type(exc).__name__})")
                return
        if answer.status_code != 200:
            page.unread(f"no text layer, and vision-ocr answered {answer.status_code}: {error_message(answer)}")
            return
        try:
            text = str(answer.json()["text"]).strip()
        except (ValueError, KeyError, TypeError):
            page.unread("no text layer, and vision-ocr's answer had no text field")
            return
        page.text, page.source, page.note = text, "ocr", None if text else "scanned page: vision-ocr found no text"

    async def read_scans(scans: list[Page]) -> None:
        try:
            base = await peers.base_url("vision-ocr")
        except PeerUnavailable as exc:
            for page in scans:
                page.unread(f"no text layer, and OCR is unavailable: {exc}")
            return
        await asyncio.gather(*(read(base, page) for page in scans))

    @app.post("/parse")
    async def parse(file: Annotated[UploadFile, File()]) -> dict[str, Any]:
        loaded.get()
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"file over {MAX_UPLOAD_BYTES} bytes", "file")
        if not data.strip():
            raise ApiError(400, "the file is empty", "file")
        async with parsing.take():
            parsed = await run_in_threadpool(run_bounded, parse_document, data, budget, "parsing the file")
        scans = [page for page in parsed.pages if page.scan is not None]
        if scans:
            await read_scans(scans)
        answer = parsed.answer()
        if file.filename:
            answer["metadata"]["filename"] = file.filename
        return answer

    return app


def main() -> None:
    parser = arguments("Text and structure of PDF, DOCX and text files; scanned pages through vision-ocr", "parse")
    parser.add_argument("--coordinator-url", default="", help="comma-separated: where to look up vision-ocr")
    parser.add_argument("--parse-memory-mb", type=int, default=PARSE_BUDGET.memory_mb, help="one parse's memory")
    parser.add_argument("--parse-cpu-s", type=int, default=PARSE_BUDGET.cpu_s, help="one parse's CPU time")
    parser.add_argument("--parse-wall-s", type=float, default=PARSE_BUDGET.wall_s, help="one parse's wall time")
    args = parser.parse_args()
    urls = [url for url in args.coordinator_url.split(",") if url]
    budget = Budget(args.parse_memory_mb, args.parse_cpu_s, args.parse_wall_s)
    serve(create_app(args.threads, urls, budget, args.queue_wait_s), args.host, args.port)


if __name__ == "__main__":
    main()
