"""How the report's numbers read: money, shares, counts, times. Pure functions, no output: the
renderers (terminal, CSV, HTML) and the sentences the report carries (verdicts, notes) use them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._pages import MIN_PAGE_CHARS

if TYPE_CHECKING:
    from ._model import LowConfidenceDocument, Sources


def money(v: float | None, none: str = "unknown") -> str:
    if v is None:
        return none
    if v == 0:
        return "$0"
    if abs(v) >= 1:
        return f"${v:,.2f}"
    whole, _, frac = f"{v:.6f}".partition(".")
    return f"${whole}.{frac.rstrip('0'):0<2}"


def count(n: int) -> str:
    return f"{n}" if n < 10_000 else f"{n / 1000:.0f}k" if n < 10_000_000 else f"{n / 1e6:.0f}M"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}" if v in (0, 1) or 0.1 <= v <= 0.9 else f"{v:.1%}"


def secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s" if v < 10 else f"{v:.0f}s"


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + " UTC"


def per_valid(v: float | None, resolved: int, none: str) -> str:
    """A cost per valid extraction: ``price unknown`` when there were valid extractions but a price
    was missing, ``none`` when there were none to divide by."""
    return money(v, "price unknown" if resolved else none)


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def short_version(version: str) -> str:
    """A version as a sentence or the terminal shows it: a hash's first 12 characters, a setting
    (``k=3 select=similar``) or a placeholder as it is."""
    return version if " " in version or "(" in version else version[:12]


def saving_line(saving: float | None, ratio: float | None) -> str:
    """The Batch API's saving in words: what the batch attempts would have cost live minus what they
    cost, and what the batch and mixed documents cost as a share of their live price (so a
    saving of 40 % reads "cost 60 % of their live price", never "60 % of the live price" beside
    the saving, which read as the saving's share)."""
    if saving is None:
        return "saving by batch: unknown (a price is missing)"
    share = f" (they cost {ratio:.0%} of their live price)" if ratio is not None else ""
    return f"saving by batch: {money(saving)}{share}"


def sources_line(sources: Sources) -> str:
    """Where the documents' text came from, in words: "12 documents with pages: 9 from the text
    layer, 2 by OCR, 1 mixed; 3 OCR'd pages, mean confidence 0.97; 1 with low-confidence pages"."""
    docs = sources.documents
    words = {"text": "from the text layer", "ocr": "by OCR", "mixed": "mixed (text layer and OCR)",
             "none": "without text"}  # fmt: skip
    parts = [f"{n} {words.get(k, k)}" for k, n in docs.items()]
    total = sum(docs.values())
    line = f"{total} document{'s' if total != 1 else ''} with pages: " + ", ".join(parts)
    ocr_pages = sources.ocr_pages
    if ocr_pages:
        conf = sources.mean_confidence
        line += f"; {ocr_pages} OCR'd page{'s' if ocr_pages != 1 else ''}"
        line += f", mean confidence {conf:.2f}" if conf is not None else ""
    low = sources.low_confidence_documents
    line += f"; {low} with low-confidence OCR pages" if low else ""
    return line


def low_confidence_line(doc: LowConfidenceDocument) -> str:
    """One document with pages to check: "scan.pdf: pages 2, 5 under 0.80 or with little text read
    (lowest 0.61)"; "fax.png: page 1: little or no text read (under 20 characters)" when no page is
    under the threshold (``_pages.low_pages``: a short page is listed whatever its score)."""
    pages = ", ".join(str(p) for p in doc.pages)
    name = doc.path or doc.document_sha256[:12]
    n = len(doc.pages)
    label = f"page{'s' if n != 1 else ''} {pages}"
    if doc.min_confidence is None or doc.threshold is None or doc.min_confidence >= doc.threshold:
        return f"{name}: {label}: little or no text read (under {MIN_PAGE_CHARS} characters)"
    lowest = f"lowest {doc.min_confidence:.2f}"
    return f"{name}: {label} under {doc.threshold:.2f} or with little text read ({lowest})"
