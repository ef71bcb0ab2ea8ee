"""The report from the rollups equals the report from a full scan (issue 17).

A ledger written only through ``Ledger.record`` (so the rollups are the ones its writes kept) over
several days and hours, with reruns by a later run and within one run (superseded extractions),
eval's forced extractions, unknown prices, two chain configs, rejected field values, unreadable
documents and attempts on both sides of the drift windows' edges. For every scope the CLI offers,
``build_report`` from the rollups equals the full scan (``USE_ROLLUPS = False``) number for number
(floats to 1e-9), latency percentiles within the buckets' bound (``ROLLUP_RATIO``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from extractkit import Outcome
from extractkit.ledger import ROLLUP_RATIO, Ledger, ensure_rollups, rebuild_rollups, rollup_bucket
from extractkit.report import Economics, Scope, build_report

from .ledger_fixtures import COSTS, chain, result
from .test_report_compat import differences

HOUR = 3600.0
DAY = 86_400.0
NOW = 1_800_000_000.0  # a whole hour
LATENCY_KEYS = ("latency_p50_s", "latency_p95_s")


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def record(ledger: Ledger, ex: Any, kind: str, k: int, at: float, *, run: str | None,
           costs: dict[str, float | None] | None = None, **kwargs: Any) -> str:  # fmt: skip
    """Document ``k`` by path ``kind`` (``ledger_fixtures.PATHS``) at time ``at``: its attempts started
    just before, with latencies and errors that vary with ``k``."""
    res = result(ex, kind, f"{k:x}", {**COSTS, **(costs or {})})
    attempts = []
    for i, a in enumerate(res.attempts):
        errors = None
        if a.outcome in (Outcome.SCHEMA_INVALID, Outcome.UNGROUNDED):
            kind = "ungrounded" if a.outcome is Outcome.UNGROUNDED else "float_parsing"
            errors = [{"loc": ["total"] if k % 3 else ["lines", 0, "name"], "type": kind, "input": f"v{k % 4}"},
                      {"loc": ["issuer"], "type": kind, "input": "Globex"}]  # fmt: skip
        latency = a.latency_s * (1 + (k % 7) / 10) if k % 2 else a.latency_s
        attempts.append(dataclasses.replace(a, started_at=at - 30 + i, latency_s=latency, errors=errors))
    res = dataclasses.replace(res, attempts=attempts, latency_s=sum(a.latency_s for a in attempts))
    return ledger.record(ex, res, run_id=run, path=f"d/{k}.txt", **kwargs)


def build(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    clock = Clock(NOW - 40 * DAY)
    monkeypatch.setattr(time, "time", clock)
    a, b = chain(), chain(("zero_shot", "few_shot"))
    paths = ["zero", "few", "ft", "none"]
    runs = {}

    def batch(name: str, ex: Any, start: float, docs: range, step: float, costs: Any = None,
              path_of: Any = None) -> None:  # fmt: skip
        clock.t = start
        run = runs[name] = ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        for k in docs:
            clock.t += step
            record(ledger, ex, path_of(k) if path_of else paths[k % 4], k, clock.t, run=run, costs=costs)
        ledger.finish_run(run, "done")

    # the baseline window, a month before; every document once, by chain a
    batch("old", a, NOW - 30 * DAY - 1800, range(0, 60), 97.0)
    # one document every 3 hours for 7.5 days: whole days in between (batches in time order, as one
    # clock writes them: ids and times agree)
    batch("spread", a, NOW - 19 * DAY - 1234, range(300, 360), 3 * HOUR + 17)
    # the days before the recent window's edge (NOW - 7 days), across it, by chain b (unpriced fine-tuned
    # never runs in b; few-shot unpriced here)
    batch("edge", b, NOW - 7 * DAY - 2 * HOUR, range(100, 160), 211.0, costs={"few_shot": None})
    # reruns: documents of the first run, again by chain a, now resolved, across an hour's edge
    batch("rerun", a, NOW - 3 * DAY - 1000, range(0, 30), 61.0, path_of=lambda k: "few")
    # one run that extracts some documents twice (superseded within the run) and new ones
    clock.t = NOW - DAY - 500
    run = runs["twice"] = ledger.start_run("batch", a.describe(), a.config_hash, a.schema_hash)
    for k in [*range(200, 230), *range(200, 210), *range(20, 25)]:
        clock.t += 37.0
        record(ledger, a, paths[k % 4], k, clock.t, run=run)
    ledger.finish_run(run, "done")
    # eval's forced extractions, a library extraction without a run, an unreadable document
    clock.t = NOW - 2 * HOUR
    for k in range(5):
        record(
            ledger,
            a,
            "ft",
            k,
            clock.t,
            run=None,
            forced_tier="few_shot",
            config_hash=a.tier_hashes["few_shot"],
        )
    record(ledger, a, "few", 4000, clock.t + 5, run=None)
    ledger.record_error(run_id=runs["twice"], path="scan.pdf", kind="empty_document", message="no text",
                        schema_hash=a.schema_hash, config_hash=a.config_hash)  # fmt: skip
    return runs


@pytest.fixture
def parity(tmp_path, monkeypatch):
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        runs = build(ledger, monkeypatch)
        monkeypatch.undo()
        yield ledger, runs


def scopes(runs: dict[str, str]) -> dict[str, Scope]:
    cut = NOW - 3 * DAY - 123.0  # not on an hour
    return {
        "all": Scope(),
        "since": Scope(since=cut),
        "since_hour": Scope(since=NOW - 7 * DAY),
        "until": Scope(until=cut),
        "until_late": Scope(until=NOW - DAY + 400.0),
        "window": Scope(since=NOW - 31 * DAY, until=cut),
        "schema": Scope(schema="Invoice"),
        **{f"run_{k}": Scope(run_id=v) for k, v in runs.items()},
        "run_since": Scope(run_id=runs["twice"], since=NOW - DAY - 100.0),
        "run_until": Scope(run_id=runs["twice"], until=NOW - DAY + 900.0),
        "config_b": Scope(config_hash=chain(("zero_shot", "few_shot")).config_hash[:10]),
        "config_a_since": Scope(config_hash=chain().config_hash, since=NOW - 10 * DAY),
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``differences`` without the queries, latency percentiles to the buckets' bound."""
    out = []
    for path, x, y in differences({k: v for k, v in a.items() if k != "queries"},
                                  {k: v for k, v in b.items() if k != "queries"}):  # fmt: skip
        latency = path.endswith(LATENCY_KEYS) and isinstance(x, float) and isinstance(y, float)
        if latency and y / ROLLUP_RATIO <= x <= y * ROLLUP_RATIO:
            continue
        out.append((path, x, y))
    return out


