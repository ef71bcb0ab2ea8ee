"""The HTML report's per-document view (issue 19, item 4): unresolved documents and those that needed
escalation, their text with the accepted values (their spans) and the rejected values highlighted,
escaped, cut when long, and nothing shown for a document recorded with store_text off; on both
ledger engines, and in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from extractkit import Extractor, FewShot, ZeroShot
from extractkit.batch import BatchRunner
from extractkit.ledger import Ledger
from extractkit.report import build_report, read_documents, report_html
from extractkit.report._documents import MAX_SHOWN_CHARS, segments

from .conftest import Invoice
from .fakes import BASE_URL, completion
from .test_report_html import run_chromium

EXAMPLE = [{"input": "From: A AG\nTotal: 1.00", "output": {"issuer": "A AG", "total": 1.0}}]
ESCALATED = "Invoice from ACME Ltd.\nTotal: 1.249,50 EUR\nThank you, ACME Ltd\n"
HOSTILE = ("<script>document.title='pwned-by-doc'</script>\nSeller: Globex Corporation\n"
           "Amount due 77,10\n<img src=x onerror=\"document.title='pwned-by-img'\">\n")  # fmt: skip
LONG = "Seller: Initech LLC\n" + "filler <b>line</b>\n" * (MAX_SHOWN_CHARS // 18 + 100) + "Total 5.00\n"


def responder(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    text = body["messages"][-1]["content"]
    few = body["model"] == "few-m"
    if "ACME" in text:  # the first tier answers a name the document does not hold; the second is right
        value = {"issuer": "ACME Ltd", "total": 1249.5} if few else {"issuer": "Nobody GmbH", "total": 1249.5}
    elif "Globex" in text:  # both send a total that is no number: refused, and it is in the text
        value = {"issuer": "Globex Corp", "total": "Amount due 77,10"}
    else:
        value = {"issuer": "Initech LLC", "total": 6.0}  # 6.00 is not in the text: ungrounded
    return httpx.Response(200, json=completion(value))


def chain() -> Extractor[Invoice]:
    return Extractor(Invoice, tiers=[
        ZeroShot(name="zero", model="zero-m", base_url=BASE_URL, max_reasks=0),
        FewShot(name="few", model="few-m", base_url=BASE_URL, max_reasks=0, examples=EXAMPLE),
    ])  # fmt: skip


def record(ledger: Ledger, tmp_path, mock_api) -> None:
    mock_api.post("/chat/completions").mock(side_effect=responder)
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    for name, text in (("escalated.txt", ESCALATED), ("hostile.txt", HOSTILE), ("long.txt", LONG)):
        (docs / name).write_text(text, encoding="utf-8")
    ex = chain()
    summary = asyncio.run(BatchRunner(ex, ledger, concurrency=1).run([docs]))  # in name order
    assert (summary.ok, summary.failed) == (1, 2)
    ex.close()


def test_the_view_highlights_accepted_and_rejected_values(mock_api, tmp_path, ledger_target):
    with Ledger(ledger_target) as ledger:
        record(ledger, tmp_path, mock_api)
        views = {v.title.rsplit("/", 1)[-1]: v for v in read_documents(ledger)}
    assert list(views) == ["long.txt", "hostile.txt", "escalated.txt"]  # unresolved first, newest first
    esc = views["escalated.txt"]
    assert esc.reason == "resolved by few after 2 attempts (re-asked or escalated)" and esc.stored
    marked = [(s.kind, s.label, s.text) for s in esc.segments if s.kind]
    assert marked == [("accepted", "issuer", "ACME Ltd"), ("accepted", "total", "1.249,50"),
                      ("accepted", "issuer", "ACME Ltd")]  # fmt: skip
    assert "".join(s.text for s in esc.segments) == ESCALATED.strip()  # the whole text (as loaded), in order
    rejected = [m for m in esc.marks if m.kind == "rejected"]
    assert [(m.field, m.value, m.where, m.source) for m in rejected] == [
        ("issuer", "Nobody GmbH", "not in the text shown", "zero #1 ungrounded")]
    hostile = views["hostile.txt"]
    assert hostile.reason == "unresolved"
    assert [(s.kind, s.label, s.text) for s in hostile.segments if s.kind] == [
        ("rejected", "total", "Amount due 77,10")]
    long = views["long.txt"]
    assert long.shown_chars == MAX_SHOWN_CHARS < long.text_chars == len(LONG.strip())
    assert sum(len(s.text) for s in long.segments) == MAX_SHOWN_CHARS

    with Ledger(ledger_target) as ledger:
        html = report_html(build_report(ledger), read_documents(ledger))
    assert "<script" not in html.lower() and "<img" not in html and "<b>line</b>" not in html
    assert "&lt;script&gt;document.title=&#39;pwned-by-doc&#39;&lt;/script&gt;" in html
    assert '<mark class="accepted" title="issuer">ACME Ltd</mark>' in html
    assert '<mark class="rejected" title="total">Amount due 77,10</mark>' in html
    assert f"The first {MAX_SHOWN_CHARS} of {len(LONG.strip())} characters are shown." in html
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    dom = run_chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom.stdout, re.S)
    assert title is not None and "pwned" not in title.group(1)
    assert 'id="documents-legend"' in dom.stdout and len(re.findall(r'<section class="document"', dom.stdout)) == 3
    assert len(re.findall(r'<mark class="accepted"', dom.stdout)) == 3 + 1  # the legend's own
    assert len(re.findall(r'<mark class="rejected"', dom.stdout)) == 1 + 1
    assert "<img" not in dom.stdout and "&lt;img src=x" in dom.stdout


def test_a_document_recorded_without_its_text_shows_no_text_and_no_values(mock_api, tmp_path):
    with Ledger(tmp_path / "l.sqlite3", store_text=False) as ledger:
        record(ledger, tmp_path, mock_api)
        views = read_documents(ledger)
        html = report_html(build_report(ledger), views)
    assert len(views) == 3 and not any(v.stored or v.segments or v.marks for v in views)
    view = html[html.index('<h2 id="documents">') :]
    assert view.count("recorded with store_text off") == 3
    for secret in ("Nobody GmbH", "Amount due 77,10", "Globex", "1.249,50", "ACME"):
        assert secret not in view  # (the report's unresolved table shows Result.error, as before)


def test_the_cli_report_page_has_the_view(mock_api, tmp_path):
    """``report --html`` reads the view from the ledger (and --json does not carry the texts)."""
    from typer.testing import CliRunner

    from extractkit.cli import app

    target = tmp_path / "l.sqlite3"
    with Ledger(target) as ledger:
        record(ledger, tmp_path, mock_api)
    page = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "--ledger", str(target), "--html", str(page), "--json"])
    assert result.exit_code == 0, result.output
    assert 'id="documents-legend"' in page.read_text(encoding="utf-8")
    assert "Globex Corporation" not in result.stdout


def test_overlapping_highlights_keep_accepted_values_and_stay_in_order():
    text = "abcdefghij"
    got = segments(text, [(2, 5, "rejected", "a"), (3, 6, "accepted", "b"), (3, 6, "accepted", "c"),
                          (0, 1, "rejected", "d"), (8, 10, "accepted", "e"), (7, 9, "rejected", "f")])  # fmt: skip
    assert [(s.text, s.kind, s.label) for s in got] == [
        ("a", "rejected", "d"), ("bc", None, ""), ("def", "accepted", "b, c"), ("gh", None, ""),
        ("ij", "accepted", "e")]  # fmt: skip


@pytest.mark.parametrize("n", [2_000, 20_000])
def test_highlighting_many_values_is_not_quadratic(n, monkeypatch):
    """Each range is checked against its neighbours only (a sorted list), not against every range placed."""
    import extractkit.report._documents as documents

    compared = {"n": 0}
    real = documents.bisect.bisect_right

    def counted(a, x):
        compared["n"] += 1
        return real(a, x)

    monkeypatch.setattr(documents.bisect, "bisect_right", counted)
    text = "x" * (3 * n)
    got = segments(text, [(3 * i, 3 * i + 2, "accepted", f"f{i}") for i in range(n)])
    assert len([s for s in got if s.kind]) == n and compared["n"] == n
