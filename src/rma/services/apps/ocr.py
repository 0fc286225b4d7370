"""vision-ocr on CPU: Tesseract (through pytesseract) over uploaded images and PDFs.

Uploads are decoded a page at a time in children held to a budget (rma.services.apps.page_images),
never in the app, within pixel limits checked before decoding. Each page is read with one Tesseract
thread and pages run side by side up to the worker's CPU share, which beats Tesseract's own OpenMP
threading on small pages; a page waits for a slot no longer than --queue-wait-s (then 503), and
/health says busy (429) while every slot has been taken for a while.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from rma.services.apps.common import QUEUE_WAIT_S, ApiError, Loaded, Slots, arguments, build_app, serve
from rma.services.apps.page_images import Page, page_image, pages_in

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 2**16  # the upload and its multipart framing
REQUEST_TIMEOUT_S = 240.0  # decoding and Tesseract, all pages: inside the routers' 300 s for vision-ocr


@dataclass(frozen=True)
class Tesseract:
    version: str
    languages: frozenset[str]


def load_tesseract() -> Tesseract:
    import pytesseract

    found = Tesseract(str(pytesseract.get_tesseract_version()), frozenset(pytesseract.get_languages(config="")))
    # A one-pixel image through a decoding child: /health turns 200 only once decoding works here.
    with Upload(b"P1 1 1 0") as upload:
        os.remove(page_image(upload.path, 0, time.monotonic() + REQUEST_TIMEOUT_S).path)
    return found


class Upload:
    """An upload saved in a folder of its own, where its pages are written; the folder goes on exit."""

    def __init__(self, data: bytes) -> None:
        self.folder = tempfile.mkdtemp(prefix="vision-ocr-")
        self.path = os.path.join(self.folder, "upload")
        with open(self.path, "wb") as out:
            out.write(data)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *_: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


async def upload_bytes(file: UploadFile) -> bytes:
    """The uploaded file's bytes, within the size limit (ApiError if not)."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ApiError(413, f"file over {MAX_UPLOAD_BYTES} bytes", "file")
    if not data:
        raise ApiError(400, "the file is empty", "file")
    return data


def decode_all(data: bytes) -> list[Image.Image]:
    """Every page of the upload, decoded one at a time and then held together (as vlm_ocr sends them)."""
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    with Upload(data) as upload:
        images = []
        for index in range(pages_in(upload.path, deadline)):
            with Image.open(page_image(upload.path, index, deadline).path) as image:
                images.append(image.convert("RGB"))
        return images


async def read_upload(file: UploadFile) -> list[Image.Image]:
    """The uploaded image or PDF as RGB page images, all at once, within the size, page and pixel limits."""
    return await run_in_threadpool(decode_all, await upload_bytes(file))


def read_page(page: Page, lang: str, deadline: float) -> dict[str, Any]:
    """One page: its lines with boxes [x, y, w, h] in pixels and a 0-1 confidence (and, for a PDF page, the dpi
    those pixels are at); ApiError 422 where Tesseract fails or runs past the request's time limit."""
    import pytesseract

    late = ApiError(422, f"page {page.number} was not read within the {REQUEST_TIMEOUT_S:g} s time limit", "file")
    timeout = deadline - time.monotonic()
    if timeout <= 0:
        raise late
    try:
        words = pytesseract.image_to_data(page.path, lang=lang, output_type=pytesseract.Output.DICT, timeout=timeout)
    except pytesseract.TesseractError as exc:
        raise ApiError(422, f"page {page.number}: Tesseract could not read it: {exc.message}", "file") from exc
    except RuntimeError as exc:
        if str(exc) != "Tesseract process timeout":  # pytesseract's, once it has killed Tesseract
            raise
        raise late from exc
    finally:
        os.remove(page.path)
    lines: dict[tuple[int, int, int], list[int]] = {}
    for i, text in enumerate(words["text"]):
        if text.strip() and float(words["conf"][i]) >= 0:
            lines.setdefault((words["block_num"][i], words["par_num"][i], words["line_num"][i]), []).append(i)
    out, paragraphs = [], []
    for (block, par, _), members in lines.items():
        left = min(words["left"][i] for i in members)
        top = min(words["top"][i] for i in members)
        right = max(words["left"][i] + words["width"][i] for i in members)
        bottom = max(words["top"][i] + words["height"][i] for i in members)
        text = " ".join(words["text"][i] for i in members)
        confidence = sum(float(words["conf"][i]) for i in members) / len(members) / 100
        out.append({"text": text, "box": [left, top, right - left, bottom - top], "confidence": round(confidence, 3)})
        paragraphs.append(((block, par), text))
    page_text = ""
    for index, (key, text) in enumerate(paragraphs):
        new_paragraph = index > 0 and paragraphs[index - 1][0] != key
        page_text += ("\n\n" if new_paragraph else "\n" if index else "") + text
    answer: dict[str, Any] = {"page": page.number, "text": page_text, "lines": out}
    if page.dpi is not None:
        answer["dpi"] = page.dpi
    if page.note is not None:
        answer["note"] = page.note
    return answer


def create_app(threads: int, queue_wait_s: float = QUEUE_WAIT_S) -> Any:
    loaded = Loaded("tesseract", load_tesseract)
    reading = Slots(threads, queue_wait_s, "page")  # pages decoded and read at once, across requests
    app = build_app("vision-ocr", loaded, MAX_BODY_BYTES, reading)

    def decode_and_read(upload: Upload, index: int, lang: str, deadline: float,
                        stop: threading.Event) -> dict[str, Any]:
        if stop.is_set():
            raise ApiError(422, f"page {index + 1} was not read: another page was refused", "file")
        return read_page(page_image(upload.path, index, deadline), lang, deadline)

    async def read(upload: Upload, index: int, lang: str, deadline: float, stop: threading.Event) -> dict[str, Any]:
        async with reading.take():
            return await run_in_threadpool(decode_and_read, upload, index, lang, deadline, stop)

    @app.post("/ocr")
    async def ocr(file: Annotated[UploadFile, File()],
                  lang: Annotated[str, Query(max_length=64)] = "eng") -> dict[str, Any]:
        tesseract = loaded.get()
        unknown = set(lang.split("+")) - tesseract.languages
        if unknown:
            raise ApiError(400, f"language {', '.join(sorted(unknown))} not installed; have "
                                f"{', '.join(sorted(tesseract.languages))}", "lang")
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        with Upload(await upload_bytes(file)) as upload:
            count = await run_in_threadpool(pages_in, upload.path, deadline)
            stop = threading.Event()
            tasks = [asyncio.ensure_future(read(upload, index, lang, deadline, stop)) for index in range(count)]
            try:
                pages = await asyncio.gather(*tasks)
            finally:  # a page refused: pages not begun stop, pages in flight (threads) run out, then the folder goes
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        return {"text": "\n\n".join(p["text"] for p in pages), "pages": pages}

    return app


def main() -> None:
    args = arguments("OCR of images and PDFs with Tesseract", "page").parse_args()
    serve(create_app(args.threads, args.queue_wait_s), args.host, args.port)


if __name__ == "__main__":
    main()
