"""Issue 19's long documents after the audit (notes/audit19.md): the dry run prices a chunked
document's chunks (M4), the HTML review view does not take chunks for re-asks (M5), a context too
small to chunk says so for a live run (L2), text without blank lines is cut into full chunks (L5),
and an ``--out`` line carries the conflicts between chunks (L6)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from extractkit import Extractor
from extractkit._chunking import split
from extractkit._tokens import count_tokens
from extractkit.batch._estimate import estimate
from extractkit.cli._app import app

from .fakes import BASE_URL
from .test_chunk_chain import PRICE, WINDOW, ChunkProvider, Contract, contract, tier


def _contract_file(tmp_path: Path) -> Path:
    path = tmp_path / "contract.txt"
    path.write_text(contract()[0])
    return path


# -- M4: the dry run prices chunks ------------------------------------------------------------------
def test_the_dry_run_prices_a_long_document_as_the_chunks_the_run_sends(tmp_path, mock_api):
    path = _contract_file(tmp_path)
    provider = ChunkProvider()
    mock_api.post("/chat/completions").mock(side_effect=provider)
    ex = Extractor(Contract, tiers=[tier()])
    est = asyncio.run(estimate(ex, [path]))
    assert not provider.seen
    (t,) = est.tiers
    (d,) = est.documents
    ex.extract(path.read_text())  # the live run: one request per chunk
    n = len(provider.seen)
    assert n > 3
    assert (t.documents, t.too_long, t.chunked, t.chunks) == (0, 0, 1, n)
    assert d.too_long == [] and d.chunks == {"zero_shot": n}
    # each chunk one request of about the context's size, output at the cap
    assert n * 0.5 * WINDOW < t.input_tokens < n * WINDOW
    assert t.first_usd == pytest.approx((t.input_tokens * PRICE.input + n * 600 * PRICE.output) / 1e6)
    assert est.worst_usd is not None and est.worst_usd > t.first_usd * t.attempts * 0.99


def test_a_tier_that_refuses_long_documents_is_still_not_billed(tmp_path):
    est = asyncio.run(estimate(Extractor(Contract, tiers=[tier(long_documents="refuse")]),
                               [_contract_file(tmp_path)]))  # fmt: skip
    (t,) = est.tiers
    assert (t.documents, t.too_long, t.chunked, t.chunks, t.input_tokens) == (0, 1, 0, 0, 0)
    assert est.worst_usd == 0


def test_the_dry_run_says_chunked_into_n(tmp_path, mock_api):
    route = mock_api.post("/chat/completions")
    path = _contract_file(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'schema = "tests.test_chunk_chain:Contract"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{BASE_URL}"\ncontext_window = {WINDOW}\nmax_output_tokens = 600\n'
        "price = { input = 1.0, output = 4.0 }\n"
    )
    res = CliRunner().invoke(app, ["extract", str(path), "-c", str(cfg), "--ledger", str(tmp_path / "l.db"),
                                   "--dry-run"])  # fmt: skip
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "chunked into" in flat and "too long" not in flat
    assert "$0.0000" not in flat
    assert route.call_count == 0


# -- M5: the review view does not take chunks for re-asks -------------------------------------------
def test_a_chunked_document_is_to_review_only_when_a_chunk_was_re_asked(mock_api, ledger_target):
    import httpx

    from extractkit import Ledger
    from extractkit.report import read_documents

    from .fakes import completion
    from .test_chunk_chain import USAGE

    text, _ = contract()
    provider = ChunkProvider()
    bad = {"n": 0}

    def side_effect(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        first_user = next(m for m in body["messages"] if m["role"] == "user")
        if bad.get("on") and bad["n"] < 1 and "Page 20." in first_user["content"]:
            bad["n"] += 1  # the chunk holding page 20: its first answer does not validate
            return httpx.Response(200, json=completion({"seller": 5, "items": "x"}, name="Contract", usage=USAGE))
        body["messages"] = [first_user]  # a re-ask: answered from the chunk it quotes
        return provider(httpx.Request("POST", request.url, json=body))

    mock_api.post("/chat/completions").mock(side_effect=side_effect)
    with Ledger(ledger_target) as ledger:
        ex = Extractor(Contract, tiers=[tier()], ledger=ledger)
        first = ex.extract(text)
        assert first.ok and len(first.attempts) > 3
        assert read_documents(ledger) == ()  # every chunk right the first time: nothing to review
        bad["on"] = True
        again = ex.extract(text + "\n\nSigned.")
        ex.close()
        assert again.ok and bad["n"] == 1
        (view,) = read_documents(ledger)
    n = len([a for a in again.attempts if a.chunk is not None]) - 1
    assert view.reason == f"resolved by zero_shot in {n} chunks after 1 re-ask or retry"


# -- L2: a context too small to chunk, said for a live run -----------------------------------------
@pytest.mark.parametrize("window", [1400, 800])
def test_a_context_too_small_to_chunk_says_what_to_change_on_a_live_run(mock_api, window):
    route = mock_api.post("/chat/completions").mock(side_effect=ChunkProvider())
    result = Extractor(Contract, tiers=[tier(context_window=window)]).extract(contract()[0])
    assert route.call_count == 0
    (only,) = result.attempts
    error = only.error or ""
    assert "too small a context to chunk it" in error and f"of the {window}-token context" in error
    assert "Batch API" not in error and "--via batch" not in error  # a live run: no word of waves
    assert " -" not in error.split("too small a context")[1]  # no negative count of tokens
    assert "raise context_window" in error and "max_output_tokens" in error


# -- L5: text without blank lines is cut into full chunks ------------------------------------------
@pytest.mark.parametrize("sep", [" ", "\n"])
def test_text_without_blank_lines_is_cut_into_chunks_about_as_full_as_paragraphs(sep):
    text = contract()[0]
    flat = text.replace("\n\n", sep)  # one line, or one paragraph of lines
    budget = 1000
    paragraphs = split(text, max_tokens=budget)
    cut = split(flat, max_tokens=budget)
    assert len(cut) <= len(paragraphs) + 1, (len(cut), len(paragraphs))
    for c in cut:
        assert c.text == flat[c.start:c.end]
        assert count_tokens(c.text) <= budget
    assert all(count_tokens(c.text) > 0.8 * budget for c in cut[:-1])  # full, not half
    assert cut[0].start == 0 and cut[-1].end == len(flat.rstrip())
    assert all(b.start < a.end for a, b in zip(cut, cut[1:], strict=False))  # still overlapping


# -- L6: the --out line carries the conflicts between chunks ---------------------------------------
def test_the_out_line_carries_the_conflicts_between_chunks(tmp_path, mock_api):
    from .test_chunk_chain import EXPECTED_CONFLICTS

    mock_api.post("/chat/completions").mock(side_effect=ChunkProvider())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "contract.txt").write_text(contract()[0])
    (docs / "short.txt").write_text("Seller: Acme Components Ltd.\nBuyer: Northwind Traders BV.\n"
                                    "Effective date: 2024-03-01.\nGoverning law: England.\n")  # fmt: skip
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'schema = "tests.test_chunk_chain:Contract"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{BASE_URL}"\ncontext_window = {WINDOW}\nmax_output_tokens = 600\n'
    )
    for n in (1, 2):  # the run, then a rerun that resumes both from the ledger
        out = tmp_path / f"out{n}.jsonl"
        res = CliRunner().invoke(app, ["extract", str(docs), "-c", str(cfg), "--ledger", str(tmp_path / "l.db"),
                                       "--out", str(out)])  # fmt: skip
        assert res.exit_code == 0, res.output
        lines = {Path(d["path"]).name: d for d in map(json.loads, out.read_text().splitlines())}
        long, short = lines["contract.txt"], lines["short.txt"]
        assert long["resumed"] is (n == 2) and long["status"] == "ok"
        assert {c["field"] for c in long["conflicts"]} == {f for f, _, _ in EXPECTED_CONFLICTS}
        law = next(c for c in long["conflicts"] if c["field"] == "governing_law")
        assert law["values"] == ["England", "France"] and law["chosen"] == "England"
        assert "conflicts" not in short  # a document read whole has none: no key


def test_the_dry_run_says_a_chunked_document_can_pass_the_cost_ceiling(tmp_path, mock_api):
    path = _contract_file(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'schema = "tests.test_chunk_chain:Contract"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{BASE_URL}"\ncontext_window = {WINDOW}\nmax_output_tokens = 600\n'
    )
    res = CliRunner().invoke(app, ["extract", str(path), "-c", str(cfg), "--ledger", str(tmp_path / "l.db"),
                                   "--dry-run", "--max-cost", "0.0005"])  # fmt: skip
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "the first document alone passes it" in flat and "after about 0 documents" not in flat
    assert "started whole, so its chunks can pass the ceiling" in flat
