"""Spans travel with the final result: ``Result.spans``, the ledger (``extractions.spans_json``, on
both engines) and the ``--out`` line (also when a rerun reuses the ledger's result); a long text's
spans are found off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx

import extractkit._chain as chain_module
from extractkit import Extractor, Span, ZeroShot
from extractkit._chain import SPANS_INLINE_CHARS
from extractkit.batch import BatchRunner
from extractkit.ledger import Ledger

from .conftest import Invoice
from .fakes import BASE_URL, completion

TEXT = "Invoice\n\nFrom: ACME  Ltd.\nNet 1.050,00\nTotal:\u00a01.249,50 EUR\nPaid 1,249.50\n"


def extractor(**kw) -> Extractor[Invoice]:
    return Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0)], **kw)


def answer(mock_api, value: dict) -> None:
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(value)))


def test_result_spans_point_at_the_values_as_written(mock_api):
    answer(mock_api, {"issuer": "ACME Limited", "total": 1249.5})
    with extractor() as ex:
        result = ex.extract(TEXT)
    assert result.ok
    assert {k: [TEXT[s.start : s.end] for s in v] for k, v in result.spans.items()} == {
        "issuer": ["ACME  Ltd"],
        "total": ["1.249,50", "1,249.50"],
    }
    assert all(isinstance(s, Span) and s.page is None for v in result.spans.values() for s in v)


def test_a_failed_result_has_no_spans(mock_api):
    answer(mock_api, {"issuer": "Nobody GmbH", "total": 1249.5})
    with extractor() as ex:
        result = ex.extract(TEXT)
    assert not result.ok and result.spans == {}


def test_spans_in_the_ledger_and_the_out_line_also_when_resumed(mock_api, tmp_path, ledger_target):
    answer(mock_api, {"issuer": "ACME Ltd", "total": 1249.5})
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(TEXT, encoding="utf-8")
    ex = extractor()
    with Ledger(ledger_target) as ledger:
        for run in range(2):  # the second run reuses the ledger's result: its line has the spans too
            out = tmp_path / f"out{run}.jsonl"
            summary = asyncio.run(BatchRunner(ex, ledger, out=out).run([docs]))
            assert summary.ok == 1 and summary.resumed == run
            (line,) = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
            shown = {k: [TEXT[s["start"] : s["end"]] for s in v] for k, v in line["spans"].items()}
            assert shown == {"issuer": ["ACME  Ltd"], "total": ["1.249,50", "1,249.50"]}
            assert all(s["page"] is None for v in line["spans"].values() for s in v)
        row = ledger.find_final(line["sha256"], ex.schema_hash, ex.config_hash)
        assert json.loads(row["spans_json"]) == line["spans"]
    ex.close()


def test_a_long_texts_spans_are_found_off_the_event_loop(mock_api, monkeypatch):
    answer(mock_api, {"issuer": "ACME Ltd", "total": 1249.5})
    threads: list[tuple[int, int]] = []
    real = chain_module.spans_for

    def spy(value, text, pages=()):
        threads.append((len(text), threading.get_ident()))
        return real(value, text, pages)

    monkeypatch.setattr(chain_module, "spans_for", spy)
    long_text = TEXT + "filler line\n" * (SPANS_INLINE_CHARS // 12 + 10)

    async def main() -> tuple[int, dict, dict]:
        async with extractor() as ex:
            short = await ex.aextract(TEXT)
            long = await ex.aextract(long_text)
        return threading.get_ident(), short.spans, long.spans

    loop_thread, short, long = asyncio.run(main())
    assert short == long and short["total"][0] == Span(46, 54)
    (n_short, t_short), (n_long, t_long) = threads
    assert n_short == len(TEXT) and t_short == loop_thread  # inline: the thread hop would cost more
    assert n_long == len(long_text) > SPANS_INLINE_CHARS and t_long != loop_thread


def test_spans_carry_pages_given_to_the_chain(mock_api):
    from extractkit._pages import Page

    answer(mock_api, {"issuer": "ACME Ltd", "total": 1249.5})
    pages = [Page(1, 0, 26, "text"), Page(2, 28, len(TEXT), "ocr", 0.9)]
    with extractor() as ex:
        result = ex.extract(TEXT, pages=pages)
    assert [s.page for s in result.spans["issuer"]] == [1]
    assert [s.page for s in result.spans["total"]] == [2, 2]


def test_the_out_line_of_a_schema_without_grounded_fields_has_no_spans(mock_api, tmp_path):
    from pydantic import BaseModel

    class Plain(BaseModel):
        issuer: str
        total: float

    mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion({"issuer": "ACME Ltd", "total": 1.0}, name="Plain"))
    )
    ex = Extractor(Plain, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)])
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    asyncio.run(BatchRunner(ex, None, out=out).run([tmp_path / "a.txt"]))
    assert json.loads(out.read_text(encoding="utf-8"))["spans"] is None
    ex.close()
