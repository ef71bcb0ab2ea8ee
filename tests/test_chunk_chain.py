"""Long documents through the chain: a synthetic 60-page contract, longer than the tier's context,
extracted chunk by chunk by a fake provider that answers ONLY from the chunk it is sent, merged,
recorded under one extraction (both ledger engines), and reported with its chunks' cost."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Annotated

import httpx
import pytest
from pydantic import BaseModel

from extractkit import Extractor, Grounded, Ledger, Merge, Outcome, Price, ZeroShot
from extractkit._tokens import count_tokens
from extractkit.report import Report, Scope, read_report
from extractkit.report._aggregate import chunked_of

from .fakes import BASE_URL, completion

USAGE = (300, 40, 0)  # per answer
PRICE = Price(input=1.0, output=4.0)  # USD per 1M tokens: 300 * 1e-6 + 40 * 4e-6 per answer
WINDOW = 2500  # the small tier's context
PER_ANSWER = 300 * 1e-6 + 40 * 4e-6


class LineItem(BaseModel):
    sku: str
    description: str
    quantity: int


class Contract(BaseModel):
    """A supply contract."""

    seller: Annotated[str, Grounded()]
    buyer: Annotated[str, Grounded()]
    effective_date: Annotated[dt.date, Grounded()]
    governing_law: Annotated[str, Merge("most_frequent")]
    items: Annotated[list[LineItem], Merge(key="sku")]


FILLER = (
    "The parties agree that this clause is read together with the schedules and annexes of the agreement, "
    "and that headings are for convenience only and do not affect its interpretation in any way."
)


def item_line(n: int, qty: int | None = None) -> str:
    return f"Line item SKU-{n:03d}: Component model {n} in stainless steel, quantity {qty or n % 7 + 1}."


def contract() -> tuple[str, list[tuple[int, int, int]]]:
    """60 pages joined by a blank line: parties on page 1, the effective date on page 2 and a
    different one on page 47 (a conflict), governing law England on pages 10, 30, 55 and France on
    page 40 (a conflict, most frequent wins), 40 line items spread across pages 3-58, item 7 repeated
    word for word on page 59 (no conflict) and item 17 repeated with another quantity on page 50 (a
    conflict). Returns the text and the page offsets (number, start, end)."""
    pages: list[list[str]] = [[f"Page {n}.", FILLER, FILLER, FILLER, FILLER] for n in range(1, 61)]
    pages[0] += ["Seller: Acme Components Ltd.", "Buyer: Northwind Traders BV."]
    pages[1].append("Effective date: 2024-03-01.")
    pages[46].append("Effective date: 2024-04-01.")
    for p in (10, 30, 55):
        pages[p - 1].append("Governing law: England.")
    pages[39].append("Governing law: France.")
    for n in range(1, 41):
        pages[2 + (n - 1) * 56 // 40].append(item_line(n))
    pages[58].append(item_line(7))
    pages[49].append(item_line(17, qty=99))
    texts = ["\n\n".join(p) for p in pages]
    spans, at = [], 0
    for i, t in enumerate(texts, 1):
        spans.append((i, at, at + len(t)))
        at += len(t) + 2
    return "\n\n".join(texts), spans


DOC_RE = re.compile(r"<document>\n(.*)\n</document>", re.S)


def answer_from_chunk(body: dict) -> dict:
    """What a careful model answers from the text it is sent, and only from it."""
    user = body["messages"][-1]["content"]
    text = DOC_RE.search(user).group(1)

    def first(pattern: str) -> str | None:
        m = re.search(pattern, text)
        return m.group(1) if m else None

    items = [{"sku": f"SKU-{m.group(1)}", "description": f"Component model {int(m.group(1))} in stainless steel",
              "quantity": int(m.group(2))}
             for m in re.finditer(r"Line item SKU-(\d{3}): Component model \d+ in stainless steel, quantity (\d+)\.",
                                  text)]  # fmt: skip
    return {
        "seller": first(r"Seller: ([^\n]+?)\.(?:\n|$)"),
        "buyer": first(r"Buyer: ([^\n]+?)\.(?:\n|$)"),
        "effective_date": first(r"Effective date: (\d{4}-\d{2}-\d{2})"),
        "governing_law": first(r"Governing law: (\w+)"),
        "items": items,
    }


class ChunkProvider:
    """The respx side effect: answers each request from its own chunk; keeps the chunks it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.seen.append(DOC_RE.search(body["messages"][-1]["content"]).group(1))
        return httpx.Response(200, json=completion(answer_from_chunk(body), name="Contract", usage=USAGE))


