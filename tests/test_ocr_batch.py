"""OCR inside a batch: it runs in worker threads while the batch keeps sending the other documents'
requests; the document's identity, its text sources in the ledger (``document_sources``, both
engines), and the report's count of OCR'd documents and list of low-confidence pages."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from rich.console import Console

from extractkit import EscalationPolicy, Extractor, RetryPolicy, ZeroShot
from extractkit._pages import Page
from extractkit.batch import _ocr
from extractkit.ledger import MIGRATIONS, PG_MIGRATIONS, Ledger
from extractkit.report import build_report, print_report, report_html

from .conftest import Invoice
from .fakes import FakeLLMServer, completion
from .ledger_fixtures import chain, result

OCR_TEXT = "From: Scan Co\nTotal: 12.50"
OTHERS = 4


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(buf, "PNG")
    return buf.getvalue()


def document_of(body: dict[str, Any]) -> str:
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    return user.rsplit("<document>", 1)[-1]


def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    doc = document_of(body)
    issuer = doc.split("From: ", 1)[1].split("\n", 1)[0].strip()
    total = float(doc.split("Total: ", 1)[1].split()[0])
    return 200, completion({"issuer": issuer, "total": total}), {}


def extractor(base_url: str, ledger: Path | str) -> Extractor[Invoice]:
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=1))
    return Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=base_url, max_reasks=0)],
                     ledger=ledger, policy=policy)  # fmt: skip


def test_the_batch_keeps_sending_other_documents_while_a_page_is_read(tmp_path, monkeypatch):
    """The (fake) OCR of the image waits until the provider has answered every other document: had
    it run on the event loop, nothing else could be sent and it would wait in vain."""
    others_answered = threading.Event()
    answered: list[str] = []
    waited: list[bool] = []

    def responder(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        got = answer(body)
        answered.append(document_of(body).split("From: ", 1)[1].split("\n", 1)[0])
        if sum(a != "Scan Co" for a in answered) == OTHERS:
            others_answered.set()
        return got

    def slow_read(image: Any) -> _ocr.Read:
        waited.append(others_answered.wait(timeout=120))  # generous: the loop must serve the others
        return _ocr.Read(OCR_TEXT, 0.7, 0.6)

    monkeypatch.setattr(_ocr, "read", slow_read)
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a-scan.png").write_bytes(png_bytes())  # first in the walk's order
    for i in range(OTHERS):
        (folder / f"doc{i}.txt").write_text(f"From: Company {i} Ltd\nTotal: {i}.00\n")
    ledger = tmp_path / "ledger.sqlite3"
    with FakeLLMServer(responder) as server, extractor(server.base_url, ledger) as ex:
        items = list(ex.extract_many([folder], concurrency=OTHERS + 1))
        assert waited == [True]
        assert answered[-1] == "Scan Co" and len(answered) == OTHERS + 1  # the others first
        assert all(it.ok for it in items), [(it.path, it.error) for it in items]
        scan = next(it for it in items if it.path and it.path.endswith("a-scan.png"))
        assert scan.value == Invoice(issuer="Scan Co", total=12.5)
        # identity from the text and the file's bytes, the same in the ledger as in the loader
        file_sha = hashlib.sha256((folder / "a-scan.png").read_bytes()).hexdigest()
        sha = hashlib.sha256(f"{OCR_TEXT}\0{file_sha}".encode()).hexdigest()
        assert scan.result is not None and scan.result.document_sha256 == sha
        # a rerun finds it in the ledger by that identity: nothing is sent again
        before = len(server.requests)
        again = list(ex.extract_many([folder], concurrency=OTHERS + 1))
        assert len(server.requests) == before and all(it.resumed for it in again)
    with Ledger(ledger) as led:
        [row] = [dict(r) for r in led.query("SELECT * FROM document_sources")]
    assert row["document_sha256"] == sha
    assert (row["source"], row["n_pages"], row["ocr_pages"], row["ocr_mean"], row["ocr_min"]) == (
        "ocr", 1, 1, 0.7, 0.7)  # fmt: skip
    assert (row["low_threshold"], json.loads(row["low_pages"])) == (0.8, [1])
    assert json.loads(row["pages_json"]) == [[1, "ocr", 0.7]]


def test_the_runner_loads_scanned_documents_off_the_event_loop(tmp_path, monkeypatch):
    """``_load`` hands an image (and a PDF) to a worker thread: OCR never runs on the loop."""
    import asyncio

    from extractkit.batch import _runner

    where: list[bool] = []

    def read(image: Any) -> _ocr.Read:
        try:
            asyncio.get_running_loop()
            where.append(True)
        except RuntimeError:
            where.append(False)
        return _ocr.Read("Total: 1.00", 0.99, 0.99)

    monkeypatch.setattr(_ocr, "read", read)
    path = tmp_path / "small.png"
    path.write_bytes(png_bytes())
    doc = asyncio.run(_runner._load(path, "image"))
    assert doc.text == "Total: 1.00" and where == [False]


# -- the ledger: document_sources on both engines -----------------------------------------------------


def test_0012_document_sources_is_a_migration_of_both_engines():
    for migrations in (MIGRATIONS, PG_MIGRATIONS):
        names = [n for n, _ in migrations]
        assert names.index("0012_document_sources") == names.index("0011_batch_waves") + 1


PAGES = {
    "text.pdf": (Page(1, 0, 100, "text"), Page(2, 120, 200, "text")),
    "scan.pdf": (Page(1, 0, 100, "ocr", 0.95), Page(2, 120, 200, "ocr", 0.55), Page(3, 220, 300, "ocr", 0.75)),
    "mixed.pdf": (Page(1, 0, 100, "text"), Page(2, 120, 200, "ocr", 0.99), Page(3, 200, 200, "none")),
}


def recorded(ledger_target: str, low: float = 0.8) -> dict[str, Any]:
    ex = chain(("zero_shot",))
    with Ledger(ledger_target, ocr_low_confidence=low) as led:
        run = led.start_run("batch")
        for path, pages in PAGES.items():
            res = result(ex, "zero", path, {"zero_shot": 0.001})
            led.record(ex, res, text="x" * 300, run_id=run, path=path, doc_type="pdf", pages=pages)
        res = result(ex, "zero", "plain.txt", {"zero_shot": 0.001})
        led.record(ex, res, text="plain text", run_id=run, path="plain.txt", doc_type="txt")  # no pages
        led.finish_run(run, "done")
        rows = {r["source"]: dict(r) for r in led.query("SELECT * FROM document_sources")}
        return {"rows": rows, "report": build_report(led)}


def test_each_document_records_where_its_text_came_from(ledger_target):
    got = recorded(ledger_target)
    rows = got["rows"]
    assert set(rows) == {"text", "ocr", "mixed"}  # the plain text file has no pages: no row
    scan = rows["ocr"]
    assert (scan["n_pages"], scan["ocr_pages"], scan["ocr_min"]) == (3, 3, 0.55)
    assert scan["ocr_mean"] == pytest.approx(0.75)
    assert json.loads(scan["low_pages"]) == [2, 3]  # under 0.8
    mixed = rows["mixed"]
    # page 3 gave no text (none): listed to check, like a page OCR read little on
    assert (mixed["n_pages"], mixed["ocr_pages"], json.loads(mixed["low_pages"])) == (3, 1, [3])
    assert json.loads(mixed["pages_json"]) == [[1, "text", None], [2, "ocr", 0.99], [3, "none", None]]
    assert (rows["text"]["ocr_mean"], rows["text"]["ocr_min"]) == (None, None)


def test_the_low_confidence_threshold_is_the_ledgers_setting(tmp_path):
    rows = recorded(str(tmp_path / "l.sqlite3"), low=0.6)["rows"]
    assert json.loads(rows["ocr"]["low_pages"]) == [2] and rows["ocr"]["low_threshold"] == 0.6


# -- the report ---------------------------------------------------------------------------------------


def test_the_report_counts_ocr_documents_and_lists_low_confidence_pages(ledger_target):
    report = recorded(ledger_target)["report"]
    src = report["sources"]
    assert src["documents"] == {"mixed": 1, "ocr": 1, "text": 1}
    assert (src["ocr_documents"], src["ocr_pages"], src["low_confidence_documents"]) == (2, 4, 2)
    assert src["mean_confidence"] == pytest.approx((0.95 + 0.55 + 0.75 + 0.99) / 4, abs=1e-3)
    low, mixed = src["low_confidence"]
    assert (low["path"], low["pages"], low["min_confidence"], low["threshold"]) == ("scan.pdf", [2, 3], 0.55, 0.8)
    assert {q["name"] for q in report["queries"]} >= {"document_sources", "document_sources_low"}
    console = Console(record=True, width=200)
    print_report(report, console)
    out = console.export_text()
    assert "3 documents with pages: 1 mixed (text layer and OCR), 1 by OCR, 1 from the text layer" in out
    assert (mixed["path"], mixed["pages"]) == ("mixed.pdf", [3])
    assert "low OCR confidence: scan.pdf: pages 2, 3 under 0.80 or with little text read (lowest 0.55)" in out
    assert "low OCR confidence: mixed.pdf: page 3: little or no text read (under 20 characters)" in out
    html = report_html(report)
    assert 'id="low-confidence"' in html and "scan.pdf" in html and "2, 3 of 3" in html
    assert "2 with low-confidence OCR pages" in html


def test_a_report_without_documents_with_pages_is_as_before(tmp_path):
    ex = chain(("zero_shot",))
    with Ledger(tmp_path / "l.sqlite3") as led:
        led.record(ex, result(ex, "zero", "a.txt", {"zero_shot": 0.001}), text="a", path="a.txt")
        report = build_report(led)
    assert "sources" not in report
    console = Console(record=True, width=200)
    print_report(report, console)
    assert "with pages" not in console.export_text() and 'id="sources"' not in report_html(report)


def test_the_low_confidence_table_renders_in_headless_chromium_with_paths_as_text(tmp_path):
    from .test_report_html import run_chromium

    ex = chain(("zero_shot",))
    evil = "<img src=x onerror=alert(1)>scan.pdf"
    with Ledger(tmp_path / "l.sqlite3") as led:
        led.record(ex, result(ex, "zero", "evil", {"zero_shot": 0.001}), text="t", path=evil, doc_type="pdf",
                   pages=(Page(1, 0, 1, "ocr", 0.42),))  # fmt: skip
        html = report_html(build_report(led))
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    dom = run_chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="low-confidence"' in dom.stdout and 'id="sources"' in dom.stdout
    assert "&lt;img src=x onerror=alert(1)&gt;scan.pdf" in dom.stdout and "<img" not in dom.stdout
    assert "1 by OCR; 1 OCR'd page, mean confidence 0.42; 1 with low-confidence OCR pages" in dom.stdout