def reports(
    ledger: Ledger, scope: Scope, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], dict[str, Any]]:
    econ = Economics(failure_cost=1.0)
    monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", True)
    fast = build_report(ledger, scope, as_of=NOW, economics=econ)
    monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", False)
    full = build_report(ledger, scope, as_of=NOW, economics=econ)
    monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", True)
    return fast, full


def test_the_rollups_give_the_full_scan_report_in_every_scope(parity, monkeypatch):
    ledger, runs = parity
    assert ledger.query("SELECT COUNT(*) AS n FROM extractions WHERE superseded_by IS NOT NULL")[0]["n"] == 45
    assert ledger.query("SELECT COUNT(*) AS n FROM extractions WHERE forced_tier IS NOT NULL")[0]["n"] == 5
    for name, scope in scopes(runs).items():
        fast, full = reports(ledger, scope, monkeypatch)
        assert compare(fast, full) == [], name
        assert fast["totals"]["documents"] > 0 or name == "run_twice_until", name
        assert any(q["name"] == "rollup_documents" for q in fast["queries"])
    whole, _ = reports(ledger, Scope(), monkeypatch)
    assert whole["totals"]["documents"] == 60 + 60 + 60 + 30 + 1 and whole["versions"]["rows"]
    assert any(q["name"] == "rollup_documents" and "_daily d WHERE" in q["sql"] for q in whole["queries"])
    assert any(t["unpriced_attempts"] for t in whole["tiers"]) and whole["document_errors"]
    assert whole["field_failures"]["rows"] and whole["unresolved"]["examples"]
    assert any(t["recent"]["reached"] and t["baseline"]["reached"] for t in whole["drift"]["tiers"])
    # --run of the first run keeps what it did, though a later run extracted 30 of its documents again
    by_run, _ = reports(ledger, Scope(run_id=runs["old"]), monkeypatch)
    assert by_run["totals"]["documents"] == 60


def test_latency_from_buckets_is_within_the_stated_bound(parity, monkeypatch):
    ledger, _ = parity
    fast, full = reports(ledger, Scope(), monkeypatch)
    pairs = [(fast["totals"], full["totals"])] + list(zip(fast["tiers"], full["tiers"], strict=True))
    checked = 0
    for x, y in pairs:
        for key in LATENCY_KEYS:
            assert y[key] / ROLLUP_RATIO <= x[key] <= y[key] * ROLLUP_RATIO, key
            checked += 1
    assert checked == 8
    for v in (0.3, 1.0, 1.05, 2.999, 1e-4, 600.0):
        b = rollup_bucket(v)
        assert ROLLUP_RATIO**b <= v < ROLLUP_RATIO ** (b + 1)


def table_rows(ledger: Ledger) -> dict[str, dict[tuple[Any, ...], tuple[float, ...]]]:
    from extractkit.ledger._rollups import ALL_TABLES, spec

    out = {}
    for table in ALL_TABLES:
        key, sums = spec(table)
        rows = ledger.query(f"SELECT * FROM {table} WHERE n != 0")
        out[table] = {tuple(r[k] for k in key): tuple(round(float(r[s]), 9) for s in sums) for r in rows}
    return out


def test_rebuild_gives_the_rows_every_write_kept(parity):
    ledger, _ = parity
    kept = table_rows(ledger)
    assert all(kept.values())
    rebuild_rollups(ledger)
    assert table_rows(ledger) == kept


