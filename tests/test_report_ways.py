"""Issue 18, section 4: the report shows cost per valid extraction by way (live / batch / mixed) and
the Batch API's saving, from the rollups (``rollup_ways``) and, on SQLite, the same from a full scan;
a live-only ledger's report has no such section. Numbers worked out by hand (ledger_fixtures'
prices: zero-shot $0.001, few-shot $0.002, fine-tuned $0.01 per attempt live; batch half)."""

from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import pytest
from rich.console import Console

from extractkit.ledger import Ledger, rebuild_rollups
from extractkit.report import Scope, build_report, print_report, report_html

from .ledger_fixtures import COSTS, chain, result
from .test_rollups import compare

HOUR = 3600.0
DAY = 86_400.0
NOW = 1_800_000_000.0

# (path through the chain, way of each tier's attempts): live, batch or the last tier live (mixed)
DOCS = [("zero", "live"), ("zero", "batch"), ("few", "batch"), ("zero", "live"), ("none", "batch"),
        ("ft", "mixed"), ("zero", "batch"), ("zero", "batch")]  # fmt: skip


def record(ledger: Ledger, ex: Any, k: int, path: str, way: str, at: float, run: str) -> None:
    res = result(ex, path, f"{k:x}", COSTS)
    attempts = []
    for i, a in enumerate(res.attempts):
        batch = way == "batch" or (way == "mixed" and a.tier != "fine_tuned")
        live = a.cost_usd
        a = dataclasses.replace(a, started_at=at - 30 + i)
        if batch:
            a = dataclasses.replace(a, via="batch", cost_usd=live / 2, live_cost_usd=live)
        attempts.append(a)
    ledger.record(ex, dataclasses.replace(res, attempts=attempts), run_id=run, path=f"d/{k}.txt")


