"""Parsing an uploaded document: PDF (pypdf), DOCX (python-docx) or plain text → pages, markdown and metadata.

The file's type is read from its bytes, not its name; what cannot be parsed raises ApiError (a 4xx
JSON error). Cheap checks of what a file declares (pages, inflated size, XML elements) come before
the parse; document-processing (rma.services.apps.documents) runs all of this in a child held to a
budget. A PDF page without a text layer keeps a one-page PDF of itself (`Page.scan`) for vision-ocr.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rma.services.apps.common import ApiError

MAX_PAGES = 200
MAX_OCR_PAGES = 20  # scanned pages read per document: each costs vision-ocr about a second of CPU
MAX_UNZIPPED_BYTES = 200 * 2**20  # a DOCX is a ZIP: refuse one that inflates past this (a ZIP bomb)
# XML elements in a DOCX's parts: a 1,000-page report holds a few hundred thousand; 190 MB of empty
# paragraphs (under the inflate cap) hold 30 million, and python-docx would need ~20 GB for them.
MAX_DOCX_ELEMENTS = 1_000_000
SUPPORTED = "send a PDF, a Word document (DOCX) or plain text"
INLINE_IMAGE = re.compile(rb"(^|\s)BI\s")  # an image written into the page's content stream
PAGE_RULE = "\n\n---\n\n"  # between pages in the markdown
# What a damaged ZIP or deflate stream raises (in a DOCX, or a PDF's Flate stream): a broken archive, a corrupted
# deflate stream, a compression method or /Filter no reader here implements (pypdf and zipfile raise
# NotImplementedError for those: the file's fault, not this code's), a stream cut short.
BROKEN_STREAM = (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError)


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
    # pypdf reports a malformed file through any of these, depending on where it breaks.
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError,
            RecursionError, OSError, *BROKEN_STREAM) as exc:
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
    elements = xml_elements(data)
    if elements > MAX_DOCX_ELEMENTS:
        raise ApiError(413, f"the document holds more than {MAX_DOCX_ELEMENTS:,} XML elements "
                            f"({elements:,} counted), the limit", "file")
    try:
        document = docx.Document(io.BytesIO(data))
        texts, markdown = docx_blocks(document)
        metadata = docx_metadata(document)
    except (PackageNotFoundError, KeyError, SyntaxError, TypeError, AttributeError, *BROKEN_STREAM) as exc:
        raise ApiError(400, f"corrupt Word document: {type(exc).__name__}: {exc}", "file") from exc
    except ValueError as exc:  # python-docx's word for "a Word file of another kind" (.docm, .dotx)
        raise ApiError(415, f"not a Word document python-docx reads: {exc}; {SUPPORTED}", "file") from exc
    # A DOCX has no fixed pages (the word processor lays them out): one page holds it all.
    return Parsed("docx", [Page(1, "\n".join(texts), "text")], metadata, structured_markdown="\n\n".join(markdown))


def xml_elements(data: bytes, chunk: int = 2**20) -> int:
    """About how many XML elements a DOCX's parts hold (start tags: each "<" that opens no end tag), counted as
    each part inflates, so nothing of it is kept; stops counting past MAX_DOCX_ELEMENTS."""
    count = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for item in archive.infolist():
                if not item.filename.endswith((".xml", ".rels")):
                    continue
                with archive.open(item) as part:
                    while block := part.read(chunk):
                        count += block.count(b"<") - block.count(b"</") - block.count(b"<?")
                        if count > MAX_DOCX_ELEMENTS:
                            return count
    except (*BROKEN_STREAM, ValueError) as exc:
        raise ApiError(400, f"corrupt Word document: {type(exc).__name__}: {exc}", "file") from exc
    return count


def docx_blocks(document: Any) -> tuple[list[str], list[str]]:
    """Text and markdown of the headers, body (paragraphs and tables in order) and footers."""
    from docx.table import Table

    styles = paragraph_styles(document)
    texts, markdown = [], []
    for paragraph in header_footer_paragraphs(document, "header"):
        texts.append(paragraph.text)
        markdown.append(paragraph_markdown(paragraph, styles))
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            rows = table_rows(block)
            texts.append("\n".join("\t".join(row) for row in rows))
            markdown.append(table_markdown(rows))
        elif block.text.strip():
            texts.append(block.text)
            markdown.append(paragraph_markdown(block, styles))
    for paragraph in header_footer_paragraphs(document, "footer"):
        texts.append(paragraph.text)
        markdown.append(paragraph_markdown(paragraph, styles))
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


def paragraph_styles(document: Any) -> dict[str | None, str]:
    """Paragraph style names by style id, None (no style named) giving the default's: looked up once, since
    python-docx's `paragraph.style` scans every style for each paragraph (1.3 ms; 50,000 paragraphs took 112 s)."""
    from docx.enum.style import WD_STYLE_TYPE

    found: dict[str | None, str] = {style.style_id: style.name or "" for style in document.styles
                                    if style.type == WD_STYLE_TYPE.PARAGRAPH}
    default = document.styles.default(WD_STYLE_TYPE.PARAGRAPH)
    found[None] = default.name or "" if default is not None else ""
    return found


def paragraph_markdown(paragraph: Any, styles: dict[str | None, str]) -> str:
    from docx.text.hyperlink import Hyperlink

    inline = ""
    for item in paragraph.iter_inner_content():
        if isinstance(item, Hyperlink):
            inline += f"[{item.text}]({item.url})" if item.url else item.text
        else:
            inline += run_markdown(item.text, bool(item.bold), bool(item.italic))
    style_id = paragraph._p.style
    style = styles.get(style_id, styles[None])
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
