"""The worker path's CPU per document (issue 17, section 6): fewer round trips per recorded
extraction on PostgreSQL, the same rows on both engines."""

from __future__ import annotations

import pytest

from extractkit.ledger import Ledger

from .ledger_fixtures import COSTS, chain, result


def current_attempts(ledger: Ledger) -> dict[str, list[int]]:
    rows = ledger.query("SELECT extraction_id, current FROM attempts ORDER BY extraction_id, number, tier")
    out: dict[str, list[int]] = {}
    for r in rows:
        out.setdefault(r["extraction_id"], []).append(int(r["current"]))
    return out


def test_a_rerun_makes_the_earlier_attempts_not_current_on_both_engines(ledger_target):
    ex = chain()
    with Ledger(ledger_target) as ledger:
        first = ledger.record(ex, result(ex, "few", "doc-a", COSTS), text="doc-a")
        other = ledger.record(ex, result(ex, "zero", "doc-b", COSTS), text="doc-b")
        forced = ledger.record(ex, result(ex, "zero", "doc-a", COSTS), text="doc-a",
                               config_hash="tier-hash", forced_tier="zero_shot")  # fmt: skip
        second = ledger.record(ex, result(ex, "ft", "doc-a", COSTS), text="doc-a")
        cur = current_attempts(ledger)
        assert set(cur[first]) == {0}  # superseded by the rerun
        assert set(cur[second]) == {1} and set(cur[other]) == {1}
        assert set(cur[forced]) == {0}  # a tier alone is never the chain's current
        third = ledger.record(ex, result(ex, "zero", "doc-a", COSTS), text="doc-a")
        cur = current_attempts(ledger)
        assert set(cur[second]) == {0} and set(cur[third]) == {1} and set(cur[first]) == {0}
        assert set(cur[other]) == {1}
        superseded = {
            r["id"]: r["superseded_by"] for r in ledger.query("SELECT id, superseded_by FROM extractions")
        }
        assert superseded[first] == second and superseded[second] == third and superseded[third] is None


def test_recording_on_postgresql_waits_for_few_answers(pg_url, monkeypatch):
    """One extraction's statements go out pipelined: the client waits on the socket far less
    often than once per statement and result (68 waits for these two records before, 51 now;
    the rollups' reads still wait for their answers)."""
    psycopg = pytest.importorskip("psycopg")
    ex = chain()
    with Ledger(pg_url) as ledger:
        ledger.record(ex, result(ex, "few", "warm", COSTS), text="warm")  # versions, catalog: once
        waits = []
        real = psycopg.Connection.wait

        def counted(self, *args, **kwargs):
            waits.append(1)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(psycopg.Connection, "wait", counted)
        ledger.record(ex, result(ex, "few", "doc", COSTS), text="doc")
        ledger.record(ex, result(ex, "zero", "doc", COSTS), text="doc")  # a rerun: supersedes
        monkeypatch.undo()
        assert 0 < len(waits) <= 60, len(waits)
        assert sorted(map(set, current_attempts(ledger).values()), key=min) == [{0}, {1}, {1}]
