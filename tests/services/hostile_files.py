"""Hostile documents made on the spot (no downloads): bombs, a slow but honest file, and a seeded mutation fuzzer.

Shared by tests/services/test_hostile_documents.py, tests/services/test_tier1_ocr.py and
bench/hostile_documents.py, which prints what each costs the app in time and memory.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Iterator

import docx
from fpdf import FPDF

BOMB_BYTES = 190 * 2**20  # under document-processing's 200 MiB inflate cap, as in the issue
EMPTY_PARAGRAPH = b"<w:p/>"
TEXT_PARAGRAPH = b"<w:p><w:r><w:t>word</w:t></w:r></w:p>"


def small_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Final notice", 1)
    document.add_paragraph("Dear Mr Jones, you owe £1,250.00 to Lowell for your catalogue account.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def small_pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    for line in ("British Gas", "Account number: 12345678", "You owe GBP 412.50. Please pay by 14 March 2025."):
        pdf.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


SMALL_TEXT = "Dear Ms Patel,\nOur records show you owe £412.50 to British Gas.\n".encode()


def docx_with_body(body: Iterator[bytes]) -> bytes:
    """A real DOCX whose document.xml body is `body` (streamed into the ZIP, never whole in memory)."""
    source = zipfile.ZipFile(io.BytesIO(small_docx()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename != "word/document.xml":
                archive.writestr(item.filename, data)
                continue
            head = data.partition(b"<w:body>")[0] + b"<w:body>"
            with archive.open("word/document.xml", "w", force_zip64=True) as part:
                part.write(head)
                for block in body:
                    part.write(block)
                part.write(b"</w:body></w:document>")
    return out.getvalue()


def repeated(unit: bytes, total: int, block: int = 2**20) -> Iterator[bytes]:
    chunk = unit * (block // len(unit))
    for _ in range(total // len(chunk)):
        yield chunk


def empty_paragraph_bomb() -> bytes:
    """~190 MB of empty paragraphs in a ~300 KB DOCX: the issue's 4.5 GB, 13 s, 500."""
    return docx_with_body(repeated(EMPTY_PARAGRAPH, BOMB_BYTES))


def text_paragraph_bomb() -> bytes:
    """~190 MB of real paragraphs in a ~600 KB DOCX: the issue's upload that held a core for 8 minutes."""
    return docx_with_body(repeated(TEXT_PARAGRAPH, BOMB_BYTES))


def long_docx(paragraphs: int = 50_000) -> bytes:
    """An honest but long document (a 1,000-page report's paragraph count): seconds of parsing, ~110 MB."""
    return docx_with_body(repeated(TEXT_PARAGRAPH, paragraphs * len(TEXT_PARAGRAPH), len(TEXT_PARAGRAPH) * 1000))


def flate_bomb_pdf(inflated: int = 512 * 2**20) -> bytes:
    """A one-page PDF whose content stream inflates to `inflated` bytes of spaces, from ~500 KB."""
    compressor = zlib.compressobj(9)
    deflated = b"".join(compressor.compress(block) for block in repeated(b" ", inflated)) + compressor.flush()
    return one_page_pdf(stream(b"/Filter/FlateDecode", deflated))


def stream(entries: bytes, data: bytes) -> bytes:
    """A PDF stream object holding `data` (as is) with dictionary `entries`."""
    return b"<</Length %d %s>>\nstream\n%s\nendstream" % (len(data), entries, data)


