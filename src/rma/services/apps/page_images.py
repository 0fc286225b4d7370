"""Uploaded images and PDFs as page images, decoded one page at a time where a hostile file cannot hurt.

Pillow and PDFium read the upload in children held to a budget (rma.services.apps.budget): one to
open it and count its pages, then one per page, which writes that page as a PNG for Tesseract. A
file that makes PDFium abort, spin for minutes or ask for gigabytes ends its child, not the app, and
is answered with a 4xx JSON error. Before a page is decoded its size is checked against the pixel
limits: an image's from its header (refused past them), a PDF page's from its box (rendered at a
lower dpi to fit, with a note saying so).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from rma.services.apps.budget import Budget, run_bounded
from rma.services.apps.common import ApiError

log = logging.getLogger("rma.apps.ocr")
T = TypeVar("T")

MAX_PAGES = 20
# Pixels per page: a 48 MP phone photo (8064 x 6048) or a 600 dpi A4 scan (34.8 M) passes; a 300 dpi A4
# scan is 8.7 M. An RGB page this size is 150 MB decoded and about 550 MB in Tesseract.
MAX_PIXELS = 50_000_000
MAX_SIDE = 32_767  # pixels a side: Tesseract refuses a wider or taller image ("Image too large")
PDF_DPI = 200  # Tesseract reads body text best at 200-300 dpi; 200 keeps a page under a second
MAX_PAGE_POINTS = 14_400  # a PDF page's side, in units: PDF's own limit (200 inches; ISO 32000-1, annex C)
# To open the file or decode one page: a page at MAX_PIXELS needs well under 1 GB and about 2 s.
DECODE_BUDGET = Budget(memory_mb=2048, cpu_s=20, wall_s=20.0)
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "PPM")
SUPPORTED = "send PNG, JPEG, TIFF, BMP, GIF, WebP or PDF"


@dataclass(frozen=True)
class Page:
    """A decoded page: the PNG file Tesseract reads and, for a PDF page, the resolution it was rendered at."""

    number: int
    path: str
    dpi: float | None = None
    note: str | None = None


def check_pixels(width: int, height: int, what: str) -> None:
    """ApiError 413 for a page over the pixel limits, from its declared size, before it is decoded."""
    if width * height > MAX_PIXELS:
        raise ApiError(413, f"{what} is {width} x {height} = {width * height:,} pixels, over the limit of "
                            f"{MAX_PIXELS:,}", "file")
    if max(width, height) > MAX_SIDE:
        raise ApiError(413, f"{what} is {width} x {height} pixels, over the limit of {MAX_SIDE} a side", "file")


def render_scale(width: float, height: float, number: int) -> tuple[float, str | None]:
    """The scale to render a page of `width` x `height` points at: PDF_DPI, or less where that would pass the
    pixel limits (with a note saying so). The bitmap is ceil(width * scale) x ceil(height * scale)."""
    if not (0 < width < math.inf and 0 < height < math.inf):
        raise ApiError(400, f"page {number} has no area ({width} x {height} points)", "file")
    if max(width, height) > MAX_PAGE_POINTS:
        raise ApiError(413, f"page {number} is {width:g} x {height:g} points, over PDF's limit of "
                            f"{MAX_PAGE_POINTS} a side", "file")
    area, edges = width * height, width + height
    # The largest scale s with (width * s + 1) * (height * s + 1) <= MAX_PIXELS: the rounded-up bitmap fits.
    fits = (math.sqrt(edges * edges + 4 * area * (MAX_PIXELS - 1)) - edges) / (2 * area)
    scale = min(PDF_DPI / 72, fits, MAX_SIDE / max(width, height))
    if scale == PDF_DPI / 72:
        return scale, None
    return scale, (f"rendered at {scale * 72:.3g} dpi, not {PDF_DPI}: the page is {width / 72:.3g} x "
                   f"{height / 72:.3g} inches, and the limit is {MAX_PIXELS:,} pixels and {MAX_SIDE} a side")


def open_pictures(path: str) -> tuple[Image.Image, int]:
    """An image file opened from its header alone, and its frame count (its pages), within MAX_PAGES."""
    image = Image.open(path, formats=IMAGE_FORMATS)
    # Frames are counted one seek at a time up to one past the limit, where n_frames would walk all of them
    # (a 17 MB TIFF of 150,000 frames takes minutes to count).
    count = 1
    try:
        while count <= MAX_PAGES:
            image.seek(count)
            count += 1
    except EOFError:
        pass
    if count > MAX_PAGES:
        raise ApiError(413, f"over {MAX_PAGES} pages (frames), at most {MAX_PAGES}", "file")
    return image, count


def open_pdf(path: str) -> tuple[Any, int]:
    """A PDF (a pypdfium2 document) and its page count, within MAX_PAGES."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(path)
    if len(pdf) == 0:
        raise ApiError(400, "the PDF has no pages", "file")
    if len(pdf) > MAX_PAGES:
        raise ApiError(413, f"{len(pdf)} pages, at most {MAX_PAGES}", "file")
    return pdf, len(pdf)


