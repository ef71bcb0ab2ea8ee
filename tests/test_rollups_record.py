"""The rollups' cost on the record path (issue 17): ``Ledger.record`` hands the rows it has just
written to ``_rollups.apply``, so a document's first extraction is added to the rollups without
reading anything back, and a rerun reads only its document's chain. The rows kept stay the ones a
rebuild computes from the plain tables (also in tests/test_rollups.py, over a richer ledger)."""

from __future__ import annotations

from typing import Any

from extractkit.ledger import Ledger, rebuild_rollups

from .ledger_fixtures import COSTS, chain, result
from .test_rollups import table_rows


def statements_of(ledger: Ledger, do: Any) -> list[str]:
    seen: list[str] = []
    ledger.conn.set_trace_callback(seen.append)
    try:
        do()
    finally:
        ledger.conn.set_trace_callback(None)
    return [" ".join(s.split()) for s in seen]


def reads_of_written_rows(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith("SELECT") and ("FROM extractions" in s or "FROM attempts" in s)]


def test_a_first_extraction_is_added_without_reading_it_back_and_a_rerun_reads_its_chain(tmp_path):
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        ex = chain()
        run = ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        first = statements_of(ledger, lambda: ledger.record(ex, result(ex, "ft", "a1", COSTS), run_id=run))
        assert reads_of_written_rows(first) == []
        assert any(s.startswith("INSERT INTO rollup_attempts ") for s in first)
        # a rerun of the same document by the same chain moves the first one: it reads the chain
        rerun = statements_of(ledger, lambda: ledger.record(ex, result(ex, "few", "a1", COSTS), run_id=run))
        assert any("document_sha256 = " in s for s in reads_of_written_rows(rerun))
        for path, doc in (("none", "b2"), ("zero", "c3"), ("none", "c3"), ("few", "b2")):
            ledger.record(ex, result(ex, path, doc, COSTS), run_id=run)
        kept = table_rows(ledger)
        rebuild_rollups(ledger)
        assert table_rows(ledger) == kept
