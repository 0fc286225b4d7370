"""vision-ocr as the worker starts it: Tesseract on images and PDFs the test renders, and bad uploads.

The hostile files (tests/services/hostile_files.py) are made on the spot: images and PDFs that declare far
more pixels than they hold, PDFs that take minutes or gigabytes to render, and a seeded corpus of truncated
and bit-flipped files. One more app runs with a single slot, to see /health say busy.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image, ImageDraw, ImageFont

from procs import wait_until
from rma.services.apps.page_images import DECODE_BUDGET, MAX_PAGE_POINTS, MAX_PAGES, MAX_PIXELS, MAX_SIDE
from services import hostile_files as hostile
from services.driven import driven_service
from services.hostile_checks import engine_app, served_meanwhile

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
LETTER = ("Dear Ms Patel", "Your council tax balance is 412.50 GBP", "Please pay by 14 March 2025")


def letter(kind: str = "PNG", pages: int = 1) -> bytes:
    """A short letter with an amount and a date, drawn at about 200 dpi."""
    font = ImageFont.load_default(size=36)
    images = []
    for _ in range(pages):
        image = Image.new("RGB", (1400, 500), "white")
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(LETTER):
            draw.text((80, 80 + row * 110), line, fill="black", font=font)
        images.append(image)
    out = io.BytesIO()
    images[0].save(out, kind, save_all=pages > 1, append_images=images[1:], resolution=200.0)
    return out.getvalue()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's TMPDIR: where its decoders and Tesseract leave files, if they leave any."""
    return tmp_path_factory.mktemp("ocr-tmp")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, scratch: Path) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TMPDIR", str(scratch))
        with driven_service("vision-ocr", tmp_path_factory.mktemp("ocr"), "/health", 60,
                            {"OMP_NUM_THREADS": "2"}) as url:
            yield url


def app_process(url: str) -> psutil.Process:
    port = int(url.rsplit(":", 1)[1])
    return psutil.Process(next(c.pid for c in psutil.net_connections("inet")
                               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN))


def peak_growth(app: psutil.Process, action: Callable[[], httpx.Response]) -> tuple[httpx.Response, int, float]:
    """`action`'s answer, with how far the app's own RSS rose above its start while it ran, and its seconds."""
    start = app.memory_info().rss
    peak, done = [start], threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], app.memory_info().rss)

    watcher = threading.Thread(target=watch)
    watcher.start()
    began = time.monotonic()
    try:
        answer = action()
    finally:
        took = time.monotonic() - began
        done.set()
        watcher.join()
    return answer, peak[0] - start, took


def ocr(url: str, data: bytes, name: str = "letter.png", **params: str) -> httpx.Response:
    return httpx.post(f"{url}/ocr", files={"file": (name, data)}, params=params, timeout=60)


def test_an_image_letter_is_read_with_lines_boxes_and_confidence(service: str) -> None:
    answer = ocr(service, letter())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "412.50" in body["text"] and "14 March 2025" in body["text"] and "Patel" in body["text"]
    (page,) = body["pages"]
    assert page["page"] == 1 and len(page["lines"]) == 3
    amount = next(line for line in page["lines"] if "412.50" in line["text"])
    x, y, w, h = amount["box"]
    assert 60 <= x <= 100 and 170 <= y <= 230 and w > 500 and 20 <= h <= 60
    assert 0.5 < amount["confidence"] <= 1


def test_pdf_and_multi_page_tiff_give_one_entry_per_page(service: str) -> None:
    for data, name in ((letter("PDF", pages=2), "letter.pdf"), (letter("TIFF", pages=2), "letter.tiff")):
        answer = ocr(service, data, name)
        assert answer.status_code == 200, answer.text
        assert [p["page"] for p in answer.json()["pages"]] == [1, 2]
        assert all("412.50" in p["text"] for p in answer.json()["pages"])


@pytest.mark.parametrize(("data", "params", "status", "says"), [
    (b"", {}, 400, "empty"),
    (b"hello, not an image", {}, 415, "not an image"),
    (b"%PDF-1.7 truncated garbage", {}, 400, "corrupt"),
    (letter()[:400], {}, 400, "corrupt"),  # a PNG cut short
    (b"x" * (21 * 2**20), {}, 413, "larger than"),
    (None, {"lang": "klingon"}, 400, "not installed"),
])
def test_bad_uploads_get_a_4xx_json_error_and_the_service_stays_up(service: str, data: bytes | None,
                                                                   params: dict[str, str], status: int,
                                                                   says: str) -> None:
    answer = ocr(service, letter() if data is None else data, **params)
    assert answer.status_code == status and says in answer.json()["error"]["message"], answer.text
    assert httpx.get(f"{service}/health", timeout=5).status_code == 200


