"""Audit 19, M7: the checklist's "Input pipeline clean?" reads the report's ``sources``: documents
OCR'd with pages under the confidence threshold make it "no" (which and how many), OCR'd documents
all above it are said to be so, and without OCR it says "no OCR'd documents in scope" (it said "not
measured (no OCR yet)" whatever the ledger held, and "yes" beside a listed low-confidence page).
The terminal, JSON and HTML checklists render the one model: they say the same. Both engines."""

from __future__ import annotations

import html
from typing import Any

from rich.console import Console

from extractkit._pages import Page
from extractkit.ledger import Ledger
from extractkit.report import checklist_csv, print_report, read_report, report_html

from .ledger_fixtures import chain, result

# pages of TEXT_OF's text, each with more than 20 characters read (a page with fewer is listed to
# check whatever its score: tests/test_ocr_fixes.py)
SCAN = (Page(1, 0, 40, "ocr", 0.95), Page(2, 42, 80, "ocr", 0.55))  # page 2 under 0.8
CLEAN_SCAN = (Page(1, 0, 40, "ocr", 0.97),)
TEXT = (Page(1, 0, 40, "text"),)


def report_of(target: str, documents: dict[str, tuple[Page, ...] | None]) -> Any:
    ex = chain(("zero_shot",))
    with Ledger(target, ocr_low_confidence=0.8) as led:
        run = led.start_run("batch")
        for path, pages in documents.items():
            res = result(ex, "zero", path, {"zero_shot": 0.001})
            if pages is None:
                led.record(ex, res, text=f"text of {path}", run_id=run, path=path, doc_type="txt")
            else:
                text = f"text of {path}: " + "an invoice line read by OCR. " * 3
                led.record(ex, res, text=text, run_id=run, path=path, doc_type="pdf", pages=pages)
        led.finish_run(run, "done")
        return read_report(led)


def input_item(report: Any) -> Any:
    return {i.key: i for i in report.checklist.items}["input"]


def rendered(report: Any) -> tuple[str, str, str]:
    console = Console(record=True, width=400)
    print_report(report, console)
    return console.export_text(), html.unescape(report_html(report)), checklist_csv(report)


def test_a_low_confidence_ocr_page_makes_the_input_pipeline_not_clean(ledger_target):
    docs = {"scan.pdf": SCAN, "clean.pdf": CLEAN_SCAN, "text.pdf": TEXT, "plain.txt": None}
    report = report_of(ledger_target, docs)
    assert report.sources is not None and report.sources.low_confidence_documents == 1  # listed by the report
    item = input_item(report)
    assert item.answer == "no"  # was "yes": nothing lost, so the low-confidence page did not count
    assert item.numbers["low_confidence_ocr"] == 1 and item.numbers["ocr_documents"] == 2
    assert item.numbers["lost"] == 0
    assert "no OCR yet" not in item.detail and "not measured" not in item.detail
    said = "low-confidence OCR: 1 of 2 OCR'd documents (3 pages, mean confidence 0.82) has pages under"
    assert said in item.detail
    assert "scan.pdf: page 2 under 0.80 or with little text read (lowest 0.55)" in item.detail
    assert "1 OCR'd document has pages under the OCR confidence threshold" in report.checklist.conclusion
    assert "loses" not in report.checklist.conclusion  # nothing was lost: that is not the reason
    assert not report.checklist.complete
    terminal, page, csv = rendered(report)
    for out in (terminal, page, csv):  # one model, the same words everywhere
        assert said in out and "scan.pdf: page 2 under 0.80" in out and "no OCR yet" not in out
    assert f"[no] {item.question}" in terminal
    as_json = input_item(type(report).from_dict(report.to_dict()))
    assert (as_json.answer, as_json.detail) == (item.answer, item.detail)


def test_confident_ocr_keeps_the_pipeline_clean_and_says_so(ledger_target):
    report = report_of(ledger_target, {"clean.pdf": CLEAN_SCAN, "text.pdf": TEXT})
    item = input_item(report)
    assert item.answer == "yes"
    assert (item.numbers["ocr_documents"], item.numbers["low_confidence_ocr"]) == (1, 0)
    assert "1 OCR'd document (1 page, mean confidence 0.97), none with a page under" in item.detail
    assert "no OCR yet" not in item.detail


def test_without_ocr_the_checklist_says_no_ocrd_documents(ledger_target):
    report = report_of(ledger_target, {"text.pdf": TEXT, "plain.txt": None})
    item = input_item(report)
    assert item.answer == "yes"
    assert "no OCR'd documents in scope" in item.detail and "no OCR yet" not in item.detail
    assert (item.numbers["ocr_documents"], item.numbers["low_confidence_ocr"]) == (0, 0)
    terminal, page, _ = rendered(report)
    assert "no OCR'd documents in scope" in terminal and "no OCR'd documents in scope" in page
