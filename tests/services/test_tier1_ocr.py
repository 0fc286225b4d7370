"""vision-ocr as the worker starts it: Tesseract on images and PDFs the test renders, and bad uploads."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from services.driven import driven_service

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
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with driven_service("vision-ocr", tmp_path_factory.mktemp("ocr"), "/health", 60, {"OMP_NUM_THREADS": "2"}) as url:
        yield url


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