@pytest.fixture
def ways_ledger(ledger_target: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    clock = [NOW - 3 * DAY]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    with Ledger(ledger_target) as ledger:
        ex = chain()
        run = ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        for k, (path, way) in enumerate(DOCS):  # one document every 9 hours: whole hours and days between
            clock[0] += 9 * HOUR + 17
            record(ledger, ex, k, path, way, clock[0], run)
        ledger.finish_run(run, "done")
        monkeypatch.undo()
        yield ledger


# by hand: live 2 x zero (0.001); batch 3 x zero (0.0005) + few (2 x 0.0005 + 0.001 = 0.002) + none
# (2 x 0.0005 + 2 x 0.001 + 2 x 0.005 = 0.013), live price twice that; mixed ft: zero and few by
# batch (0.001 + 0.002), fine-tuned live 0.01 = 0.013, at live prices 0.002 + 0.004 + 0.01 = 0.016
WAYS = [
    {"via": "live", "documents": 2, "ok": 2, "cost_usd": 0.002, "cost_per_valid_usd": 0.001, "live_cost_usd": 0.002},
    {"via": "batch", "documents": 5, "ok": 4, "cost_usd": 0.0165, "cost_per_valid_usd": 0.004125,
     "live_cost_usd": 0.033},
    {"via": "mixed", "documents": 1, "ok": 1, "cost_usd": 0.013, "cost_per_valid_usd": 0.013, "live_cost_usd": 0.016},
]  # fmt: skip
SAVING = (0.033 + 0.016) - (0.0165 + 0.013)  # 0.0195
RATIO = (0.0165 + 0.013) / (0.033 + 0.016)


def close(got: Any, want: Any) -> bool:
    return compare({"x": got}, {"x": want}) == []


def test_the_report_shows_cost_per_valid_by_way_and_the_saving(ways_ledger):
    data = build_report(ways_ledger, as_of=NOW)
    assert data["totals"]["documents"] == 8
    assert close(data["ways"], WAYS), data["ways"]
    assert data["saving_usd"] == pytest.approx(SAVING) and data["saving_ratio"] == pytest.approx(RATIO)
    assert data["totals"]["cost_usd"] == pytest.approx(0.002 + 0.0165 + 0.013)
    assert any(q["name"] == "rollup_ways" for q in data["queries"])
    # a scope: the run, and a window that cuts the ledger (the first three documents, live and batch)
    assert close(build_report(ways_ledger, Scope(run_id=ways_ledger.query("SELECT id FROM runs")[0]["id"]),
                              as_of=NOW)["ways"], WAYS)  # fmt: skip
    early = build_report(ways_ledger, Scope(until=NOW - 3 * DAY + 28 * HOUR), as_of=NOW)
    assert close(early["ways"], [
        {"via": "live", "documents": 1, "ok": 1, "cost_usd": 0.001, "cost_per_valid_usd": 0.001, "live_cost_usd": 0.001},
        {"via": "batch", "documents": 2, "ok": 2, "cost_usd": 0.0025, "cost_per_valid_usd": 0.00125,
         "live_cost_usd": 0.005},
    ]), early["ways"]  # fmt: skip
    assert early["saving_usd"] == pytest.approx(0.0025) and early["saving_ratio"] == pytest.approx(0.5)


def test_the_terminal_and_html_reports_show_the_ways(ways_ledger):
    data = build_report(ways_ledger, as_of=NOW)
    buf = io.StringIO()
    print_report(data, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert "by way" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.strip().split(" ")[0] in ("live", "batch", "mixed")}  # fmt: skip
    assert rows["live"] == ["2", "2", "$0.002", "$0.001", "$0.002"]
    assert rows["batch"] == ["5", "4", "$0.0165", "$0.004125", "$0.033"]
    assert rows["mixed"] == ["1", "1", "$0.013", "$0.013", "$0.016"]
    assert "saving by batch: $0.0195 (they cost 60% of their live price)" in text
    html = report_html(data)
    assert "<h2>By way</h2>" in html and 'id="ways"' in html
    assert "<td>$0.004125</td>" in html and "saving by batch: $0.0195 (they cost 60% of their live price)" in html


def test_the_rollups_give_the_full_scan_ways(tmp_path, monkeypatch):
    """The rollup-vs-full-scan parity (tests/test_rollups.py's pattern) for the ways, SQLite."""
    clock = [NOW - 3 * DAY]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        ex = chain()
        run = ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        for k, (path, way) in enumerate(DOCS * 3):
            clock[0] += 3 * HOUR + 11
            record(ledger, ex, k % 10, path, way, clock[0], run)  # documents 0-9 again: superseded
        ledger.finish_run(run, "done")
        monkeypatch.undo()
        scopes = [Scope(), Scope(since=NOW - 2 * DAY - 100), Scope(until=NOW - DAY + 77), Scope(run_id=run),
                  Scope(run_id=run, until=NOW - DAY - 500)]  # fmt: skip
        for scope in scopes:
            monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", True)
            fast = build_report(ledger, scope, as_of=NOW)
            monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", False)
            full = build_report(ledger, scope, as_of=NOW)
            monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", True)
            assert fast["ways"] and compare(fast, full) == [], scope
        whole = build_report(ledger, as_of=NOW)
        rebuild_rollups(ledger)
        assert compare(build_report(ledger, as_of=NOW), whole) == []


def test_a_batch_price_unknown_leaves_the_saving_unknown(ledger_target):
    with Ledger(ledger_target) as ledger:
        ex = chain()
        run = ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        res = result(ex, "zero", "1", COSTS)
        attempts = [dataclasses.replace(a, via="batch", cost_usd=None, live_cost_usd=None) for a in res.attempts]
        ledger.record(ex, dataclasses.replace(res, attempts=attempts), run_id=run, path="d/1.txt")
        data = build_report(ledger)
    [way] = data["ways"]
    assert (way["via"], way["documents"], way["cost_usd"], way["live_cost_usd"]) == ("batch", 1, None, None)
    assert data["saving_usd"] is None and data["saving_ratio"] is None
    buf = io.StringIO()
    print_report(data, Console(file=buf, width=200, color_system=None))
    assert "saving by batch: unknown (a price is missing)" in buf.getvalue()


def test_a_live_only_report_has_no_ways(ledger_target):
    from .ledger_fixtures import populate

    with Ledger(ledger_target) as ledger:
        populate(ledger, {"zero": 2, "few": 1})
        data = build_report(ledger)
    assert "ways" not in data and "saving_usd" not in data and "saving_ratio" not in data
    buf = io.StringIO()
    print_report(data, Console(file=buf, width=200, color_system=None))
    assert "by way" not in buf.getvalue() and "saving" not in buf.getvalue()
    assert "By way" not in report_html(data)
