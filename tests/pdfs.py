"""PDF files for the tests and the benchmark, written into a given folder.

Plain functions without pytest, so that ``bench/convert.py`` can use them too;
``tests/test_pdf.py`` makes each file once per session. Every page of
:func:`text_pdf` starts with :func:`page_line`, so a test can tell the pages
apart in the text that comes out.
"""

from __future__ import annotations

import random
from pathlib import Path

from fpdf import FPDF

__all__ = [
    "bench_pdf",
    "damaged_pdf",
    "empty_pdf",
    "encrypted_pdf",
    "not_a_pdf",
    "page_line",
    "text_pdf",
]

_WORDS = (
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"),
    *("while", "streamer", "converts", "documents", "page", "by", "page"),
    *("and", "reports", "how", "far", "it", "got"),
)

# Helvetica at 10 pt on A4 with these, about 4,000 characters a page: a page
# of a dense report rather than a title page.
_LINE_HEIGHT = 5.0
_FIRST_LINE = 15.0
_LEFT = 15.0
_WORDS_PER_LINE = 14


def page_line(number: int, pages: int) -> str:
    """The first line of page ``number`` of a :func:`text_pdf` of ``pages``."""
    return f"page {number} of {pages}: the quick brown fox"


def text_pdf(
    folder: Path, pages: int = 5, *, lines: int = 0, name: str | None = None
) -> Path:
    """A PDF of ``pages`` pages, each its :func:`page_line` and ``lines`` more."""
    pdf = _document()
    rng = random.Random(pages)

    # Placed line by line with text() rather than flowed with multi_cell(),
    # whose line breaking would take fpdf2 seconds for the bench's 200 pages.
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.text(_LEFT, _FIRST_LINE, page_line(number, pages))
        for line in range(1, lines + 1):
            words = " ".join(rng.choices(_WORDS, k=_WORDS_PER_LINE))
            pdf.text(_LEFT, _FIRST_LINE + line * _LINE_HEIGHT, words)
    path = folder / (name or f"text-{pages}.pdf")
    pdf.output(str(path))
    return path


def bench_pdf(folder: Path, pages: int = 200) -> Path:
    """The benchmark's PDF: ``pages`` full pages of text, 50 lines each."""
    return text_pdf(folder, pages, lines=50, name=f"bench-{pages}.pdf")


def encrypted_pdf(folder: Path) -> Path:
    """A PDF that opens only with its user password, "secret"."""
    pdf = _document()
    pdf.set_encryption(owner_password="owner", user_password="secret")
    pdf.add_page()
    pdf.text(_LEFT, _FIRST_LINE, "nobody may read this without the password")
    path = folder / "encrypted.pdf"
    pdf.output(str(path))
    return path


def damaged_pdf(folder: Path) -> Path:
    """A PDF cut in half, as by an upload that broke off.

    fpdf2 writes the catalog, the cross-reference table and the trailer at the
    end, so the first half has a header and some pages but nothing that
    PDFium can rebuild a document from.
    """
    whole = text_pdf(folder, 3, lines=5, name="whole-3.pdf").read_bytes()
    path = folder / "damaged.pdf"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def empty_pdf(folder: Path) -> Path:
    """A well-formed PDF with no pages, written by hand: fpdf2 adds one."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [] /Count 0 >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    path = folder / "empty.pdf"
    path.write_bytes(bytes(out))
    return path


def not_a_pdf(folder: Path) -> Path:
    """A PNG's first bytes under a .pdf name, as an upload of the wrong file."""
    path = folder / "picture.pdf"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    return path


def _document() -> FPDF:
    pdf = FPDF(format="A4")
    pdf.set_font("helvetica", size=10)
    return pdf
