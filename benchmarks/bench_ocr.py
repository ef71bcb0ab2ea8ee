"""OCR of scanned pages: every page of the shared corpus's PDFs rendered at 200 dpi into an
image-only PDF, read back by extractkit's loader (rapidocr, the ``ocr`` extra). Per document: the
character error rate of the OCR text against the text layer of the same pages, and pages per second.

    python -m benchmarks.bench_ocr [--size tiny|full]

The CER is the edit distance between the two texts with all whitespace removed (line breaks and
spacing differ between a text layer and OCR lines and are not errors), divided by the text layer's
length; a page whose columns OCR reads in another order than the text layer counts that as error
too, so the figure is an upper bound on misread characters; the word recall beside it (the text
layer's words that OCR read exactly, in any order) does not depend on reading order. Pages per second: wall clock of
``load`` on the image-only PDF (rendering included), one document at a time.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections import Counter
from pathlib import Path

import pypdfium2 as pdfium

from benchmarks._common import ROOT, args, report
from extractkit.batch import load

CORPUS = ROOT.parent / "shared" / "corpora" / "invoice2data"
SIZES = {"tiny": {"documents": ["AzureInterior"]}, "full": {"documents": None}}  # None: every PDF
DPI = 200


def scanned(pdf: Path, dpi: int = DPI) -> bytes:
    doc = pdfium.PdfDocument(str(pdf))
    try:
        images = [doc[i].render(scale=dpi / 72).to_pil() for i in range(len(doc))]
    finally:
        doc.close()
    buf = io.BytesIO()
    images[0].save(buf, "PDF", resolution=dpi, save_all=True, append_images=images[1:])
    return buf.getvalue()


_SPACE = re.compile(r"\s+")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), two rows at a time."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(ocr: str, reference: str) -> float:
    o, r = _SPACE.sub("", ocr), _SPACE.sub("", reference)
    return edit_distance(o, r) / max(len(r), 1)


def word_recall(ocr: str, reference: str) -> float:
    """The share of the text layer's words (whitespace-separated, with repeats) that OCR read
    exactly, in any order: reading order does not count here."""
    got, want = Counter(ocr.split()), Counter(reference.split())
    return sum((got & want).values()) / max(sum(want.values()), 1)


def main() -> None:
    ns, size = args(__doc__.split("\n\n")[0], SIZES)
    names = size["documents"] or sorted(p.stem for p in CORPUS.glob("*.pdf"))
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_ocr_{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    rows, per_doc = [], []
    total_pages, total_s = 0, 0.0
    load(CORPUS / f"{names[0]}.pdf", "pdf", images=False)  # warm imports (not the OCR engine)
    for name in names:
        reference = load(CORPUS / f"{name}.pdf", "pdf")
        path = work / f"{name}-scanned.pdf"
        path.write_bytes(scanned(CORPUS / f"{name}.pdf"))
        t0 = time.perf_counter()
        doc = load(path, "pdf")
        seconds = time.perf_counter() - t0
        pages = len(doc.pages)
        ref_pages = {p.number: reference.text[p.start : p.end] for p in reference.pages}
        errors = [cer(doc.text[p.start : p.end], ref_pages.get(p.number, "")) for p in doc.pages]
        chars = sum(len(_SPACE.sub("", t)) for t in ref_pages.values())
        weighted = sum(e * len(_SPACE.sub("", ref_pages.get(p.number, ""))) for e, p in zip(errors, doc.pages, strict=True))
        doc_cer = weighted / max(chars, 1)
        conf = [p.confidence for p in doc.pages if p.confidence is not None]
        recall = word_recall(doc.text, reference.text)
        per_doc.append({"document": name, "pages": pages, "seconds": round(seconds, 2),
                        "cer": round(doc_cer, 4), "page_cer": [round(e, 4) for e in errors],
                        "word_recall": round(recall, 4),
                        "mean_confidence": round(sum(conf) / len(conf), 4) if conf else None})  # fmt: skip
        rows.append({"measure": f"{name}: CER vs text layer ({pages} page{'s' if pages != 1 else ''})",
                     "value": round(doc_cer, 4), "baseline": None, "ratio": None, "target": ""})  # fmt: skip
        rows.append({"measure": f"  {name}: words of the text layer read exactly (any order)",
                     "value": round(recall, 4), "baseline": None, "ratio": None, "target": ""})  # fmt: skip
        total_pages += pages
        total_s += seconds
        path.unlink()
    mean_cer = sum(d["cer"] for d in per_doc) / len(per_doc)
    rows.append({"measure": "mean CER per document", "value": round(mean_cer, 4), "baseline": None,
                 "ratio": None, "target": ""})  # fmt: skip
    mean_recall = sum(d["word_recall"] for d in per_doc) / len(per_doc)
    rows.append({"measure": "mean word recall per document (any order)", "value": round(mean_recall, 4),
                 "baseline": None, "ratio": None, "target": ""})  # fmt: skip
    rows.append({"measure": f"pages per second ({os.cpu_count()} cpus, render + OCR)",
                 "value": round(total_pages / total_s, 3), "baseline": None, "ratio": None,
                 "target": ""})  # fmt: skip
    rows.append({"measure": "seconds per page", "value": round(total_s / total_pages, 2), "baseline": None,
                 "ratio": None, "target": ""})  # fmt: skip
    work.rmdir()
    report("ocr", ns, rows, {"documents": per_doc, "dpi": DPI, "pages": total_pages, "seconds": round(total_s, 2)})


if __name__ == "__main__":
    main()
