"""Fixes from the audit of issue 19 (notes/audit19.md) on scanned pages: a page OCR cannot read still
reaches a vision tier (M6), a page OCR read almost nothing on is listed to check (M3), a page left
unread without the ocr extra shows in the ledger and the report (L4), a text file named .png says so
without a memory address (L7)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pypdfium2 as pdfium
import pytest
from PIL import Image
from rich.console import Console

from extractkit import DocumentError, Extractor
from extractkit._pages import Page, low_pages
from extractkit.batch import _ocr
from extractkit.batch._loaders import load
from extractkit.ledger import Ledger
from extractkit.report import build_report, print_report, report_html

from .conftest import Invoice
from .fakes import completion
from .ledger_fixtures import chain, result
from .test_vision import ANSWER, vision_tier


def blank_pdf(tmp_path: Path) -> Path:
    """One blank page without a text layer: nothing for OCR to read (small: read in a moment)."""
    pdf = pdfium.PdfDocument.new()
    pdf.new_page(200, 200)
    buf = io.BytesIO()
    pdf.save(buf)
    path = tmp_path / "blank.pdf"
    path.write_bytes(buf.getvalue())
    return path


# -- M6: a page OCR reads nothing on goes to a vision tier with its image -----------------------------


def test_a_page_ocr_reads_nothing_on_is_loaded_with_its_image_when_images_are_asked_for(tmp_path):
    path = blank_pdf(tmp_path)
    with pytest.raises(DocumentError) as info:
        load(path, "pdf")  # no vision tier: nothing to send
    assert info.value.kind == "no_text"
    doc = load(path, "pdf", images=True)
    assert doc.text == "" and doc.pages == (Page(1, 0, 0, "none"),)
    assert len(doc.images) == 1 and doc.images[0].startswith(b"\x89PNG")
    png = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), "white").save(png, "PNG")
    with pytest.raises(DocumentError) as info:
        load(png, "image")
    assert info.value.kind == "no_text"
    img = load(png, "image", images=True)
    assert img.text == "" and len(img.images) == 1 and img.pages == (Page(1, 0, 0, "none"),)
    assert img.sha256 != doc.sha256  # the file's bytes are its identity


def test_extract_file_sends_a_page_ocr_cannot_read_to_an_images_tier(tmp_path, mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(ANSWER)))
    path = blank_pdf(tmp_path)
    with Extractor(Invoice, [vision_tier(input="images")]) as ex:
        res = ex.extract_file(path)
    assert len(route.calls) == 1
    parts = json.loads(route.calls.last.request.content)["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    assert res.ok and res.value == Invoice(**ANSWER)


# -- M3 and L4: pages with little or no text are listed to check -------------------------------------


def test_a_short_ocr_page_is_low_whatever_its_score():
    text = "@Saeco"
    assert low_pages([Page(1, 0, 6, "ocr", 0.97)], 0.8, text) == [1]
    line = "Invoice No. 12345 Total: 99.50 EUR"  # 28 non-space characters: one line is enough
    assert low_pages([Page(1, 0, len(line), "ocr", 0.97)], 0.8, line) == []
    spaced = "a b c d e f g h i j k l m n o p q r s"  # 19 non-space characters in 37
    assert low_pages([Page(1, 0, len(spaced), "ocr", 0.97)], 0.8, spaced) == [1]
    from extractkit._pages import MIN_PAGE_CHARS

    assert MIN_PAGE_CHARS == 20
    long = "x" * 100
    assert low_pages([Page(1, 0, 5, "text")], 0.8, long) == []  # a short text-layer page is as written


def _report(tmp_path: Path, name: str, text: str, pages: tuple[Page, ...]) -> tuple[dict, str, str]:
    ex = chain(("zero_shot",))
    with Ledger(tmp_path / "l.sqlite3") as led:
        led.record(ex, result(ex, "zero", name, {"zero_shot": 0.001}), text=text, path=name, doc_type="pdf",
                   pages=pages)  # fmt: skip
        [row] = [dict(r) for r in led.query("SELECT * FROM document_sources")]
        report = build_report(led)
    console = Console(record=True, width=200)
    print_report(report, console)
    return row, console.export_text(), report_html(report)


def test_a_page_read_as_a_few_characters_at_a_high_score_is_in_the_report(tmp_path):
    row, out, html = _report(tmp_path, "blurry.png", "@Saeco", (Page(1, 0, 6, "ocr", 0.9691),))
    assert json.loads(row["low_pages"]) == [1]
    assert "blurry.png: page 1: little or no text read (under 20 characters)" in out
    assert 'id="low-confidence"' in html and "blurry.png" in html


def test_a_page_left_unread_without_the_ocr_extra_is_in_the_report(tmp_path):
    text = "Invoice 7 from Acme Ltd, total 12.50 EUR, due in 30 days"
    row, out, _ = _report(tmp_path, "mixed.pdf", text, (Page(1, 0, len(text), "text"), Page(2, len(text),
                                                                                          len(text), "none")))
    assert json.loads(row["low_pages"]) == [2]
    assert "mixed.pdf: page 2: little or no text read" in out


# -- L7: a text file named .png ------------------------------------------------------------------------


@pytest.mark.skipif(_ocr.available() is not None, reason="needs the ocr extra")
def test_a_text_file_named_png_says_it_is_not_an_image_without_a_memory_address(tmp_path):
    path = tmp_path / "text_as.png"
    path.write_text("Invoice 7\nTotal: 12.50\n")
    with pytest.raises(DocumentError) as info:
        load(path, "image")
    assert info.value.kind == "corrupt_image"
    assert "0x" not in str(info.value) and "object at" not in str(info.value)
    assert str(info.value).endswith("text_as.png: not an image (it looks like text)")


def test_a_pdf_without_text_and_without_the_extra_still_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr", None)
    _ocr.reset()
    try:
        with pytest.raises(DocumentError) as info:
            load(blank_pdf(tmp_path), "pdf", images=True)
        assert info.value.kind == "ocr_unavailable"
    finally:
        _ocr.reset()


# -- M2: a rerun over done scans does not OCR them again ----------------------------------------------


def test_0015_source_files_is_a_migration_of_both_engines():
    from extractkit.ledger import MIGRATIONS, PG_MIGRATIONS

    for migrations in (MIGRATIONS, PG_MIGRATIONS):
        names = [n for n, _ in migrations]
        assert names.index("0015_source_files") == names.index("0014_value_spans") + 1


def test_a_rerun_finds_a_done_scan_by_its_file_and_does_not_ocr_it_again(ledger_target, tmp_path, monkeypatch):
    from .fakes import FakeLLMServer
    from .test_ocr_batch import answer, extractor, png_bytes

    reads: list[int] = []

    def read(image: object) -> _ocr.Read:
        reads.append(1)
        return _ocr.Read("From: Scan Co\nTotal: 12.50", 0.99, 0.99)

    monkeypatch.setattr(_ocr, "read", read)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "scan.png").write_bytes(png_bytes())
    (folder / "note.txt").write_text("From: Text Co\nTotal: 1.00\n")
    with FakeLLMServer(answer) as server, extractor(server.base_url, ledger_target) as ex:
        first = {Path(it.path).name: it for it in ex.extract_many([folder])}
        assert first["scan.png"].ok and len(reads) == 1 and len(server.requests) == 2
        again = {Path(it.path).name: it for it in ex.extract_many([folder])}
        assert len(reads) == 1  # found by the file's bytes: not OCR'd again
        assert len(server.requests) == 2 and all(it.resumed for it in again.values())
        assert again["scan.png"].value == first["scan.png"].value
        assert again["scan.png"].sha256 == first["scan.png"].sha256
        # the dry run finds it the same way
        import asyncio

        from extractkit.batch._estimate import estimate

        with Ledger(ledger_target) as led:
            est = asyncio.run(estimate(ex, [folder], ledger=led))
        assert len(reads) == 1
        assert {Path(d.path).name: d.status for d in est.documents} == {"scan.png": "resumed",
                                                                       "note.txt": "resumed"}  # fmt: skip
        # a byte copy under another name resumes too; new bytes are read again
        (folder / "copy.png").write_bytes(png_bytes())
        Image.new("RGB", (64, 48), "gray").save(folder / "other.png", "PNG")
        third = {Path(it.path).name: it for it in ex.extract_many([folder])}
        assert len(reads) == 2  # only other.png
        assert third["copy.png"].resumed and third["other.png"].ok
    with Ledger(ledger_target) as led:
        n = led.query("SELECT COUNT(*) AS n FROM source_files")[0]["n"]
    assert n == 2  # scan.png (and its copy, the same bytes) and other.png


def test_enqueue_finds_a_done_scan_by_its_file_and_does_not_ocr_it_again(pg_url, tmp_path, monkeypatch):
    """Audit 19b, N1: on a PostgreSQL ledger `extract` queues every document first, and queuing read
    (OCR'd) each scan again to learn its identity, even when the chain had finished it. A scan whose
    file bytes the ledger knows is queued by the identity recorded for it: not OCR'd again."""
    import asyncio

    from extractkit.batch import Worker, aenqueue
    from extractkit.ledger import WorkQueue

    from .fakes import FakeLLMServer
    from .test_ocr_batch import answer, extractor, png_bytes

    reads: list[int] = []

    def read(image: object) -> _ocr.Read:
        reads.append(1)
        return _ocr.Read("From: Scan Co\nTotal: 12.50", 0.99, 0.99)

    monkeypatch.setattr(_ocr, "read", read)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "scan.png").write_bytes(png_bytes())
    with FakeLLMServer(answer) as server, WorkQueue(pg_url) as queue, Ledger(pg_url) as led:
        ex = extractor(server.base_url, pg_url)

        async def round_() -> Any:
            async with ex:
                queued = await aenqueue(ex, queue, [folder], ledger=led)
                await Worker(ex, led, queue, lease_s=30).run()
                return queued

        first = asyncio.run(round_())
        assert len(server.requests) == 1 and reads  # read when queued (and by the worker)
        n = len(reads)
        again = asyncio.run(round_())
        assert len(reads) == n  # found by the file's bytes: neither queuing nor the worker read it
        assert len(server.requests) == 1
        assert again.shas == first.shas  # the same identity as when it was read
