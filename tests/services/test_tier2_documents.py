"""document-processing as the worker starts it: PDFs, DOCX and text the test writes, scanned pages, bad uploads.

Its pool has no vision-ocr, so a scanned page must say that OCR is unavailable; the end-to-end test
reads one through vision-ocr.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docx
import httpx
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw, ImageFont
from pypdf import PdfWriter

from procs import start_coordinator
from rma.services import DRIVERS
from rma.services.apps.documents import error_message
from rma.services.base import Context
from services.driven import driven_service
from services.hostile_files import one_page_pdf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]
LETTER = ("British Gas", "Account number: 12345678", "", "Dear Ms Patel,",
          "Our records show you owe £412.50 to British Gas for your energy account.",
          "Please pay by 14 March 2025 to avoid further action.")
SCAN = ("Dear Ms Patel", "You owe 412.50 GBP to Lowell", "Please pay by 14 March 2025")


def letter_pdf(lines: tuple[str, ...] = LETTER, scanned_pages: int = 0) -> bytes:
    """A creditor's letter with a text layer, then `scanned_pages` image-only pages."""
    pdf = FPDF()
    pdf.set_title("Final notice")
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    for line in lines:
        pdf.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    out = PdfWriter(clone_from=io.BytesIO(bytes(pdf.output())))
    for _ in range(scanned_pages):
        out.append(io.BytesIO(scanned_pdf()))
    buffer = io.BytesIO()
    out.write(buffer)
    return buffer.getvalue()


