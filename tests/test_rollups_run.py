"""``report --run`` from the rollups without a per-row look for later extractions (issue 17).

A run none of whose extractions was superseded (the rollups know: no row of the run moved out of the
current view) is read row by row as the current view (``superseded_by IS NULL``, the attempts'
``current`` flag); a run with superseded extractions keeps the exact per-row membership. Both equal
the full scan, also with the rejected values read by the (tier, outcome) index (a large scope's way).
"""

from __future__ import annotations

from extractkit.report import Scope

from .test_rollups import compare, parity, reports  # noqa: F401  (parity: the fixture)


def test_a_run_never_superseded_is_read_as_the_current_view_with_the_full_scans_numbers(parity, monkeypatch):  # noqa: F811
    ledger, runs = parity
    monkeypatch.setattr("extractkit.report._aggregate.DRIVEN_VALUES_MIN", 0)  # rejected values by index
    for name, run in runs.items():
        fast, full = reports(ledger, Scope(run_id=run), monkeypatch)
        assert compare(fast, full) == [], name
        assert fast["field_failures"]["rows"] or name == "edge", name
        sql = " ".join(q["sql"] for q in fast["queries"] if q["name"] in ("edge_extractions", "field_values"))
        assert sql, name
        # spread: never rerun; old: 30 of its documents rerun by a later run; twice: within the run
        if name == "spread":
            assert "NOT EXISTS" not in sql and "a.current = 1 AND a.run_id = ?" in sql
        elif name in ("old", "twice"):
            assert "NOT EXISTS" in sql, name
    for name in ("run_since", "run_until"):
        scope = Scope(run_id=runs["spread"], since=1.0) if name == "run_since" else Scope(run_id=runs["old"],
                                                                                             until=2e9)
        fast, full = reports(ledger, scope, monkeypatch)
        assert compare(fast, full) == [], name
