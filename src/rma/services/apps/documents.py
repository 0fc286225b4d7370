"""document-processing: PDF (pypdf), DOCX (python-docx) and plain text → {text, markdown, pages, metadata, warnings}.

A PDF page without a text layer (a scanned letter) goes to vision-ocr as a one-page PDF, through a
load balancer the coordinator lists (rma.services.apps.peers). When vision-ocr is not covered, or
fails, the page says why in its `note` and in `warnings`: never a silent empty page. The file's
type is read from its bytes, not its name; what cannot be parsed gets a 4xx JSON error.
"""

from __future__ import annotations

import asyncio
import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import httpx
from fastapi import File, UploadFile
from fastapi.concurrency import run_in_threadpool

from rma.front import client_context
from rma.services.apps.common import ApiError, Loaded, arguments, build_app, serve
from rma.services.apps.peers import Peers, PeerUnavailable

MAX_UPLOAD_BYTES = 25 * 2**20
MAX_PAGES = 200
MAX_OCR_PAGES = 20  # scanned pages read per document: each costs vision-ocr about a second of CPU
MAX_UNZIPPED_BYTES = 200 * 2**20  # a DOCX is a ZIP: refuse one that inflates past this (a ZIP bomb)
OCR_PARALLEL = 4  # scanned pages in flight to vision-ocr at once, per replica of this service
OCR_TIMEOUT_S = 120.0
SUPPORTED = "send a PDF, a Word document (DOCX) or plain text"
INLINE_IMAGE = re.compile(rb"(^|\s)BI\s")  # an image written into the page's content stream
PAGE_RULE = "\n\n---\n\n"  # between pages in the markdown


@dataclass
class Page:
    number: int
    text: str
    source: str  # "text": the file's own text; "ocr": read by vision-ocr; "none": no text was read
    note: str | None = None
    scan: bytes | None = field(default=None, repr=False)  # a one-page PDF for vision-ocr

    def unread(self, why: str) -> None:
        self.text, self.source, self.note, self.scan = "", "none", why, None

    def markdown(self) -> str:
        if self.source == "none":
            return f"> *Page {self.number}: {self.note}*"
        # Hard line breaks keep a letter's address and amount lines apart.
        return "\n\n".join("  \n".join(block.splitlines()) for block in re.split(r"\n\s*\n", self.text))

    def answer(self) -> dict[str, Any]:
        return {"page": self.number, "text": self.text, "source": self.source, "note": self.note}


@dataclass
class Parsed:
    format: str
    pages: list[Page]
    metadata: dict[str, Any]
    structured_markdown: str | None = None  # DOCX headings, lists and tables; else built from the pages

    def answer(self) -> dict[str, Any]:
        markdown = self.structured_markdown
        if markdown is None:
            markdown = PAGE_RULE.join(page.markdown() for page in self.pages)
        ocr_pages = sum(page.source == "ocr" for page in self.pages)
        return {
            "text": "\n\n".join(page.text for page in self.pages if page.text),
            "markdown": markdown,
            "pages": [page.answer() for page in self.pages],
            "metadata": {**self.metadata, "format": self.format, "pages": len(self.pages), "ocr_pages": ocr_pages},
            "warnings": [f"page {page.number}: {page.note}" for page in self.pages if page.note],
        }


def load_parsers() -> dict[str, str]:
    import docx
    import pypdf

    return {"pypdf": pypdf.__version__, "python-docx": getattr(docx, "__version__", "")}


def parse_document(data: bytes) -> Parsed:
    """The upload, parsed by what its bytes say it is; ApiError for anything else."""
    if b"%PDF-" in data[:1024]:  # the header may follow a little junk, as readers allow
        return parse_pdf(data)
    if data.startswith(b"PK\x03\x04"):
        return parse_docx(data)
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise ApiError(415, f"a legacy Word (.doc) or Office file: save it as DOCX or PDF; {SUPPORTED}", "file")
    if data.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*")):
        raise ApiError(415, f"an image: send it to vision-ocr (/service/ocr/ocr); {SUPPORTED}", "file")
    return parse_text(data)


def parse_text(data: bytes) -> Parsed:
    text = decode_text(data)
    return Parsed("text", [Page(1, text, "text")], {}, structured_markdown=text)