def test_a_request_without_a_file_is_refused(service: str) -> None:
    answer = httpx.post(f"{service}/ocr", data={"other": "x"}, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"


def test_pages_over_the_limit_are_refused(service: str) -> None:
    answer = ocr(service, letter("PDF", pages=21), "long.pdf")
    assert answer.status_code == 413 and "at most 20" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("width", "height", "says"), [
    (50_000, 50_000, f"over the limit of {MAX_PIXELS:,} pixels"),  # Pillow's own check refuses it at open
    (9_000, 9_000, f"over the limit of {MAX_PIXELS:,} pixels"),  # under Pillow's default limit: it decoded it
    (40_000, 100, f"over the limit of {MAX_SIDE} a side"),  # few pixels, but wider than Tesseract reads
])
def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(service: str, width: int, height: int,
                                                                            says: str) -> None:
    bomb = hostile.png_declaring(width, height)
    assert len(bomb) < 2048
    answer, grew, took = peak_growth(app_process(service), lambda: ocr(service, bomb, "bomb.png"))
    assert answer.status_code == 413 and says in answer.json()["error"]["message"], answer.text
    assert took < 2 and grew < 20 << 20, f"{took:.1f} s, the app grew {grew >> 20} MiB"


def test_a_tiff_of_150000_frames_is_refused_without_counting_them_all(service: str) -> None:
    """Pillow's n_frames walks every frame, quadratically: minutes for these 17 MB."""
    tiff = hostile.tiff_of_frames()
    began = time.monotonic()
    answer = ocr(service, tiff, "frames.tiff")
    assert answer.status_code == 413 and f"at most {MAX_PAGES}" in answer.json()["error"]["message"], answer.text
    assert time.monotonic() - began < 5


def test_a_pdf_page_with_a_huge_mediabox_is_rendered_within_the_pixel_limit_and_says_so(service: str) -> None:
    poster = hostile.drawing_pdf(b"BT /F1 96 Tf 72 72 Td (412.50) Tj ET", (MAX_PAGE_POINTS, MAX_PAGE_POINTS))
    answer, grew, took = peak_growth(app_process(service), lambda: ocr(service, poster, "poster.pdf"))
    assert answer.status_code == 200, answer.text
    (page,) = answer.json()["pages"]
    assert abs(page["dpi"] - MAX_PIXELS ** 0.5 / (MAX_PAGE_POINTS / 72)) < 0.1, page  # 7071 x 7071 pixels
    assert f"not 200: the page is 200 x 200 inches, and the limit is {MAX_PIXELS:,} pixels" in page["note"]
    assert "412.50" in page["text"]
    assert took < 30 and grew < 20 << 20, f"{took:.1f} s, the app grew {grew >> 20} MiB"
    letter_page = ocr(service, hostile.drawing_pdf(hostile.TOTAL_LINE), "letter.pdf").json()["pages"][0]
    assert letter_page["dpi"] == 200 and "note" not in letter_page and letter_page["text"] == "Total 412.50"


def test_a_pdf_page_past_pdfs_own_size_limit_is_refused(service: str) -> None:
    answer = ocr(service, hostile.drawing_pdf(hostile.TOTAL_LINE, (1e9, 1)), "ribbon.pdf")
    assert answer.status_code == 413 and f"over PDF's limit of {MAX_PAGE_POINTS}" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("make", "says"), [
    (hostile.content_bomb, "page 1"),  # past the memory budget: PDFium's allocation fails (422) or is seen (413)
    (hostile.forms_bomb, "page 1"),  # the memory budget or the time limit, whichever PDFium reaches first
    (hostile.fills_bomb, f"page 1 took longer than {DECODE_BUDGET.wall_s:g} s"),
])
def test_a_pdf_that_needs_gigabytes_or_minutes_to_render_is_stopped_and_the_app_stays_up(
        service: str, make: Callable[[], bytes], says: str) -> None:
    app = app_process(service)
    data, small = make(), hostile.drawing_pdf(hostile.TOTAL_LINE)
    with served_meanwhile(lambda: ocr(service, small, "small.pdf"), every_s=0.2):  # on the other slot
        answer, grew, took = peak_growth(app, lambda: ocr(service, data, "bomb.pdf"))
    assert answer.status_code in (413, 422) and says in answer.json()["error"]["message"], answer.text
    assert took < DECODE_BUDGET.wall_s + 5 and grew < 20 << 20, f"{took:.1f} s, the app grew {grew >> 20} MiB"
    assert httpx.get(f"{service}/health", timeout=5).status_code == 200
    assert ocr(service, hostile.drawing_pdf(hostile.TOTAL_LINE), "next.pdf").json()["text"] == "Total 412.50"


