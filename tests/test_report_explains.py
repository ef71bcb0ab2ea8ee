"""Issue 14, section 5: the report explains why. Which fields fail and with what values (values kept
out when the ledger keeps no text), "price unknown" rather than "no valid extraction", a training
cost only on a fine-tuned tier, the minimum documents against the documents the evidence needs,
plurals, unreadable documents counted once each, and "and N more" under the unresolved list."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys

import httpx
import pytest
from rich.console import Console

from extractkit import Extractor, FewShot, ZeroShot
from extractkit.batch import BatchRunner
from extractkit.ledger import Ledger
from extractkit.report import (
    Economics,
    Scope,
    build_report,
    marginal_verdict,
    print_report,
    report_csv,
    report_html,
)

from .conftest import Invoice
from .fakes import BASE_URL, completion
from .ledger_fixtures import chain, populate
from .test_report_html import run_chromium

NOW = 1_800_000_000.0
SECRET = "sk-live" + "Z9y8X7w6V5u4T3s2"
MARKUP = "<i>Globex</i> Ltd"


def terminal(report: dict) -> str:
    out = io.StringIO()
    print_report(report, Console(file=out, width=220))
    return out.getvalue()


def doc(i: int) -> str:
    return f"From: Firm {i} GmbH\nTotal: 12.50\n"


def responder(request: httpx.Request) -> httpx.Response:
    """zero-shot: documents 0, 2 and 4 get an invented issuer (ungrounded), 1 and 3 a total that is
    not a number (fails validation), 5 an issuer holding a key; few-shot answers right."""
    body = json.loads(request.content)
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    i = int(user.rsplit("Firm ", 1)[1].split(" ", 1)[0])
    answer: dict = {"issuer": f"Firm {i} GmbH", "total": 12.5}
    if body["model"] == "zero-m":
        if i in (0, 2):
            answer["issuer"] = "Globex Ltd"
        elif i == 4:
            answer["issuer"] = MARKUP
        elif i in (1, 3):
            answer["total"] = "abc"
        else:
            answer["issuer"] = SECRET
    return httpx.Response(200, json=completion(answer, model=body["model"]))


def extract_six(ledger: Ledger) -> None:
    ex = Extractor(Invoice, ledger=ledger, tiers=[
        ZeroShot(model="zero-m", base_url=BASE_URL, max_reasks=0),
        FewShot(model="few-m", base_url=BASE_URL, max_reasks=0,
                examples=[{"input": "From: A AG\nTotal: 1.00", "output": {"issuer": "A AG", "total": 1.0}}]),
    ])  # fmt: skip
    for i in range(6):
        result = ex.extract(doc(i))
        assert result.ok and result.tier == "few_shot", result.error


EXPECTED = [
    {"tier": "zero_shot", "field": "issuer", "validation": 0, "ungrounded": 4, "failures": 4,
     "values": [{"value": "'Globex Ltd'", "n": 2}, {"value": repr(MARKUP), "n": 1},
                {"value": "'[REDACTED]'", "n": 1}]},
    {"tier": "zero_shot", "field": "total", "validation": 2, "ungrounded": 0, "failures": 2,
     "values": [{"value": "'abc'", "n": 2}]},
]  # fmt: skip


# -- 1. the per-field failure table ----------------------------------------------------------------


@pytest.mark.parametrize("scope", [Scope(), Scope(schema="Invoice")], ids=["current", "filtered"])
def test_field_failure_table_names_fields_outcomes_and_rejected_values(mock_api, scope, ledger_target):
    mock_api.post("/chat/completions").mock(side_effect=responder)
    ledger = Ledger(ledger_target)
    extract_six(ledger)
    report = build_report(ledger, scope)
    ff = report["field_failures"]
    assert ff["rows"] == EXPECTED and ff["values_hidden"] is None
    assert any(q["name"] == "rollup_fields" for q in report["queries"])
    text = terminal(report)
    assert "fields that failed most often" in text
    assert "'Globex Ltd' (2)" in text and "'abc' (2)" in text and SECRET not in text
    html = report_html(report)
    assert 'id="field-failures"' in html and "&#39;Globex Ltd&#39; (2)" in html and "<i>Globex" not in html
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert rows[0]["field_failures"] == "issuer:ungrounded=4 total:validation=2"
    from extractkit.report import field_failures_csv  # new: imported here so the test above fails alone

    fields = list(csv.DictReader(io.StringIO(field_failures_csv(report))))
    assert fields[0]["rejected_values"].startswith("'Globex Ltd' (2)") and fields[1]["validation"] == "2"
    assert SECRET not in json.dumps(report) + html + report_csv(report) + field_failures_csv(report)


def test_no_values_when_the_ledger_keeps_no_text(mock_api, tmp_path, ledger_target):
    from extractkit.report import field_failures_csv
    from extractkit.report._aggregate import VALUES_OFF, VALUES_SOME_OFF

    mock_api.post("/chat/completions").mock(side_effect=responder)
    path = ledger_target
    with Ledger(path, store_text=False) as ledger:
        extract_six(ledger)
        off = build_report(ledger)
    counts_only = [{**row, "values": None} for row in EXPECTED]
    assert off["field_failures"]["rows"] == counts_only
    assert off["field_failures"]["values_hidden"] == VALUES_OFF
    # opened again as the report CLI opens it (store_text left at its default): the documents were
    # recorded without their text, so their values stay out all the same
    with Ledger(path) as ledger:
        again = build_report(ledger)
    assert again["field_failures"]["rows"] == counts_only
    assert again["field_failures"]["values_hidden"] == VALUES_SOME_OFF
    for r in (off, again):
        shown = terminal(r) + report_html(r) + field_failures_csv(r) + json.dumps(r)
        assert "Globex" not in shown and "'abc'" not in shown
        assert "issuer" in terminal(r) and "not shown" in report_html(r)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extractkit", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_field_failures_in_every_cli_format_and_in_a_browser(mock_api, tmp_path, ledger_target):
    mock_api.post("/chat/completions").mock(side_effect=responder)
    path = ledger_target
    with Ledger(path) as ledger:
        extract_six(ledger)
    html, csv_path = tmp_path / "r.html", tmp_path / "r.csv"
    proc = cli("report", "--ledger", str(path), "--json", "--html", str(html), "--csv", str(csv_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["field_failures"]["rows"] == EXPECTED
    assert "issuer:ungrounded=4 total:validation=2" in csv_path.read_text()
    term = cli("report", "--ledger", str(path))
    assert term.returncode == 0 and "'Globex Ltd' (2)" in term.stdout and SECRET not in term.stdout
    dom = run_chromium(html, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    table = dom.stdout.split('id="field-failures"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 3 and "'Globex Ltd' (2)" in table and "'abc' (2)" in table
    assert "&lt;i&gt;Globex&lt;/i&gt; Ltd" in table and "<i>" not in table


# -- 2. price unknown, not "no valid extraction" ---------------------------------------------------


def test_cost_chart_says_price_unknown_for_a_tier_that_resolved_documents(ledger_target):
    ledger = Ledger(ledger_target)
    populate(ledger, {"zero": 10, "few": 5, "none": 1}, extractor=chain(("zero_shot", "few_shot")),
             costs={"few_shot": None})  # fmt: skip
    report = build_report(ledger, as_of=NOW)
    html = report_html(report)
    assert "<title>few_shot: price unknown</title>" in html
    assert "no valid extraction" not in html
    assert "<title>whole chain: price unknown</title>" in html
    text = terminal(report)
    assert "per valid extraction price unknown" in text


# -- 3. a training cost belongs to a fine-tuned tier -----------------------------------------------


def test_training_cost_is_not_applied_to_a_few_shot_tier(ledger_target):
    ledger = Ledger(ledger_target)
    populate(ledger, {"zero": 200, "few": 100, "none": 10}, extractor=chain(("zero_shot", "few_shot")))
    report = build_report(ledger, as_of=NOW, economics=Economics(training_cost=50))
    [v] = report["verdicts"]
    assert v["tier"] == "few_shot" and v["break_even_documents"] is None
    assert not any("training cost" in reason for reason in v["reasons"])
    assert report["rescue"][0]["break_even_documents"] is None
    assert any("applies to a fine-tuned tier only" in n for n in report["notes"])
    # a fine-tuned tier keeps it
    ft = marginal_verdict("ft", ["zero"], n=100, rescued=30, spend=0.3, economics=Economics(training_cost=50),
                          kind="fine_tuned")  # fmt: skip
    assert ft.break_even_documents == pytest.approx(50 / 0.597)


# -- 4. the minimum against what the evidence needs; plurals ---------------------------------------


def test_too_few_documents_says_which_number_is_the_minimum_and_which_the_evidence_needs():
    econ = Economics()
    # 1 of 12 rescued at $0.083 a document against a $2.00 failure: the bar is 4.2 %
    v = marginal_verdict("ft", ["zero"], n=12, rescued=1, spend=1.0, economics=econ)
    total = 12 + v.documents_needed
    assert total == 90
    assert "only 12 documents so far, below the minimum of 30 that any verdict needs" in v.sentence
    assert "which alone would mean 18 more" in v.sentence
    assert f"only after about {total} documents in all, so about {total - 12} more" in v.sentence
    # when the minimum is the larger number, it is the one given
    few = marginal_verdict("ft", ["zero"], n=12, rescued=1, spend=0.5, economics=econ)
    assert few.documents_needed == 18 and "so 18 more" in few.sentence and "within that minimum" in few.sentence


def test_one_document_is_singular_everywhere(ledger_target):
    v = marginal_verdict("ft", ["zero"], n=1, rescued=1, spend=0.0, economics=Economics())
    assert "1 of 1 document " in v.sentence and "1 documents" not in v.sentence
    assert any("only 1 document so far" in r for r in v.reasons)
    ledger = Ledger(ledger_target)
    populate(ledger, {"ft": 1})
    report = build_report(ledger, as_of=NOW, economics=Economics(min_documents=1))
    text = terminal(report) + report_html(report)
    assert "1 document (" in text and "a verdict needs 1 document" in text
    assert "1 documents" not in text and "1 chain config." in report_html(report)
    from extractkit.report import plural

    assert (plural(1, "document"), plural(2, "document"), plural(0, "document")) == (
        "1 document", "2 documents", "0 documents")  # fmt: skip
    assert (plural(1.4, "document"), plural(12_345, "document")) == ("1 document", "12,345 documents")


# -- 5. unreadable documents counted once each ------------------------------------------------------


def test_an_unreadable_document_met_by_two_runs_counts_once(tmp_path, ledger_target):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.txt").write_bytes(b"")
    (docs / "also-empty.txt").write_bytes(b"")
    ex = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, api_key="sk-test-unused")])
    with Ledger(ledger_target) as ledger:
        for _ in range(2):
            asyncio.run(BatchRunner(ex, ledger).run([docs / "empty.txt"]))
        report = build_report(ledger)
        assert report["document_errors"] == {"empty": 1}
        asyncio.run(BatchRunner(ex, ledger).run([docs]))  # a second empty file is a second document
        assert build_report(ledger)["document_errors"] == {"empty": 2}
    assert "unreadable documents (never sent): empty 1" in terminal(report)


# -- 6. "and N more" under the unresolved list -----------------------------------------------------


@pytest.mark.parametrize(("failed", "more"), [(8, "... and 3 more (--json and --html list the 8 most recent)"),
                                              (25, "... and 20 more (--json and --html list the 20 most recent; "
                                                   "the query `unresolved_examples` in --json, without its LIMIT, "
                                                   "lists them all)")])  # fmt: skip
def test_the_unresolved_list_says_how_many_more_and_where(failed, more, ledger_target):
    ledger = Ledger(ledger_target)
    populate(ledger, {"zero": 3, "none": failed})
    report = build_report(ledger, as_of=NOW)
    text = terminal(report)
    assert text.count("d/none-") == 5
    assert more in text
    html = report_html(report)
    if failed > 20:
        assert 'id="unresolved-more"' in html and "and 5 more" in html
    else:
        assert 'id="unresolved-more"' not in html