def is_pdf(path: str) -> bool:
    with open(path, "rb") as head:
        return head.read(4) == b"%PDF"


def count_pages(path: str) -> int:
    """In a child: the upload's page count (images' frames, a PDF's pages)."""
    return (open_pdf(path) if is_pdf(path) else open_pictures(path))[1]


def write_page(path: str, index: int) -> Page:
    """In a child: page `index` (from 0) of the upload at `path`, written as a PNG beside it."""
    out = f"{path}-page-{index + 1}.png"
    if not is_pdf(path):
        image, count = open_pictures(path)
        image.seek(index)
        check_pixels(*image.size, f"the image (page {index + 1})" if count > 1 else "the image")
        (image if image.mode in ("1", "L") else image.convert("RGB")).save(out, "PNG", compress_level=1)
        return Page(index + 1, out)
    pdf, _ = open_pdf(path)
    page = pdf[index]
    width, height = page.get_size()
    scale, note = render_scale(width, height, index + 1)
    page.render(scale=scale).to_pil().save(out, "PNG", compress_level=1)
    return Page(index + 1, out, round(scale * 72, 1), note)


def refusal(exc: Exception) -> ApiError:
    """What Pillow or PDFium raised, as the 4xx it is: the file is at fault (an exception no reader is known to
    raise is also logged, in full)."""
    import pypdfium2 as pdfium

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnidentifiedImageError):
        return ApiError(415, f"not an image or PDF this service reads; {SUPPORTED}", "file")
    if isinstance(exc, Image.DecompressionBombError):
        return ApiError(413, f"the image is over the limit of {MAX_PIXELS:,} pixels: {exc}", "file")
    if isinstance(exc, pdfium.PdfiumError):
        return ApiError(400, f"corrupt or encrypted PDF: {exc}", "file")
    if not isinstance(exc, (OSError, SyntaxError, ValueError, TypeError, EOFError)):
        log.warning("%s decoding an upload", type(exc).__name__, exc_info=exc)
    return ApiError(400, f"corrupt or unreadable file ({type(exc).__name__}: {exc})", "file")


def decoding(work: Callable[..., T]) -> Callable[[tuple[object, ...]], T]:
    """`work(*arguments)` as a child runs it: Pillow's limits set, and what a reader raises made a 4xx."""
    def child(arguments: tuple[object, ...]) -> T:
        # Pillow's own check at open raises DecompressionBombError past twice its limit: past MAX_PIXELS. It only
        # warns below that, where check_pixels refuses the image before it loads. Its other warnings are about a
        # corrupt file (EXIF, tags), which is answered as such or read regardless.
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
        warnings.simplefilter("ignore")
        try:
            return work(*arguments)
        except MemoryError:
            raise
        except Exception as exc:
            raise refusal(exc) from None

    return child


def within(deadline: float, what: str) -> Budget:
    """DECODE_BUDGET, its wall time cut to what is left of the request's (ApiError 422 if nothing is)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ApiError(422, f"{what} was not reached within the request's time limit", "file")
    return Budget(DECODE_BUDGET.memory_mb, DECODE_BUDGET.cpu_s, min(DECODE_BUDGET.wall_s, left))


def pages_in(path: str, deadline: float) -> int:
    """How many pages the upload saved at `path` has (blocking: call it off the event loop)."""
    return run_bounded(decoding(count_pages), (path,), within(deadline, "opening the file"), "opening the file")


def page_image(path: str, index: int, deadline: float) -> Page:
    """Page `index` of the upload at `path` as a PNG file beside it, which the caller removes once read."""
    what = f"page {index + 1}"
    return run_bounded(decoding(write_page), (path, index), within(deadline, what), what)
