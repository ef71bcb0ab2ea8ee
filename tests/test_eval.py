"""Eval: scoring rules, gold files, forced tiers recorded and reused, chain simulation, verdicts."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import httpx
import pytest

from extractkit import Extractor, FewShot, FineTuned, ZeroShot
from extractkit.evaluate import (
    GoldError,
    GoldItem,
    build_eval,
    convert_invoice2data,
    evaluate,
    load_gold,
    parse_date,
    parse_number,
    prf,
    same,
    score,
)
from extractkit.ledger import Ledger
from extractkit.report import KEEP, build_report

from .conftest import Invoice
from .fakes import BASE_URL, completion
from .test_batch import cli

# -- scoring rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(("expected", "got", "match"), [
    ("1,249.50", 1249.5, True),
    (1249.5, "1249.50", True),
    ("$1,249.50", "1249.5", True),
    ("1.249,50", 1249.5, True),          # European separators
    ("1 249,50 €", 1249.5, True),
    ("1,249", 1249, True),               # thousands, not a decimal comma
    ("12,5", 12.5, True),
    (1249.5, 1249.05, False),
    ("03/15/2024", "2024-03-15", True),  # month first with slashes
    ("15.03.2024", "2024-03-15", True),  # dots are day first
    ("March 15, 2024", "2024-03-15", True),
    ("15 Mar 2024", dt.date(2024, 3, 15), True),
    ("2024-03-15T00:00:00Z", "2024-03-15", True),
    ("2024-03-15", "2024-03-16", False),
    ("  ACME   Tools ltd ", "acme tools LTD", True),
    ("ACME Tools Ltd", "ACME Tools Ltd.", False),
    ("0042", "42", False),               # both digit strings: identifiers, not numbers
    ("0042", 42, True),                  # a number on one side: compared as numbers
    (True, "true", True),
])  # fmt: skip
def test_same_after_normalisation(expected, got, match):
    assert same(expected, got) is match


def test_ambiguous_slash_dates_follow_dayfirst():
    assert parse_date("03/04/2024") == dt.date(2024, 3, 4)
    assert parse_date("03/04/2024", dayfirst=True) == dt.date(2024, 4, 3)
    assert parse_date("13/04/2024") == dt.date(2024, 4, 13)  # unambiguous either way
    assert parse_date("31/02/2024") is None and parse_date("not a date") is None
    assert parse_number("INV-2024") is None and parse_number("1.249.000") == 1249000


def test_missing_null_and_wrong_fields():
    expected = {"issuer": "ACME", "total": 10.0, "date": None, "po": None}
    got = {"issuer": "acme", "total": 11.0, "date": "2024-01-01"}  # po missing
    results = {s.field: s.result for s in score(expected, got)}
    assert results == {"issuer": "tp", "total": "wrong", "date": "fp", "po": "tn"}
    # missing and null are the same thing; a failed extraction misses every gold value
    assert {s.result for s in score({"a": 1, "b": None}, None)} == {"fn", "tn"}
    assert [s.result for s in score({"a": 1}, {"a": None})] == ["fn"]
    # a field the gold does not name is not scored
    assert [s.field for s in score({"a": 1}, {"a": 1, "extra": 2})] == ["a"]


def test_list_fields_are_matched_item_by_item_in_any_order():
    expected = {"lines": [{"name": "Glacier", "price": "2.22"}, {"name": "S3", "price": "0.01"},
                          {"name": "EC2", "price": "1.87"}]}  # fmt: skip
    got = {"lines": [{"name": "s3", "price": 0.01}, {"name": "Glacier", "price": 2.23},
                     {"name": "Lambda", "price": 9.0}]}  # fmt: skip
    res = sorted((s.field, s.result, str(s.expected)) for s in score(expected, got))
    assert res == sorted([
        ("lines[].name", "tp", "S3"), ("lines[].price", "tp", "0.01"),
        ("lines[].name", "tp", "Glacier"), ("lines[].price", "wrong", "2.22"),
        ("lines[].name", "fn", "EC2"), ("lines[].price", "fn", "1.87"),      # gold item not found
        ("lines[].name", "fp", "None"), ("lines[].price", "fp", "None"),    # invented item
    ])  # fmt: skip
    assert [s.result for s in score({"tags": ["a", "b"]}, {"tags": ["B", "c"]})] == ["tp", "fn", "fp"]


def test_precision_recall_f1():
    assert prf(8, 1, 1, 0) == pytest.approx((8 / 9, 8 / 9, 8 / 9))
    assert prf(3, 0, 0, 1) == pytest.approx((0.75, 0.75, 0.75))  # wrong counts on both sides
    assert prf(0, 0, 0, 0) == (None, None, None)
    assert prf(0, 2, 0, 0)[2] == 0.0


# -- gold files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    ('{"document": "x"', "gold.jsonl:1: not valid JSON"),
    ('{"doc": "x", "expected": {}}', 'expected {"document"'),
    ('{"document": "x", "expected": []}', '"expected" must be an object'),
    ('{"document": "missing.pdf", "expected": {}}', "document file not found: missing.pdf"),
    ('{"document": "some text", "expected": {"isuer": "A"}}', "fields the schema does not have: isuer"),
    ('{"id": 1, "document": "a", "expected": {}}\n{"id": 1, "document": "b", "expected": {}}', "duplicate id"),
    ("", "no gold items"),
])  # fmt: skip
def test_gold_file_errors_name_the_line(tmp_path, content, message):
    f = tmp_path / "gold.jsonl"
    f.write_text(content)
    with pytest.raises(GoldError, match=re.escape(message)):
        load_gold(f, Invoice)


def test_gold_paths_are_relative_to_the_file_and_text_is_text(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("From: ACME\nTotal: 5")
    f = tmp_path / "gold.jsonl"
    f.write_text('{"document": "docs/a.txt", "expected": {"issuer": "ACME"}}\n'
                 '{"id": "inline", "document": "From: B Ltd\\nTotal: 2", "expected": {"total": 2}}\n')  # fmt: skip
    a, b = load_gold(f, Invoice)
    assert a.path == (tmp_path / "docs" / "a.txt").resolve() and a.gold_id == "1"
    assert b.text == "From: B Ltd\nTotal: 2" and b.gold_id == "inline"
    assert a.load().text.startswith("From: ACME") and b.load().sha256 == b.load().sha256


def test_invoice2data_converter_on_the_corpus(corpus, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    from invoice_schema import Invoice as CorpusInvoice

    out = tmp_path / "gold" / "gold.jsonl"
    written, notes = convert_invoice2data(corpus, out, schema=CorpusInvoice)
    items = load_gold(out, CorpusInvoice)
    assert written == len(items) == 12
    aws = next(i for i in items if i.gold_id == "AmazonWebServices")
    assert aws.expected == {"issuer": "Amazon Web Services", "amount": 4.11, "date": "2014-08-03",
                            "invoice_number": "42183017", "currency": "USD"}  # fmt: skip
    assert aws.path == (corpus / "AmazonWebServices.pdf").resolve()
    assert next(i for i in items if i.gold_id == "Orlen").path.suffix == ".txt"
    assert any("SammyMaystoneLinesTest" in n and "amount" in n for n in notes)


# -- running an eval against a faked provider ----------------------------------------------------

FT = "ft:gpt-4o-mini-2024-07-18:acme::evalfix"


def doc(i: int) -> str:
    return f"From: Firm {i} Ltd\nSubtotal: 7.00\nTotal: {i}.50\n"


def responder(request: httpx.Request) -> httpx.Response:
    """zero-shot is right on documents 0-19, few-shot on 0-29, the fine-tuned model on all but
    36-39, where it answers validly but wrongly (a grounded subtotal instead of the total)."""
    body = json.loads(request.content)
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    i = int(re.findall(r"From: Firm (\d+) Ltd", user)[-1])
    model = body["model"]
    limit = {"zero-m": 20, "few-m": 30, FT: 40}[model]
    name = body.get("tools", [{}])[0].get("function", {}).get("name", "Invoice")
    if i >= limit:
        return httpx.Response(200, json=completion("{not json", name=name, model=model))
    total = 7.0 if (model == FT and i >= 36) else float(f"{i}.5")
    if model == FT:  # json_schema mode: the answer is the message content
        return httpx.Response(200, json=completion(content=json.dumps({"issuer": f"Firm {i} Ltd", "total": total}),
                                                   model=model))  # fmt: skip
    return httpx.Response(200, json=completion({"issuer": f"Firm {i} Ltd", "total": total}, name=name, model=model))


def eval_chain() -> Extractor[Invoice]:
    return Extractor(Invoice, tiers=[
        ZeroShot(model="zero-m", base_url=BASE_URL, max_reasks=1),
        FewShot(model="few-m", base_url=BASE_URL, max_reasks=1,
                examples=[{"input": "From: X Ltd\nTotal: 1.00", "output": {"issuer": "X Ltd", "total": 1.0}}]),
        FineTuned(model=FT, base_url=BASE_URL, max_reasks=1),
    ])  # fmt: skip


GOLD = [GoldItem(str(i), {"issuer": f"Firm {i} Ltd", "total": f"{i}.50"}, text=doc(i)) for i in range(40)]


def test_eval_forces_each_tier_scores_simulates_and_decides(mock_api, ledger_target):
    route = mock_api.post("/chat/completions").mock(side_effect=responder)
    from extractkit import Price

    ex = Extractor(Invoice, tiers=eval_chain().tiers,
                   prices={"zero-m": Price(0.15, 0.60), "few-m": Price(0.15, 0.60)})  # fmt: skip
    with Ledger(ledger_target) as ledger:
        s = evaluate(ex, GOLD, ledger, concurrency=8)
        assert (s.items, s.extracted, s.reused, s.unreadable, s.errors) == (40, 120, 0, [], [])
        # zero: 20 right + 20 x 2 attempts (a re-ask each); few: 30 + 10 x 2; ft: 40
        assert route.call_count == (20 + 40) + (30 + 20) + 40
        ev = build_eval(ledger, s.run_id)
        t = {x["tier"]: x for x in ev["tiers"]}
        assert [x["tier"] for x in ev["tiers"]] == ["zero_shot", "few_shot", "fine_tuned"]
        assert (t["zero_shot"]["valid"], t["zero_shot"]["correct"]) == (20, 20)
        assert (t["few_shot"]["valid"], t["few_shot"]["correct"]) == (30, 30)
        assert (t["fine_tuned"]["valid"], t["fine_tuned"]["correct"], t["fine_tuned"]["wrong"]) == (40, 36, 4)
        assert t["zero_shot"]["recall"] == 0.5 and t["zero_shot"]["precision"] == 1.0
        assert ev["fields"]["total"]["fine_tuned"]["wrong"] == 4 and ev["fields"]["issuer"]["fine_tuned"]["tp"] == 40
        chains = {c["name"]: c for c in ev["chains"]}
        assert len(chains) == 7
        expect = {"zero_shot -> few_shot -> fine_tuned": (36, 1.0), "few_shot -> fine_tuned": (36, 1.0),
                  "fine_tuned": (36, 1.0), "zero_shot -> few_shot": (30, 0.75), "zero_shot -> fine_tuned": (36, 1.0),
                  "zero_shot": (20, 0.5), "few_shot": (30, 0.75)}  # fmt: skip
        assert {k: (c["correct"], c["valid_rate"]) for k, c in chains.items()} == expect
        full = chains["zero_shot -> few_shot -> fine_tuned"]
        assert full["wins"] == {"zero_shot": 20, "few_shot": 10, "fine_tuned": 10}
        # the full chain pays zero-shot for every document, few-shot for 20, fine-tuned for 10
        paid = ledger.query(
            "SELECT r.gold_id, r.tier, e.cost_usd FROM eval_results r JOIN extractions e ON e.id = r.extraction_id"
            " WHERE r.run_id = ?", [s.run_id])  # fmt: skip
        assert len(paid) == 120 and all(r["cost_usd"] > 0 for r in paid)
        reached = {"zero_shot": 0, "few_shot": 20, "fine_tuned": 30}
        assert full["cost_usd"] == pytest.approx(
            sum(r["cost_usd"] for r in paid if int(r["gold_id"]) >= reached[r["tier"]]))
        ft = next(v for v in ev["verdicts"] if v["tier"] == "fine_tuned")
        assert (ft["n"], ft["rescued"], ft["wrong_answers_accepted"], ft["decision"]) == (40, 6, 4, KEEP)
        # the two uses of one dataset, side by side: paired on the same documents
        [cmp] = ev["comparisons"]
        assert (cmp["a"], cmp["b"], cmp["only_a"], cmp["only_b"], cmp["winner"]) == ("few_shot", "fine_tuned", 0, 6,
                                                                                       "fine_tuned")  # fmt: skip
        assert cmp["p_value"] == pytest.approx(2 / 64) and "more accurate" in cmp["sentence"]
        few = next(v for v in ev["verdicts"] if v["tier"] == "few_shot")
        assert (few["rescued"], few["decision"]) == (10, KEEP)
        # forced extractions are not the chain's: the tier report does not count them
        assert build_report(ledger)["totals"]["documents"] == 0  # eval's forced tiers stay out

        # a rerun pays for nothing; --force pays again
        before = route.call_count
        s2 = evaluate(eval_chain(), GOLD, ledger)
        assert (s2.extracted, s2.reused, route.call_count) == (0, 120, before)
        assert build_eval(ledger, s2.run_id)["tiers"] == [{**x, "reused": 40} for x in ev["tiers"]]
        s3 = evaluate(eval_chain(), GOLD[:2], ledger, tiers=["fine_tuned"], force=True)
        assert (s3.extracted, route.call_count) == (2, before + 2)


def test_eval_retries_transient_failures_instead_of_reusing_them(mock_api, ledger_target, sleeps):
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= 4:  # as many 500s as the retry policy's 4 attempts: the first eval records api_error
            return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})
        return responder(request)

    mock_api.post("/chat/completions").mock(side_effect=flaky)
    ex = Extractor(Invoice, tiers=[ZeroShot(model="zero-m", base_url=BASE_URL)])
    with Ledger(ledger_target) as ledger:
        s1 = evaluate(ex, GOLD[:1], ledger)
        assert build_eval(ledger, s1.run_id)["tiers"][0]["valid"] == 0
        s2 = evaluate(ex, GOLD[:1], ledger)
        assert (s2.extracted, s2.reused) == (1, 0)
        assert build_eval(ledger, s2.run_id)["tiers"][0]["correct"] == 1


def test_unreadable_gold_document_is_reported_and_the_rest_scored(mock_api, tmp_path, ledger_target):
    mock_api.post("/chat/completions").mock(side_effect=responder)
    (tmp_path / "empty.txt").write_text("")
    items = [*GOLD[:2], GoldItem("broken", {"issuer": "X"}, path=tmp_path / "empty.txt")]
    with Ledger(ledger_target) as ledger:
        s = evaluate(Extractor(Invoice, tiers=[ZeroShot(model="zero-m", base_url=BASE_URL)]), items, ledger)
        assert [u["gold_id"] for u in s.unreadable] == ["broken"] and "empty" in s.unreadable[0]["error"]
        ev = build_eval(ledger, s.run_id)
        assert ev["documents"] == 2 and ev["tiers"][0]["correct"] == 2 and ev["unreadable"][0]["gold_id"] == "broken"


def test_eval_cli_end_to_end(tmp_path, ledger_target):
    from .fakes import FakeLLMServer, echo_invoice_responder

    docs = tmp_path / "docs"
    docs.mkdir()
    gold = tmp_path / "gold.jsonl"
    rows = []
    for i in range(3):
        (docs / f"{i}.txt").write_text(f"From: Shop {i} GmbH\nTotal: 1,00{i}.50\n")
        rows.append({"document": f"docs/{i}.txt", "expected": {"issuer": f"shop {i} gmbh", "total": f"100{i}.5"}})
    rows.append({"id": "bad-total", "document": "From: Shop 9 GmbH\nTotal: 9.00", "expected": {"total": 10}})
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = tmp_path / "extractkit.toml"
        cfg.write_text(f'schema = "tests.conftest:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
                       f'base_url = "{server.base_url}"\n')  # fmt: skip
        args = ("eval", str(gold), "--config", str(cfg), "--ledger", ledger_target)
        proc = cli(*args, "--json", "--html", str(tmp_path / "e.html"), "--csv", str(tmp_path / "e.csv"))
        assert proc.returncode == 0, proc.stderr
        ev = json.loads(proc.stdout)
        assert ev["tiers"][0]["correct"] == 3 and ev["tiers"][0]["wrong"] == 1
        assert "one tier" in ev["verdict"]
        n = len(server.requests)
        again = cli(*args)
        assert again.returncode == 0 and len(server.requests) == n and "each tier alone" in again.stdout
        said = " ".join((again.stdout + again.stderr).split())
        assert f"ledger {ledger_target}" in said  # the one it used, printable (a URL as given)
    # an earlier eval, shown again: no config, no key, no server needed
    shown = cli("eval", "--run", ev["run_id"], "--ledger", ledger_target, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["tiers"] == ev["tiers"]
    assert "chart-accuracy" in (tmp_path / "e.html").read_text()
    assert (tmp_path / "e.csv").read_text().splitlines()[1].startswith("tier,zero_shot")
    bad = cli("eval", str(tmp_path / "nope.jsonl"), "--config", str(cfg))
    assert bad.returncode == 2 and "gold file not found" in bad.stderr
    conv = cli("gold", "from-invoice2data", str(docs), "-o", str(tmp_path / "g.jsonl"))
    assert conv.returncode == 2 and "no gold item" in conv.stderr  # no NAME.json files there: an error, nothing written
