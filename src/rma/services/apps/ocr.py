"""vision-ocr on CPU: Tesseract (through pytesseract) over uploaded images and PDFs.

PDF pages are rendered with pypdfium2 (a self-contained wheel: no poppler to install). Each
page is read with one Tesseract thread and pages run side by side up to the worker's CPU share,
which beats Tesseract's own OpenMP threading on small pages.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from PIL import Image, UnidentifiedImageError

from rma.services.apps.common import ApiError, Loaded, arguments, build_app, serve

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 2**16  # the upload and its multipart framing
MAX_PAGES = 20
MAX_PIXELS = 60_000_000  # per page: a larger "image" is a decompression bomb, not a scan
PDF_DPI = 200  # Tesseract reads body text best at 200-300 dpi; 200 keeps a page under a second
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "PPM"})
SUPPORTED = "send PNG, JPEG, TIFF, BMP, GIF, WebP or PDF"

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class Tesseract:
    version: str
    languages: frozenset[str]


def load_tesseract() -> Tesseract:
    import pytesseract

    return Tesseract(str(pytesseract.get_tesseract_version()), frozenset(pytesseract.get_languages(config="")))


def pages_of(data: bytes) -> list[Image.Image]:
    """The upload as page images; ApiError for what is not a readable image or PDF."""
    if data.startswith(b"%PDF"):
        return pdf_pages(data)
    try:
        image = Image.open(io.BytesIO(data))
        kind = image.format or ""
        if kind not in IMAGE_FORMATS:
            raise ApiError(415, f"unsupported image format {kind or 'unknown'}; {SUPPORTED}", "file")
        frames = getattr(image, "n_frames", 1)
        if frames > MAX_PAGES:
            raise ApiError(413, f"{frames} pages, at most {MAX_PAGES}")
        pages = []
        for index in range(frames):
            image.seek(index)
            pages.append(image.convert("RGB"))
        return pages
    except UnidentifiedImageError as exc:
        raise ApiError(415, f"not an image or PDF; {SUPPORTED}", "file") from exc
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"image over {MAX_PIXELS} pixels", "file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ApiError(400, f"corrupt image: {exc}", "file") from exc


def pdf_pages(data: bytes) -> list[Image.Image]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise ApiError(400, f"corrupt or encrypted PDF: {exc}", "file") from exc
    try:
        if len(pdf) == 0:
            raise ApiError(400, "the PDF has no pages", "file")
        if len(pdf) > MAX_PAGES:
            raise ApiError(413, f"{len(pdf)} pages, at most {MAX_PAGES}", "file")
        return [page.render(scale=PDF_DPI / 72).to_pil().convert("RGB") for page in pdf]
    finally:
        pdf.close()


async def read_upload(file: UploadFile) -> list[Image.Image]:
    """The uploaded image or PDF as page images, within the size and page limits (ApiError if not)."""
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise ApiError(413, f"file over {MAX_UPLOAD_BYTES} bytes", "file")
    if not data:
        raise ApiError(400, "the file is empty", "file")
    return await run_in_threadpool(pages_of, data)


def read_page(number: int, image: Image.Image, lang: str) -> dict[str, Any]:
    """One page: its lines with boxes [x, y, w, h] in pixels and a 0-1 confidence."""
    import pytesseract

    words = pytesseract.image_to_data(image, lang=lang, output_type=pytesseract.Output.DICT)
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
    return {"page": number, "text": page_text, "lines": out}


def create_app(threads: int) -> Any:
    loaded = Loaded("tesseract", load_tesseract)
    app = build_app("vision-ocr", loaded, MAX_BODY_BYTES)
    parallel = asyncio.Semaphore(threads)

    async def page(number: int, image: Image.Image, lang: str) -> dict[str, Any]:
        async with parallel:
            return await run_in_threadpool(read_page, number, image, lang)

    @app.post("/ocr")
    async def ocr(file: Annotated[UploadFile, File()],
                  lang: Annotated[str, Query(max_length=64)] = "eng") -> dict[str, Any]:
        tesseract = loaded.get()
        unknown = set(lang.split("+")) - tesseract.languages
        if unknown:
            raise ApiError(400, f"language {', '.join(sorted(unknown))} not installed; have "
                                f"{', '.join(sorted(tesseract.languages))}", "lang")
        images = await read_upload(file)
        pages = await asyncio.gather(*(page(n, image, lang) for n, image in enumerate(images, start=1)))
        return {"text": "\n\n".join(p["text"] for p in pages), "pages": pages}

    return app


def main() -> None:
    args = arguments("OCR of images and PDFs with Tesseract").parse_args()
    serve(create_app(args.threads), args.host, args.port)


if __name__ == "__main__":
    main()