def test_a_ledger_written_before_the_rollups_gets_them_at_its_first_report(parity, monkeypatch):
    ledger, _ = parity
    before = build_report(ledger, as_of=NOW)
    from extractkit.ledger._rollups import ALL_TABLES

    for table in ALL_TABLES:
        ledger.conn.execute(f"DELETE FROM {table}")
    ledger.conn.execute("UPDATE rollup_state SET built = 0")  # as the 0007_rollups migration leaves it
    assert ensure_rollups(ledger) is True and ensure_rollups(ledger) is False
    assert compare(build_report(ledger, as_of=NOW), before) == []


def test_the_migration_backfills_on_upgrade(tmp_path):
    """0007_rollups on a ledger that already has extractions leaves the rollups to be built (by
    the first report); on a new ledger they are built (empty) at once."""
    import sqlite3

    from extractkit.ledger import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for name, sql in MIGRATIONS:
        if name == "0007_rollups":
            break
        con.executescript(sql)
        con.execute("INSERT INTO _migrations VALUES (?, 0)", (name,))
    ex = chain()
    con.execute("INSERT INTO extractions (id, document_sha256, schema_hash, config_hash, status, tier, outcome,"
                " n_attempts, cost_usd, latency_s, created_at) VALUES ('x1', 'd', ?, ?, 'ok', 'zero_shot', 'ok', 1,"
                " 0.001, 1.0, ?)", (ex.schema_hash, ex.config_hash, NOW - DAY))  # fmt: skip
    con.execute("INSERT INTO attempts (id, extraction_id, tier, model, number, outcome, cost_usd, latency_s,"
                " started_at, won, current) VALUES ('a1', 'x1', 'zero_shot', 'm', 1, 'ok', 0.001, 1.0, ?, 1, 1)",
                (NOW - DAY - 1,))  # fmt: skip
    con.commit()
    con.close()
    with Ledger(path) as ledger:
        assert "0007_rollups" in ledger.applied
        assert ledger.query("SELECT built FROM rollup_state")[0]["built"] == 0
        report = build_report(ledger, as_of=NOW)
        assert report["totals"]["documents"] == 1 and report["tiers"][0]["attempts"] == 1
        assert ledger.query("SELECT built FROM rollup_state")[0]["built"] == 1
    with Ledger(tmp_path / "new.sqlite3") as ledger:
        assert ledger.query("SELECT built FROM rollup_state")[0]["built"] == 1


def test_the_report_reads_only_the_hours_at_its_edges_from_the_plain_tables(tmp_path, monkeypatch):
    """What the report reads row by row is bounded by the hours at the edges of its scope, not by
    the ledger: unfiltered, the first and last hours of documents (and those the drift windows cut,
    none here); with --since, the hour it cuts too."""
    clock = Clock(NOW - 3 * DAY)
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        monkeypatch.setattr(time, "time", clock)
        ex = chain()
        for k in range(48 * 4):  # four documents an hour for two days
            clock.t = NOW - 3 * DAY + k * 900 + 60
            record(ledger, ex, ["zero", "few", "ft", "none"][k % 4], k, clock.t, run=None)
        monkeypatch.undo()
        for scope, hours in ((Scope(), 2), (Scope(since=NOW - 2 * DAY - 1000), 3)):
            fast, full = reports(ledger, scope, monkeypatch)
            assert compare(fast, full) == []
            names = [q["name"] for q in fast["queries"]]
            edge = fast["queries"][names.index("edge_extractions")]
            read = ledger.query(edge["sql"], edge["params"])
            assert 0 < len(read) <= 4 * hours, scope  # of 192 documents
            assert {int(e["created_at"] // HOUR) for e in read} != set()


# -- PostgreSQL ------------------------------------------------------------------------------------


def test_the_report_is_the_same_on_postgresql(tmp_path, pg_url, monkeypatch):
    """The same extractions recorded through ``Ledger.record`` into SQLite and into PostgreSQL give
    the same ``report --json`` in every scope, field by field (queries aside; run ids differ)."""
    with Ledger(tmp_path / "l.sqlite3") as lite:
        runs_lite = build(lite, monkeypatch)
        monkeypatch.undo()
        with Ledger(pg_url) as pg:
            assert pg.engine == "postgresql"
            runs_pg = build(pg, monkeypatch)
            monkeypatch.undo()
            pg_scopes = scopes(runs_pg)
            for name, scope in scopes(runs_lite).items():
                a = build_report(lite, scope, as_of=NOW, economics=Economics(failure_cost=1.0))
                b = build_report(pg, pg_scopes[name], as_of=NOW, economics=Economics(failure_cost=1.0))
                a["scope"]["run_id"] = b["scope"]["run_id"] = None
                assert differences({k: v for k, v in a.items() if k != "queries"},
                                   {k: v for k, v in b.items() if k != "queries"}) == [], name  # fmt: skip
                assert a["totals"]["documents"] > 0 or name == "run_twice_until", name
