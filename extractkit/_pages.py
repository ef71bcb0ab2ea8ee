"""Pages of a document: where each page's text sits in ``Document.text`` and where it came from.

A PDF's pages, or an image file's frames, are joined in ``Document.text`` with a blank line
("\\n\\n"); a ``Page`` says which characters ``text[start:end]`` are its own and whether they came
from the text layer (``"text"``), from OCR (``"ocr"``, with its mean line score) or from neither
(``"none"``: a page that is blank to both)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

SOURCES = ("text", "ocr", "none")


@dataclass(frozen=True)
class Page:
    number: int  # 1-based page number (an image file is page 1)
    start: int  # character offsets of this page's text in Document.text: text[start:end]
    end: int
    source: str  # "text" (text layer) | "ocr" | "none" (neither gave text)
    confidence: float | None = None  # OCR's mean line score 0..1; None for the text layer


def page_of(pages: Sequence[Page], offset: int) -> int | None:
    """The number of the page holding character ``offset`` of the document's text (None: no pages,
    or the offset is outside every page, e.g. in the blank line between two pages)."""
    if not pages:
        return None
    i = bisect.bisect_right([p.start for p in pages], offset) - 1
    if i < 0:
        return None
    page = pages[i]
    return page.number if page.start <= offset < page.end else None


LOW_CONFIDENCE = 0.8  # an OCR'd page whose mean line score is below this is listed as low-confidence


def text_source(pages: Sequence[Page]) -> str:
    """Where a document's text came from: ``text`` (every page with text from its text layer),
    ``ocr`` (every one from OCR), ``mixed`` (both), ``none`` (no page had text)."""
    kinds = {p.source for p in pages} - {"none"}
    if not kinds:
        return "none"
    return kinds.pop() if len(kinds) == 1 else "mixed"


# An OCR'd page (or a page nothing could read) with fewer non-space characters than this is listed
# as low-confidence whatever its score: "little text read". OCR's score averages only the boxes it
# recognised, so a blurred full page read as "@Saeco" (6 characters) scores 0.97. 20 is about one
# short line of an invoice ("Invoice No. 12345", "Total: 99.50 EUR"); a real page has far more, and
# a page that holds only a logo or a stamp is worth a look anyway.
MIN_PAGE_CHARS = 20


def little_text(page: Page, text: str | None = None) -> bool:
    """Whether ``page`` came from OCR (or from nothing) with under ``MIN_PAGE_CHARS`` non-space
    characters: counted in ``text[start:end]`` when the document's text is given, else its length."""
    if page.source not in ("ocr", "none"):
        return False
    n = len("".join(text[page.start : page.end].split())) if text is not None else page.end - page.start
    return n < MIN_PAGE_CHARS


def low_pages(pages: Sequence[Page], threshold: float = LOW_CONFIDENCE, text: str | None = None) -> list[int]:
    """The numbers of the pages to check: OCR'd pages whose confidence is below ``threshold``, and
    pages OCR read little or nothing on (``little_text``; a page without a text layer that was not
    read because the ocr extra is missing is one of them)."""
    return [p.number for p in pages if little_text(p, text) or (p.source == "ocr" and p.confidence is not None
            and p.confidence < threshold)]  # fmt: skip