def decode_text(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encodings: tuple[str, ...] = ("utf-16",)
    elif b"\x00" in data:
        raise ApiError(415, f"a binary file of an unknown type; {SUPPORTED}", "file")
    else:
        encodings = ("utf-8-sig", "cp1252")  # Windows' own encoding is what Notepad used to save
    for encoding in encodings:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        controls = sum(ord(char) < 32 and char not in "\t\n\r\f" for char in text)
        if controls <= len(text) // 100:
            return text.replace("\r\n", "\n")
    raise ApiError(415, f"neither a document nor readable text; {SUPPORTED}", "file")


def parse_pdf(data: bytes) -> Parsed:
    from pypdf import PasswordType, PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise ApiError(422, "the PDF is password-protected: send it unlocked", "file")
        count = len(reader.pages)
        if count == 0:
            raise ApiError(400, "the PDF has no pages", "file")
        if count > MAX_PAGES:
            raise ApiError(413, f"{count} pages, at most {MAX_PAGES}", "file")
        pages: list[Page] = []
        for number, page in enumerate(reader.pages, start=1):
            pages.append(pdf_page(number, page, sum(p.scan is not None for p in pages) < MAX_OCR_PAGES))
        metadata = pdf_metadata(reader)
    except ApiError:
        raise
    # pypdf reports a malformed file through any of these, depending on where it breaks (an unknown
    # /Filter is NotImplementedError, a broken Flate stream zlib.error).
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError,
            RecursionError, OSError, zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError) as exc:
        raise ApiError(400, f"corrupt PDF: {type(exc).__name__}: {exc}", "file") from exc
    return Parsed("pdf", pages, {**metadata, "encrypted": reader.is_encrypted})


def pdf_page(number: int, page: Any, ocr: bool) -> Page:
    """A page's text layer; a page without one but with images (a scan) carries itself as a one-page PDF
    for OCR, while `ocr` says the document has not used up its OCR pages."""
    from pypdf import PdfWriter

    text = (page.extract_text() or "").strip()
    if text:
        return Page(number, text, "text")
    contents = page.get_contents()
    inline_image = contents is not None and INLINE_IMAGE.search(contents.get_data()) is not None
    if not inline_image and not has_images(page.get("/Resources")):
        return Page(number, "", "none", "no text and no images: a blank page")
    if not ocr:
        return Page(number, "", "none", f"no text layer; not read: OCR stops at {MAX_OCR_PAGES} scanned pages "
                                        "per document")
    writer = PdfWriter()
    writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    return Page(number, "", "none", "no text layer", scan=out.getvalue())


def has_images(resources: Any, depth: int = 0) -> bool:
    """Whether `resources` holds an image, directly or in a form the page draws (nested at most 3 deep)."""
    resources = resources.get_object() if resources is not None else None
    xobjects = resources.get("/XObject") if resources is not None else None
    if xobjects is None:
        return False
    for item in xobjects.get_object().values():
        item = item.get_object()
        if item.get("/Subtype") == "/Image":
            return True
        if item.get("/Subtype") == "/Form" and depth < 3 and has_images(item.get("/Resources"), depth + 1):
            return True
    return False


def pdf_metadata(reader: Any) -> dict[str, Any]:
    info = reader.metadata
    if info is None:
        return {}
    found: dict[str, Any] = {key: getattr(info, key) for key in ("title", "author", "subject", "creator", "producer")}
    for key, attribute in (("created", "creation_date"), ("modified", "modification_date")):
        try:
            when = getattr(info, attribute)
        except ValueError:  # a date the PDF's author wrote in no known format
            when = None
        found[key] = when.isoformat() if isinstance(when, datetime) else None
    return {key: value for key, value in found.items() if value}


def parse_docx(data: bytes) -> Parsed:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            inflated = sum(item.file_size for item in archive.infolist())
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ApiError(400, f"corrupt ZIP archive: {exc}", "file") from exc
    if "word/document.xml" not in names:
        raise ApiError(415, f"a ZIP archive, not a Word document; {SUPPORTED}", "file")
    if inflated > MAX_UNZIPPED_BYTES:
        raise ApiError(413, f"the document inflates to {inflated} bytes, at most {MAX_UNZIPPED_BYTES}", "file")
    try:
        document = docx.Document(io.BytesIO(data))
        texts, markdown = docx_blocks(document)
        metadata = docx_metadata(document)
    # A corrupted deflate stream is zlib.error, a ZIP compression method Python lacks NotImplementedError.
    except (PackageNotFoundError, KeyError, zipfile.BadZipFile, SyntaxError, TypeError, AttributeError,
            zlib.error, NotImplementedError, EOFError) as exc:
        raise ApiError(400, f"corrupt Word document: {type(exc).__name__}: {exc}", "file") from exc
    except ValueError as exc:  # python-docx's word for "a Word file of another kind" (.docm, .dotx)
        raise ApiError(415, f"not a Word document python-docx reads: {exc}; {SUPPORTED}", "file") from exc
    # A DOCX has no fixed pages (the word processor lays them out): one page holds it all.
    return Parsed("docx", [Page(1, "\n".join(texts), "text")], metadata, structured_markdown="\n\n".join(markdown))


