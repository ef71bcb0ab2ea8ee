"""The HTML report's "Documents to review" (issue 19, item 4) lists the low-confidence documents too:
a document resolved at its first attempt whose OCR'd pages are under the confidence threshold (or read
little text) is shown, its reason naming the pages; a document read from its text layer is not; on
both ledger engines."""

from __future__ import annotations

from extractkit._pages import Page
from extractkit.ledger import Ledger
from extractkit.report import read_documents

from .ledger_fixtures import chain, result

TEXT = "Invoice from ACME Ltd\nTotal: 12.50 EUR\n" + "line of text\n" * 20


def test_low_confidence_ocr_documents_are_to_review(ledger_target):
    ex = chain(("zero_shot",))
    pages = {
        "scan.pdf": (Page(1, 0, 150, "ocr", 0.95), Page(2, 150, 280, "ocr", 0.55)),
        "clean-scan.pdf": (Page(1, 0, 280, "ocr", 0.97),),
        "text.pdf": (Page(1, 0, 280, "text"),),
    }
    with Ledger(ledger_target) as led:
        run = led.start_run("batch")
        for i, (path, pp) in enumerate(pages.items()):
            res = result(ex, "zero", path, {"zero_shot": 0.001})  # resolved at its first attempt
            led.record(ex, res, text=TEXT + str(i), run_id=run, path=path, doc_type="pdf", pages=pp)
        led.finish_run(run, "done")
        views = read_documents(led)
    assert [v.title for v in views] == ["scan.pdf"]  # one attempt each: only the low OCR page makes it one
    assert views[0].reason == "OCR to check on page 2 (low confidence or little text read)"