def small_files() -> dict[str, bytes]:
    """The fuzzer's seeds: one short line of text in every format the app reads, small enough to read fast."""
    font = ImageFont.load_default(size=28)
    image = Image.new("RGB", (260, 60), "white")
    ImageDraw.Draw(image).text((10, 12), "Total 412.50", fill="black", font=font)
    files = {}
    for kind in ("PNG", "JPEG", "BMP", "GIF", "WEBP", "PPM"):
        out = io.BytesIO()
        image.save(out, kind)
        files[kind] = out.getvalue()
    out = io.BytesIO()
    image.save(out, "TIFF", save_all=True, append_images=[image.convert("L")], compression="tiff_lzw")
    files["TIFF"] = out.getvalue()
    out = io.BytesIO()
    image.save(out, "PDF", resolution=100.0)
    files["PDF (Pillow)"] = out.getvalue()
    files["PDF (text)"] = hostile.drawing_pdf(b"BT /F1 24 Tf 10 40 Td (Total 412.50) Tj ET", (300, 100))
    return files


@pytest.mark.timeout(240)
def test_hundreds_of_truncated_and_bit_flipped_files_get_200_or_a_4xx_json_error(service: str, scratch: Path) -> None:
    """A seeded corpus (the same every run): every answer is 200 with pages, or 4xx JSON saying what was wrong;
    none is 5xx; afterwards the app is within 200 MB of its start, healthy, and has left no files behind."""
    app = app_process(service)
    start = app.memory_info().rss
    cases = [(kind, f"mutant {number}", mutant) for seed, (kind, data) in enumerate(small_files().items())
             for number, mutant in enumerate(hostile.mutants(data, 45, seed))]
    statuses: dict[int, int] = {}

    def send(case: tuple[str, str, bytes]) -> str | None:
        kind, how, data = case
        answer = ocr(service, data, f"fuzz.{kind.split()[0].lower()}")
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        body = answer.json()
        if answer.status_code == 200 and isinstance(body.get("pages"), list):
            return None
        if 400 <= answer.status_code < 500 and body["error"]["message"] and body["error"]["param"] == "file":
            return None
        return f"{kind}, {how}: {answer.status_code} {answer.text[:200]}"

    with ThreadPoolExecutor(4) as pool:
        wrong = [problem for problem in pool.map(send, cases) if problem]
    assert not wrong, "\n".join(wrong)
    assert len(cases) == 405 and statuses.get(200, 0) > 30 and len(statuses) > 2, statuses
    grew = app.memory_info().rss - start
    assert grew < 200 << 20, f"the app grew {grew >> 20} MiB over the corpus"
    assert httpx.get(f"{service}/health", timeout=5).status_code == 200
    assert not os.listdir(scratch)


def test_health_says_busy_while_every_slot_is_taken_and_a_page_waits_no_longer_than_its_budget(
        tmp_path: Path) -> None:
    with engine_app("ocr", tmp_path, "--threads", "1", "--queue-wait-s", "1") as single:
        slow = ThreadPoolExecutor(1).submit(ocr, single.url, hostile.fills_bomb(), "slow.pdf")
        wait_until(lambda: single.status() == 429, 20, what="/health says busy")
        busy = single.health().json()
        assert busy["status"] == "busy" and "page slots busy" in busy["reason"], busy
        waited = ocr(single.url, letter(), "letter.png")
        assert waited.status_code == 503 and "busy for 1 s" in waited.json()["error"]["message"], waited.text
        assert slow.result(60).status_code == 422
        assert single.status() == 200 and ocr(single.url, letter(), "letter.png").status_code == 200