def pdf_file(objects: list[bytes]) -> bytes:
    """A PDF written by hand: `objects` numbered from 1 (the catalog), with a correct cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % offset for offset in offsets)
    out.write(b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def one_page_pdf(contents: bytes, size: tuple[float, float] = (612, 792), resources: bytes = b"",
                 more: tuple[bytes, ...] = ()) -> bytes:
    """A PDF of one page, `size` points, whose content stream object is `contents` (object 4), with Helvetica
    as /F1 (object 5) among its `resources`; `more` are objects 6 on, for `resources` to name."""
    width, height = (str(side).encode() for side in size)
    return pdf_file([b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
                     b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 %s %s]/Contents 4 0 R"
                     b"/Resources<</Font<</F1 5 0 R>> %s>>>>" % (width, height, resources), contents,
                     b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>", *more])


def drawing_pdf(drawing: bytes, size: tuple[float, float] = (612, 792), resources: bytes = b"",
                more: tuple[bytes, ...] = ()) -> bytes:
    """A one-page PDF whose page draws `drawing` (content operators, Flate-compressed here)."""
    return one_page_pdf(stream(b"/Filter/FlateDecode", zlib.compress(drawing)), size, resources, more)


TOTAL_LINE = b"BT /F1 48 Tf 72 72 Td (Total 412.50) Tj ET"  # what OCR reads back as "Total 412.50"


def png_declaring(width: int, height: int, rows: int = 16) -> bytes:
    """A PNG whose header declares `width` x `height` grey pixels but holds `rows` rows of zeros: a ~1 KB bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = zlib.compress(bytes(1 + width) * rows, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def tiff_of_frames(frames: int = 150_000) -> bytes:
    """A 17 MB TIFF of 150,000 one-pixel frames: Pillow's n_frames walks them all, in minutes."""
    entries = struct.pack("<H", 9) + b"".join(struct.pack("<HHII", tag, 4, 1, value) for tag, value in (
        (256, 1), (257, 1), (258, 1), (259, 1), (262, 1), (273, 8), (277, 1), (278, 1), (279, 1)))
    step = len(entries) + 4
    return b"II*\0" + struct.pack("<I", 16) + bytes(8) + b"".join(
        entries + struct.pack("<I", 16 + (i + 1) * step if i < frames - 1 else 0) for i in range(frames))


def forms_bomb(levels: int = 8, fan: int = 10) -> bytes:
    """Form n draws form n-1 `fan` times, form 0 strokes a line: fan ** levels lines from 2 KB."""
    forms = [stream(b"/Type/XObject/Subtype/Form/BBox[0 0 612 792]", b"0 0 m 600 700 l S")]
    forms += [stream(b"/Type/XObject/Subtype/Form/BBox[0 0 612 792]/Resources<</XObject<</X %d 0 R>>>>"
                     % (5 + level), b"/X Do " * fan) for level in range(1, levels + 1)]
    return drawing_pdf(b"/X Do", resources=b"/XObject<</X %d 0 R>>" % (5 + len(forms)), more=tuple(forms))


def content_bomb(megabytes: int = 300) -> bytes:
    """A page whose 1 MB content stream inflates to `megabytes` of path operators: PDFium wants ~7x that."""
    squeeze = zlib.compressobj(6)
    ops = b"0 0 m 600 700 l S\n" * (2**20 // 18)
    data = b"".join(squeeze.compress(ops) for _ in range(megabytes)) + squeeze.flush()
    return one_page_pdf(stream(b"/Filter/FlateDecode", data))


def fills_bomb(fills: int = 200_000) -> bytes:
    """A 12 KB page that paints itself grey 200,000 times: little memory, minutes of PDFium."""
    return drawing_pdf(b"0.5 g 0 0 612 792 re f\n" * fills)


def mutants(original: bytes, count: int, seed: int) -> Iterator[bytes]:
    """`count` damaged copies of `original`, the same for the same seed: truncated, bits flipped, a range
    overwritten with random bytes, a range deleted or repeated."""
    rng = random.Random(seed)
    for _ in range(count):
        data = bytearray(original)
        kind = rng.randrange(5)
        at = rng.randrange(len(data))
        span = rng.randint(1, max(1, len(data) // 20))
        if kind == 0:
            del data[at:]
        elif kind == 1:
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 2:
            data[at:at + span] = rng.randbytes(span)
        elif kind == 3:
            del data[at:at + span]
        else:
            data[at:at] = data[at:at + span] * rng.randint(2, 8)
        yield bytes(data) or b"x"


def docx_mutants(original: bytes, count: int, seed: int) -> Iterator[bytes]:
    """Damaged DOCX files: half damaged as bytes (mostly a broken ZIP), half a valid ZIP around a damaged
    document.xml, which reaches the XML parser and python-docx."""
    with zipfile.ZipFile(io.BytesIO(original)) as source:
        parts = {item.filename: source.read(item.filename) for item in source.infolist()}
    raw = mutants(original, count - count // 2, seed)
    xml = mutants(parts["word/document.xml"], count // 2, seed + 1)
    for number in range(count):
        if number % 2 == 0:
            yield next(raw)
            continue
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in parts.items():
                archive.writestr(name, next(xml) if name == "word/document.xml" else data)
        yield out.getvalue()