def scanned_pdf(lines: tuple[str, ...] = SCAN) -> bytes:
    """A page that is only a picture of text, as a scanner makes it: no text layer at all."""
    font = ImageFont.load_default(size=36)
    image = Image.new("RGB", (1400, 500), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((80, 80 + row * 110), line, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, "PDF", resolution=200.0)
    return out.getvalue()


def letter_docx() -> bytes:
    """A Word letter: the creditor in the letterhead, a heading, bold amount, a list and a table."""
    document = docx.Document()
    document.core_properties.author = "Lowell Financial Ltd"
    document.sections[0].header.paragraphs[0].text = "Lowell Financial Ltd"
    document.add_heading("Final notice", 1)
    paragraph = document.add_paragraph("Dear Mr Jones, you owe ")
    paragraph.add_run("£1,250.00").bold = True
    paragraph.add_run(" to Lowell for your catalogue account. Please pay by 2 June 2025.")
    document.add_paragraph("Call us on 0333 556 5550", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {(0, 0): "Debt", (0, 1): "Balance", (1, 0): "Catalogue", (1, 1): "£1,250.00"}.items():
        table.cell(row, col).text = text
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def encrypted_pdf(user_password: str) -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(letter_pdf()))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def blank_pdf(pages: int) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(200, 200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def zip_file(names: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in names.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service in a pool of its own: a real coordinator with no vision-ocr anywhere."""
    folder = tmp_path_factory.mktemp("documents")
    coordinator, coordinator_url = start_coordinator(folder)
    (folder / "service").mkdir()
    try:
        with driven_service("document-processing", folder / "service", "/health", 60, {"OMP_NUM_THREADS": "1"},
                            coordinator_urls=(coordinator_url,)) as url:
            yield url
    finally:
        coordinator.stop()


def parse(url: str, data: bytes, name: str = "letter.pdf") -> httpx.Response:
    return httpx.post(f"{url}/parse", files={"file": (name, data)}, timeout=60)


def test_a_pdf_letter_gives_its_text_markdown_pages_and_metadata(service: str) -> None:
    answer = parse(service, letter_pdf())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "you owe £412.50 to British Gas" in body["text"] and "14 March 2025" in body["text"]
    assert body["pages"] == [{"page": 1, "text": body["text"], "source": "text", "note": None}]
    assert "Dear Ms Patel,  \nOur records show" in body["markdown"]  # the letter's lines stay apart
    assert body["metadata"]["format"] == "pdf" and body["metadata"]["pages"] == 1
    assert body["metadata"]["title"] == "Final notice" and body["metadata"]["filename"] == "letter.pdf"
    assert body["warnings"] == []


def test_a_docx_letter_gives_letterhead_body_and_table_with_markdown_structure(service: str) -> None:
    answer = parse(service, letter_docx(), "letter.docx")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["text"].startswith("Lowell Financial Ltd\nFinal notice\nDear Mr Jones, you owe £1,250.00 to Lowell")
    assert "Catalogue\t£1,250.00" in body["text"]
    markdown = body["markdown"]
    assert "# Final notice" in markdown and "you owe **£1,250.00** to Lowell" in markdown
    assert "- Call us on 0333 556 5550" in markdown
    assert "| Debt | Balance |\n| --- | --- |\n| Catalogue | £1,250.00 |" in markdown
    assert body["metadata"]["format"] == "docx" and body["metadata"]["author"] == "Lowell Financial Ltd"


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "utf-16"])
def test_plain_text_in_the_usual_encodings(service: str, encoding: str) -> None:
    text = "You owe £80.00 to Thames Water.\nPlease call us."
    answer = parse(service, text.encode(encoding), "note.txt")
    assert answer.status_code == 200, answer.text
    assert answer.json()["text"] == text and answer.json()["metadata"]["format"] == "text"


def test_a_scanned_page_without_ocr_in_the_pool_says_so_and_the_text_pages_still_come_back(service: str) -> None:
    body = parse(service, letter_pdf(scanned_pages=1)).json()
    text_page, scan = body["pages"]
    assert text_page["source"] == "text" and "£412.50" in text_page["text"]
    assert scan["source"] == "none" and scan["text"] == ""
    assert scan["note"] == "no text layer, and OCR is unavailable: vision-ocr is not running anywhere in the pool now"
    assert body["warnings"] == [f"page 2: {scan['note']}"] and "*Page 2: no text layer" in body["markdown"]
    assert body["text"] == text_page["text"]


def test_scanned_pages_past_the_ocr_limit_say_they_were_not_read(service: str) -> None:
    pages = parse(service, letter_pdf(scanned_pages=21)).json()["pages"]
    assert all("OCR is unavailable" in page["note"] for page in pages[1:21])
    assert "OCR stops at 20 scanned pages" in pages[21]["note"]


def test_a_blank_page_is_named_blank_not_sent_to_ocr(service: str) -> None:
    (page,) = parse(service, blank_pdf(1)).json()["pages"]
    assert page["source"] == "none" and "blank page" in page["note"]


def test_a_pdf_locked_only_by_its_owner_opens_like_any_reader_opens_it(service: str) -> None:
    answer = parse(service, encrypted_pdf(user_password=""))
    assert answer.status_code == 200 and "£412.50" in answer.json()["text"], answer.text
    assert answer.json()["metadata"]["encrypted"] is True


def bogus_filter_pdf() -> bytes:
    """A one-page PDF whose content stream names a filter no reader knows (pypdf: NotImplementedError)."""
    return one_page_pdf(b"<</Length 5/Filter/Bogus>>\nstream\nhello\nendstream")


def word_file() -> bytes:
    document = docx.Document()
    document.add_paragraph("Lowell Financial: £1,250.00 outstanding. " * 40)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def damaged_word_file(damage: str) -> bytes:
    """A real DOCX with its document.xml's first deflate byte flipped (zlib.error), or its compression
    method set to one Python's zipfile lacks (NotImplementedError), in both ZIP headers."""
    data = bytearray(word_file())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("word/document.xml")
    if damage == "deflate":
        data[info.header_offset + 30 + len(info.filename) + len(info.extra)] ^= 0xFF
        return bytes(data)
    struct.pack_into("<H", data, info.header_offset + 8, 99)
    central = data.find(b"PK\x01\x02", info.header_offset + 30)
    while data[central + 46:central + 46 + len(info.filename)] != info.filename.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<H", data, central + 10, 99)
    return bytes(data)


@pytest.mark.parametrize(("data", "status", "says"), [
    (b"", 400, "empty"),
    (b"\x00\x01\x02binary\x00", 415, "binary"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 415, "an image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, 415, "legacy Word"),
    (zip_file({"readme.txt": b"hello"}), 415, "not a Word document"),
    (zip_file({"word/document.xml": b"<not-xml"}), 400, "corrupt Word document"),
    (b"PK\x03\x04 truncated", 400, "corrupt ZIP"),
    (b"%PDF-1.7 truncated garbage", 400, "corrupt PDF"),
    ("bogus-filter", 400, "corrupt PDF: NotImplementedError"),
    ("bad-deflate", 400, "corrupt Word document: error"),
    ("unknown-method", 400, "corrupt Word document: NotImplementedError"),
    ("encrypted", 422, "password-protected"),
    ("pages", 413, "at most 200"),
    ("bomb", 413, "inflates"),
    (b"x" * (26 * 2**20), 413, "larger than"),
])
def test_bad_uploads_get_a_4xx_json_error_and_the_service_stays_up(service: str, data: bytes | str, status: int,
                                                                   says: str) -> None:
    made = {"encrypted": lambda: encrypted_pdf("user-secret"), "pages": lambda: blank_pdf(201),
            "bomb": lambda: zip_file({"word/document.xml": b"\0" * (201 * 2**20)}), "bogus-filter": bogus_filter_pdf,
            "bad-deflate": lambda: damaged_word_file("deflate"), "unknown-method": lambda: damaged_word_file("method")}
    answer = parse(service, made[data]() if isinstance(data, str) else data)
    assert answer.status_code == status and says in answer.json()["error"]["message"], answer.text
    assert httpx.get(f"{service}/health", timeout=5).status_code == 200


def test_a_request_without_a_file_is_refused(service: str) -> None:
    answer = httpx.post(f"{service}/parse", data={"other": "x"}, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "file"


def test_the_driver_hands_the_app_the_coordinators_and_the_cpu_share(tmp_path: Path) -> None:
    driver = DRIVERS["document-processing"]
    assert driver.missing("pdf-docx", {}) is None
    ctx = Context("127.0.0.1", 8103, tmp_path, ("http://a:8080", "http://b:8080"), env={"OMP_NUM_THREADS": "3"})
    argv = driver.launch(ctx).argv
    assert argv[argv.index("--coordinator-url") + 1] == "http://a:8080,http://b:8080"
    assert argv[argv.index("--threads") + 1] == "3"


def test_ocr_failures_are_worded_from_the_service_or_router_error() -> None:
    service = httpx.Response(413, json={"error": {"message": "file over 20971520 bytes", "code": 413}})
    router = httpx.Response(503, json={"error": "no healthy replica", "reason": "vision-ocr: worker w1 down"})
    assert error_message(service) == "file over 20971520 bytes"
    assert error_message(router) == "no healthy replica; vision-ocr: worker w1 down"
    assert error_message(httpx.Response(502, text="Bad Gateway")) == "Bad Gateway"