def tier(**kw) -> ZeroShot:
    kw.setdefault("context_window", WINDOW)
    return ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_output_tokens=600, price=PRICE, **kw)


EXPECTED_CONFLICTS = {
    ("effective_date", ("2024-03-01", "2024-04-01"), "2024-03-01"),
    ("governing_law", ("England", "France"), "England"),
    ("items[SKU-017]", None, None),
}


def check_contract(result, text: str, provider: ChunkProvider) -> None:
    assert result.ok, result.error
    value = result.value
    assert (value.seller, value.buyer) == ("Acme Components Ltd", "Northwind Traders BV")
    assert value.effective_date == dt.date(2024, 3, 1)
    assert value.governing_law == "England"
    skus = [i.sku for i in value.items]
    assert skus == [f"SKU-{n:03d}" for n in range(1, 41)], "every item exactly once, in document order"
    assert next(i for i in value.items if i.sku == "SKU-017").quantity == 17 % 7 + 1  # the first seen
    got = {(c.field, tuple(c.values) if not c.field.startswith("items") else None,
            c.chosen if not c.field.startswith("items") else None) for c in result.conflicts}  # fmt: skip
    assert got == EXPECTED_CONFLICTS
    (items17,) = [c for c in result.conflicts if c.field == "items[SKU-017]"]
    assert [v["quantity"] for v in items17.values] == [17 % 7 + 1, 99]
    # the fake was sent chunks, never the whole document; each one fits the context
    n = len(provider.seen)
    assert n >= 4 and all(len(s) < len(text) // 2 for s in provider.seen)
    assert all(count_tokens(s) < WINDOW for s in provider.seen)
    chunks = sorted({a.chunk for a in result.attempts})
    assert chunks == list(range(n)) and all(a.outcome is Outcome.OK for a in result.attempts)
    assert result.cost_usd == pytest.approx(n * PER_ANSWER)


def test_a_60_page_contract_is_chunked_and_merged(mock_api):
    text, _ = contract()
    assert count_tokens(text) > 3 * WINDOW, "far longer than the tier's context"
    provider = ChunkProvider()
    mock_api.post("/chat/completions").mock(side_effect=provider)
    result = Extractor(Contract, tiers=[tier()]).extract(text)
    check_contract(result, text, provider)
    # every chunk's text is a piece of the document (answers grounded in their own chunk)
    assert all(s in text for s in provider.seen)


def test_the_chunks_are_recorded_under_one_extraction(mock_api, ledger_target):
    text, _ = contract()
    provider = ChunkProvider()
    mock_api.post("/chat/completions").mock(side_effect=provider)
    with Ledger(ledger_target) as ledger:
        ex = Extractor(Contract, tiers=[tier()], ledger=ledger)
        result = ex.extract(text)
        check_contract(result, text, provider)
        ex.close()
        report = read_report(ledger)
        now = time.time()
        windows = {"recent_since": now - 3600, "recent_until": now + 1, "baseline_since": now - 7200,
                   "baseline_until": now - 3600}  # fmt: skip
        _, extra, extra_windows = chunked_of(ledger, Scope(), windows)
        (ext,) = ledger.query("SELECT id, status, n_attempts, cost_usd, n_chunks, conflicts_json FROM extractions")
        rows = ledger.query("SELECT chunk, outcome, cost_usd, extraction_id FROM attempts ORDER BY chunk")
    n = len(provider.seen)
    assert ext["status"] == "ok" and ext["n_attempts"] == n and ext["n_chunks"] == n
    assert [r["chunk"] for r in rows] == list(range(n)) and {r["extraction_id"] for r in rows} == {ext["id"]}
    assert ext["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert ext["cost_usd"] == pytest.approx(n * PER_ANSWER)
    conflicts = json.loads(ext["conflicts_json"])
    assert {c["field"] for c in conflicts} == {f for f, _, _ in EXPECTED_CONFLICTS}
    # the report: the document's cost is every chunk's, and it says how many were chunked
    assert report.totals.documents == 1 and report.totals.cost_usd == pytest.approx(n * PER_ANSWER)
    assert report.totals.cost_per_valid_usd == pytest.approx(n * PER_ANSWER)
    assert report.chunked is not None
    assert (report.chunked.documents, report.chunked.chunks, report.chunked.conflicts) == (1, n, 3)
    assert report.chunked.cost_usd == pytest.approx(n * PER_ANSWER)
    assert any("extracted in" in note and "3 conflict(s)" in note for note in report.notes)
    assert Report.from_dict(report.to_dict()) == report
    # the tier reached and resolved one document, in n attempts (one per chunk)
    (stats,) = report.tiers
    assert (stats.reached, stats.resolved, stats.attempts, stats.reasks) == (1, 1, n, 0)
    assert stats.success_rate == 1.0
    # what the report takes out of the tier's ok attempts (overall, and in the drift window)
    assert extra == {(ext_config(ext["id"], ledger_target), "zero_shot"): n - 1}
    assert extra_windows == {("recent", "zero_shot"): n - 1}


def ext_config(ext_id: str, target: str) -> str:
    with Ledger(target) as ledger:
        return ledger.query("SELECT config_hash FROM extractions WHERE id = ?", [ext_id])[0][0]


def test_a_report_without_long_documents_is_as_before(mock_api, tmp_path):
    mock_api.post("/chat/completions").mock(side_effect=ChunkProvider())
    text, _ = contract()
    short = text[:1500]
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        Extractor(Contract, tiers=[tier()], ledger=ledger).extract(short)
        report = read_report(ledger)
    assert report.chunked is None and "chunked" not in report.to_dict()


def test_refuse_keeps_context_overflow(mock_api):
    text, _ = contract()
    route = mock_api.post("/chat/completions").mock(side_effect=ChunkProvider())
    result = Extractor(Contract, tiers=[tier(long_documents="refuse")]).extract(text)
    assert route.call_count == 0
    assert [a.outcome for a in result.attempts] == [Outcome.CONTEXT_OVERFLOW]
    assert result.conflicts == () and result.attempts[0].chunk is None


def test_long_documents_is_part_of_the_chain_identity():
    default = Extractor(Contract, tiers=[tier()])
    refuse = Extractor(Contract, tiers=[tier(long_documents="refuse")])
    smaller = Extractor(Contract, tiers=[tier(chunk_tokens=1000)])
    assert len({default.config_hash, refuse.config_hash, smaller.config_hash}) == 3


def test_a_chunk_that_fails_fails_the_tier_and_the_chain_escalates(mock_api):
    """One chunk's answer never validates: that tier fails (its last attempt says why) and the next
    tier, with a larger context, extracts the whole document at once."""
    text, _ = contract()
    provider = ChunkProvider()

    def side_effect(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["model"] == "small" and "Page 20." in body["messages"][-1]["content"]:
            return httpx.Response(200, json=completion({"seller": 5, "items": "x"}, name="Contract", usage=USAGE))
        return provider(request)

    mock_api.post("/chat/completions").mock(side_effect=side_effect)
    small = ZeroShot(model="small", name="small", base_url=BASE_URL, context_window=WINDOW, max_output_tokens=600,
                     max_reasks=0, price=PRICE)  # fmt: skip
    big = ZeroShot(model="big", name="big", base_url=BASE_URL, context_window=200_000, max_output_tokens=1000,
                   price=PRICE)  # fmt: skip
    result = Extractor(Contract, tiers=[small, big]).extract(text)
    assert result.ok and result.tier == "big"
    small_attempts = [a for a in result.attempts if a.tier == "small"]
    assert small_attempts[-1].outcome is Outcome.SCHEMA_INVALID and small_attempts[-1].chunk is not None
    assert all(a.chunk is not None for a in small_attempts)
    (whole,) = [a for a in result.attempts if a.tier == "big"]
    assert whole.chunk is None
    assert result.conflicts == ()  # the whole document at once: nothing to disagree


def test_a_merged_value_that_fails_the_full_schema_is_a_validation_outcome(mock_api):
    """No chunk holds the seller: each chunk's answer is valid (null), the merged value is not."""
    text, _ = contract()
    text = text.replace("Seller: Acme Components Ltd.", "Vendor: Acme Components Ltd.")
    mock_api.post("/chat/completions").mock(side_effect=ChunkProvider())
    result = Extractor(Contract, tiers=[tier()]).extract(text)
    assert not result.ok
    last = result.attempts[-1]
    assert last.outcome is Outcome.SCHEMA_INVALID and last.chunk is None and last.usage.total_tokens == 0
    assert "merged value" in last.error and "seller" in result.error


def test_batch_waves_say_a_long_document_is_chunked_only_when_extracted_live():
    """The Batch API waves build each request with the tier's steps (batch/_waves.py): a document too
    long for the context is not chunked there; its context_overflow says how to get it chunked."""
    text, _ = contract()
    steps = Extractor(Contract, tiers=[tier()]).steps("zero_shot")
    request = steps.build_request(steps.start(text))
    assert request.overflow is not None and request.body == {}
    assert 'long_documents = "chunk"' in request.overflow and "without --via batch" in request.overflow
    refuse = Extractor(Contract, tiers=[tier(long_documents="refuse")]).steps("zero_shot")
    refused = refuse.build_request(refuse.start(text))
    assert refused.overflow is not None and "--via batch" not in refused.overflow


def test_config_file_sets_long_documents(tmp_path):
    from extractkit import ConfigError
    from extractkit._config import build_tiers, parse_config

    def tiers(**extra):
        raw = {"schema": "x:Y", "tiers": [{"kind": "zero_shot", "model": "gpt-4o-mini", **extra}]}
        return build_tiers(parse_config(raw, root=tmp_path))

    (default,) = tiers()
    assert (default.long_documents, default.chunk_tokens, default.chunk_overlap) == ("chunk", None, 200)
    (set_,) = tiers(long_documents="refuse", chunk_tokens=8000, chunk_overlap=0)
    assert (set_.long_documents, set_.chunk_tokens, set_.chunk_overlap) == ("refuse", 8000, 0)
    with pytest.raises(ConfigError, match="long_documents"):
        tiers(long_documents="split")
    with pytest.raises(ConfigError, match="long_documents"):
        ZeroShot(model="gpt-4o-mini", long_documents="split")


def test_chunking_and_the_merged_validation_run_off_the_event_loop(mock_api, monkeypatch):
    """Tokenising a long document is CPU-heavy: the split and the whole-document grounding run in
    worker threads, never on the thread of the event loop."""
    import asyncio
    import threading

    import extractkit._chain as chain

    threads: dict[str, list[int]] = {"split": [], "validate": []}
    real_split, real_validate = chain.split_chunks, chain.Extractor._validate_merged

    def split(*a, **k):
        threads["split"].append(threading.get_ident())
        return real_split(*a, **k)

    def validate(self, *a, **k):
        threads["validate"].append(threading.get_ident())
        return real_validate(self, *a, **k)

    monkeypatch.setattr(chain, "split_chunks", split)
    monkeypatch.setattr(chain.Extractor, "_validate_merged", validate)
    mock_api.post("/chat/completions").mock(side_effect=ChunkProvider())
    text, _ = contract()

    async def main() -> tuple[int, bool]:
        result = await Extractor(Contract, tiers=[tier()]).aextract(text)
        return threading.get_ident(), result.ok

    loop_thread, ok = asyncio.run(main())
    assert ok
    assert threads["split"] and threads["validate"]
    assert loop_thread not in threads["split"] + threads["validate"]


def test_a_context_too_small_to_chunk_keeps_context_overflow_and_says_why(mock_api):
    route = mock_api.post("/chat/completions").mock(side_effect=ChunkProvider())
    text, _ = contract()
    result = Extractor(Contract, tiers=[tier(context_window=1400)]).extract(text)
    assert route.call_count == 0
    (only,) = result.attempts
    assert only.outcome is Outcome.CONTEXT_OVERFLOW and "too small a context to chunk" in only.error