def docx_blocks(document: Any) -> tuple[list[str], list[str]]:
    """Text and markdown of the headers, body (paragraphs and tables in order) and footers."""
    from docx.table import Table

    texts, markdown = [], []
    for paragraph in header_footer_paragraphs(document, "header"):
        texts.append(paragraph.text)
        markdown.append(paragraph_markdown(paragraph))
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = table_rows(block)
            texts.append("\n".join("\t".join(row) for row in rows))
            markdown.append(table_markdown(rows))
        elif block.text.strip():
            texts.append(block.text)
            markdown.append(paragraph_markdown(block))
    for paragraph in header_footer_paragraphs(document, "footer"):
        texts.append(paragraph.text)
        markdown.append(paragraph_markdown(paragraph))
    return [text for text in texts if text.strip()], [text for text in markdown if text.strip()]


def header_footer_paragraphs(document: Any, which: str) -> list[Any]:
    """A letterhead often names the creditor: each section's own header (or footer) paragraphs, once."""
    seen, found = set(), []
    for section in document.sections:
        part = getattr(section, which)
        if part.is_linked_to_previous:
            continue
        for paragraph in part.paragraphs:
            if paragraph.text.strip() and paragraph.text not in seen:
                seen.add(paragraph.text)
                found.append(paragraph)
    return found


def paragraph_markdown(paragraph: Any) -> str:
    from docx.text.hyperlink import Hyperlink

    inline = ""
    for item in paragraph.iter_inner_content():
        if isinstance(item, Hyperlink):
            inline += f"[{item.text}]({item.url})" if item.url else item.text
        else:
            inline += run_markdown(item.text, bool(item.bold), bool(item.italic))
    style = paragraph.style.name if paragraph.style is not None else ""
    heading = re.fullmatch(r"Heading (\d)", style)
    if style == "Title":
        return f"# {inline}"
    if heading:
        return f"{'#' * min(int(heading.group(1)), 6)} {inline}"
    if style.startswith("List Bullet"):
        return f"- {inline}"
    if style.startswith("List Number"):
        return f"1. {inline}"
    if style in ("Quote", "Intense Quote"):
        return f"> {inline}"
    return inline


def run_markdown(text: str, bold: bool, italic: bool) -> str:
    """Emphasis goes inside the run's spaces: "**due **" is not bold in markdown, " **due** " is."""
    mark = "*" * (2 * bold + italic)
    core = text.strip()
    if not mark or not core:
        return text
    return f"{text[:len(text) - len(text.lstrip())]}{mark}{core}{mark}{text[len(text.rstrip()):]}"


def table_rows(table: Any) -> list[list[str]]:
    """Cell texts by row; a merged cell, which python-docx repeats for each grid column it spans, once."""
    rows = []
    for row in table.rows:
        cells: list[Any] = []
        for cell in row.cells:
            if not cells or cell._tc is not cells[-1]._tc:
                cells.append(cell)
        rows.append([cell.text.strip() for cell in cells])
    return [row for row in rows if any(row)]


def table_markdown(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    width = max(map(len, rows))
    cells = [[cell.replace("|", "\\|").replace("\n", "<br>") for cell in row] + [""] * (width - len(row))
             for row in rows]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + " --- |" * width)
    return "\n".join(lines)


def docx_metadata(document: Any) -> dict[str, Any]:
    core = document.core_properties
    found = {"title": core.title, "author": core.author, "subject": core.subject,
             "last_modified_by": core.last_modified_by,
             "created": core.created.isoformat() if core.created else None,
             "modified": core.modified.isoformat() if core.modified else None}
    return {key: value for key, value in found.items() if value}


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


def create_app(threads: int, coordinator_urls: list[str]) -> Any:
    loaded = Loaded("pypdf and python-docx", load_parsers)
    app = build_app("document-processing", loaded, MAX_UPLOAD_BYTES + 2**16)
    client = httpx.AsyncClient(timeout=httpx.Timeout(OCR_TIMEOUT_S, connect=5.0), verify=client_context())
    peers = Peers(coordinator_urls, client)
    # pypdf holds the GIL, so more parses at once would not be faster: the limit bounds memory.
    parsing = asyncio.Semaphore(threads)
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
        async with parsing:
            parsed = await run_in_threadpool(parse_document, data)
        scans = [page for page in parsed.pages if page.scan is not None]
        if scans:
            await read_scans(scans)
        answer = parsed.answer()
        if file.filename:
            answer["metadata"]["filename"] = file.filename
        return answer

    return app


def main() -> None:
    parser = arguments("Text and structure of PDF, DOCX and text files; scanned pages through vision-ocr")
    parser.add_argument("--coordinator-url", default="", help="comma-separated: where to look up vision-ocr")
    args = parser.parse_args()
    urls = [url for url in args.coordinator_url.split(",") if url]
    serve(create_app(args.threads, urls), args.host, args.port)


if __name__ == "__main__":
    main()
