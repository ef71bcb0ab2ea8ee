"""The report on ledgers whose truth is known: every number and every verdict worked out by hand."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import subprocess
import sys

import pytest

from extractkit.ledger import Ledger
from extractkit.report import (
    DROP,
    KEEP,
    UNDECIDED,
    Economics,
    Scope,
    build_report,
    documents_needed,
    marginal_verdict,
    percentile,
    report_csv,
    two_proportion_z,
    wilson,
)

from .ledger_fixtures import chain, populate

DAY = 86_400.0
NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    """The same tests on both engines (issue 17: the report reads the same on PostgreSQL)."""
    target = tmp_path / "ledger.sqlite3" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with Ledger(target) as lg:
        yield lg


@pytest.fixture
def sqlite_ledger(tmp_path):
    """SQLite alone: for the tests that read the file with sqlite3 or compare with the full scan,
    which runs on SQLite only (not parametrised rather than skipped on PostgreSQL)."""
    with Ledger(tmp_path / "ledger.sqlite3") as lg:
        yield lg


def tier(report, name):
    return next(t for t in report["tiers"] if t["tier"] == name)


def verdict(report, name):
    return next(v for v in report["verdicts"] if v["tier"] == name)


# -- the statistics, against values computed independently --------------------------------------


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (30, 100, 0.21894, 0.39585),   # Wilson (1927); same as statsmodels proportion_confint(method="wilson")
    (0, 500, 0.0, 0.0076242),      # z^2 / (n + z^2) at k = 0
    (2, 5, 0.11762, 0.76928),
    (10, 10, 0.72247, 1.0),
])  # fmt: skip
def test_wilson_interval(k, n, lo, hi):
    got = wilson(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-5) and got[1] == pytest.approx(hi, abs=1e-5)


def test_documents_needed_is_the_smallest_n_that_decides():
    n = documents_needed(0, 100, 0.01)
    assert n is not None and wilson(0, n)[1] < 0.01 <= wilson(0, n - 1)[1]
    assert documents_needed(30, 100, 0.01) == 100  # already decided
    assert documents_needed(1, 100, 0.01) is None  # exactly at the threshold: never decided


def test_mcnemar_exact():
    from extractkit.report import mcnemar_exact

    assert mcnemar_exact(0, 6) == 2 / 64 and mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)


def test_percentile_nearest_rank_and_z():
    assert percentile([5, 1, 4, 2, 3], 0.5) == 3 and percentile([1, 2, 3, 4], 0.95) == 4
    assert percentile([], 0.5) is None
    # 60/100 vs 90/100: pooled p = 0.75, se = sqrt(.75*.25*.02) = 0.061237
    assert two_proportion_z(60, 100, 90, 100) == pytest.approx(-0.3 / 0.0612372, rel=1e-5)


# -- fixture ledgers -------------------------------------------------------------------------------


def test_fine_tuned_rescues_30_percent(ledger):
    populate(ledger, {"zero": 50, "few": 20, "ft": 30})
    r = build_report(ledger, economics=Economics(failure_cost=2.0, training_cost=50.0), as_of=NOW)
    t = r["totals"]
    assert (t["documents"], t["ok"], t["failed"]) == (100, 100, 0)
    assert t["cost_usd"] == pytest.approx(0.61) and t["cost_per_valid_usd"] == pytest.approx(0.0061)
    z, f, ft = tier(r, "zero_shot"), tier(r, "few_shot"), tier(r, "fine_tuned")
    assert [x["tier"] for x in r["tiers"]] == ["zero_shot", "few_shot", "fine_tuned"]
    assert (z["reached"], z["resolved"], z["attempts"], z["reasks"]) == (100, 50, 150, 50)
    assert (f["reached"], f["resolved"], f["attempts"], f["reasks"]) == (50, 20, 80, 30)
    assert (ft["reached"], ft["resolved"], ft["attempts"], ft["reasks"]) == (30, 30, 30, 0)
    assert z["success_rate"] == 0.5 and f["success_rate"] == 0.4 and ft["success_rate"] == 1.0
    assert (z["share_resolved"], f["share_resolved"], ft["share_resolved"]) == (0.5, 0.2, 0.3)
    # a tier's spend, failures included, per document it resolved
    assert z["cost_usd"] == pytest.approx(0.15) and z["cost_per_valid_usd"] == pytest.approx(0.003)
    assert f["cost_usd"] == pytest.approx(0.16) and f["cost_per_valid_usd"] == pytest.approx(0.008)
    assert ft["cost_per_attempt_usd"] == pytest.approx(0.01)
    assert z["failure_outcomes"] == {"invalid_json": 50, "schema_invalid": 50}
    assert (z["latency_p50_s"], f["latency_p95_s"], ft["latency_p50_s"]) == (1.0, 2.0, 0.5)
    assert (z["prompt_tokens"], z["completion_tokens"]) == (15_000, 3_000)
    rescue = next(x for x in r["rescue"] if x["tier"] == "fine_tuned")
    assert rescue["rescued"] == 30 and rescue["after"] == ["zero_shot", "few_shot"]
    assert rescue["own_cost_usd"] == pytest.approx(0.30) and rescue["lower_cost_usd"] == pytest.approx(0.18)
    assert rescue["cost_per_rescued_usd"] == pytest.approx(0.016)
    assert rescue["failures_avoided_usd"] == pytest.approx(60.0)
    v = verdict(r, "fine_tuned")
    assert v["decision"] == KEEP and v["sentence"].startswith("Keep fine_tuned")
    assert (v["n"], v["rescued"]) == (100, 30) and v["ci_low"] == pytest.approx(0.21894, abs=1e-5)
    assert v["cost_per_document"] == pytest.approx(0.003) and v["threshold"] == 0.01
    # break-even of a $50 training cost: 50 / (0.3 * 2.00 - 0.003) documents
    assert v["break_even_documents"] == pytest.approx(50 / 0.597)
    assert verdict(r, "few_shot")["decision"] == KEEP
    assert r["verdict"] == v["sentence"]
    assert r["unresolved"]["by_outcome"] == {}


def test_fine_tuned_rescues_none(ledger):
    populate(ledger, {"zero": 300, "few": 150, "none": 50})
    r = build_report(ledger, as_of=NOW)
    v = verdict(r, "fine_tuned")
    assert (v["n"], v["rescued"], v["decision"]) == (500, 0, DROP)
    assert v["ci_high"] == pytest.approx(0.0076242, abs=1e-6) and v["threshold"] == 0.01
    assert v["cost_per_document"] == pytest.approx(1.0 / 500)  # 50 documents x 2 attempts x $0.01
    assert r["unresolved"]["by_outcome"] == {"ungrounded": 50}
    assert len(r["unresolved"]["examples"]) == 20
    assert r["totals"]["failed"] == 50 and tier(r, "fine_tuned")["cost_per_valid_usd"] is None
    assert r["verdict"].startswith("Drop fine_tuned")


def test_fine_tuned_rescues_some_but_costs_more_than_the_failures_it_saves(ledger):
    populate(ledger, {"zero": 100, "few": 40, "ft": 40, "none": 20}, costs={"fine_tuned": 0.05})
    r = build_report(ledger, economics=Economics(failure_cost=0.05, training_cost=10.0), as_of=NOW)
    v = verdict(r, "fine_tuned")
    # spend 40 x 0.05 + 20 x 2 x 0.05 = 4.00 over 200 documents; it needs 0.02 / 0.05 = 40 % rescued
    assert v["cost_per_document"] == pytest.approx(0.02) and v["threshold"] == pytest.approx(0.4)
    assert v["rate"] == 0.2 and v["savings_per_document"] == pytest.approx(0.01)
    assert v["net_per_document"] == pytest.approx(-0.01)
    assert v["decision"] == DROP and v["break_even_documents"] is None
    assert any("never recovers" in x for x in v["reasons"])
    rescue = next(x for x in r["rescue"] if x["tier"] == "fine_tuned")
    assert rescue["marginal_cost_per_rescue_usd"] == pytest.approx(0.1)  # 4.00 / 40, more than $0.05 saved


def test_only_five_documents_is_not_enough_evidence(ledger):
    populate(ledger, {"zero": 2, "few": 1, "ft": 2})
    r = build_report(ledger, as_of=NOW)
    v = verdict(r, "fine_tuned")
    assert v["decision"] == UNDECIDED and v["documents_needed"] == 25
    assert "25 more" in v["sentence"] and r["verdict"].startswith("Not enough evidence yet")


def test_undecided_with_enough_documents_says_how_many_more(ledger):
    populate(ledger, {"zero": 80, "few": 19, "ft": 1})
    v = verdict(build_report(ledger, as_of=NOW), "fine_tuned")
    assert v["decision"] == UNDECIDED and v["rate"] == 0.01  # exactly the bar: no amount decides it
    assert v["documents_needed"] is None and "no realistic number" in v["sentence"]
    v2 = marginal_verdict("ft", ["zero"], n=100, rescued=2, spend=0.0, economics=Economics())
    assert v2.decision == UNDECIDED and v2.documents_needed is not None
    total = 100 + v2.documents_needed
    assert wilson(round(0.02 * total), total)[0] > 0.01 >= wilson(round(0.02 * (total - 1)), total - 1)[0]
    assert f"about {v2.documents_needed} more documents" in v2.sentence


def test_unknown_price_is_unknown_not_zero(ledger):
    populate(ledger, {"zero": 50, "few": 20, "ft": 30}, costs={"fine_tuned": None})
    r = build_report(ledger, as_of=NOW)
    assert r["totals"]["cost_usd"] is None and tier(r, "fine_tuned")["cost_usd"] is None
    assert tier(r, "zero_shot")["cost_usd"] == pytest.approx(0.15)
    v = verdict(r, "fine_tuned")
    assert v["cost_per_document"] is None and any("price is unknown" in x for x in v["reasons"])
    assert any("no price" in n for n in r["notes"])


def test_no_data_and_single_tier(ledger):
    r = build_report(ledger, as_of=NOW)
    assert r["totals"]["documents"] == 0 and r["verdicts"] == [] and "extract" in r["verdict"]
    populate(ledger, {"zero": 3}, extractor=chain(("zero_shot",)))
    r = build_report(ledger, as_of=NOW)
    assert r["verdicts"] == [] and "nothing to compare" in r["verdict"]


def test_scope_run_window_schema_and_forced_tiers(ledger):
    populate(ledger, {"zero": 10}, created_at=NOW - 3 * DAY, prefix="a")
    ex = populate(ledger, {"few": 5}, created_at=NOW - 1 * DAY, prefix="b")
    run_b = ledger.query("SELECT run_id FROM extractions ORDER BY id DESC LIMIT 1")[0][0]
    assert build_report(ledger, Scope(run_id=run_b), as_of=NOW)["totals"]["documents"] == 5
    assert build_report(ledger, Scope(since=NOW - 2 * DAY), as_of=NOW)["totals"]["documents"] == 5
    assert build_report(ledger, Scope(until=NOW - 2 * DAY), as_of=NOW)["totals"]["documents"] == 10
    assert build_report(ledger, Scope(schema="Invoice"), as_of=NOW)["totals"]["documents"] == 15
    assert build_report(ledger, Scope(schema="Receipt"), as_of=NOW)["totals"]["documents"] == 0
    assert build_report(ledger, Scope(config_hash=ex.config_hash[:6]), as_of=NOW)["totals"]["documents"] == 15
    # an extraction where one tier was forced (eval) is not part of the chain's numbers
    from .ledger_fixtures import COSTS, result

    ledger.record(ex, result(ex, "ft", "ffff", COSTS), forced_tier="fine_tuned",
                  config_hash=ex.tier_hashes["fine_tuned"])  # fmt: skip
    assert build_report(ledger, as_of=NOW)["totals"]["documents"] == 15


def test_rerun_of_a_document_counts_once(ledger):
    ex = populate(ledger, {"none": 4})
    populate(ledger, {"zero": 4}, extractor=ex)  # same documents, same config, answered the second time
    r = build_report(ledger, as_of=NOW)
    assert (r["totals"]["documents"], r["totals"]["ok"]) == (4, 4)


# -- drift -----------------------------------------------------------------------------------------


def test_drift_flags_a_drop_in_success_rate(ledger):
    ex = chain(("zero_shot", "few_shot"))
    populate(ledger, {"zero": 90, "few": 10}, extractor=ex, created_at=NOW - 14 * DAY, prefix="old")
    populate(ledger, {"zero": 60, "few": 40}, extractor=ex, created_at=NOW - 1 * DAY, prefix="new")
    d = build_report(ledger, as_of=NOW)["drift"]
    z = next(x for x in d["tiers"] if x["tier"] == "zero_shot")
    assert z["recent"]["success_rate"] == 0.6 and z["baseline"]["success_rate"] == 0.9
    assert z["success_z"] == pytest.approx(two_proportion_z(60, 100, 90, 100))
    # cost per valid: 0.11 / 90 before, 0.14 / 60 now (+91 %), with a significant success change
    assert z["recent"]["cost_per_valid_usd"] == pytest.approx(0.14 / 60)
    assert z["flags"] == ["success_rate", "cost_per_valid"]
    f = next(x for x in d["tiers"] if x["tier"] == "few_shot")
    assert f["flags"] == [] and d["flagged"] == ["zero_shot: success_rate, cost_per_valid"]


def test_drift_quiet_when_nothing_changed_and_cautious_when_sparse(ledger):
    ex = chain(("zero_shot", "few_shot"))
    populate(ledger, {"zero": 80, "few": 20}, extractor=ex, created_at=NOW - 14 * DAY, prefix="old")
    populate(ledger, {"zero": 78, "few": 22}, extractor=ex, created_at=NOW - 1 * DAY, prefix="new")
    d = build_report(ledger, as_of=NOW)["drift"]
    assert d["flagged"] == []
    populate(ledger, {"zero": 5}, extractor=chain(("zero_shot",)), created_at=NOW - 2 * DAY, prefix="x")
    d = build_report(ledger, Scope(config_hash=chain(("zero_shot",)).config_hash), as_of=NOW)["drift"]
    assert "too few" in d["tiers"][0]["note"]


def test_drift_flags_a_price_change_under_the_same_name(ledger):
    ex = chain(("zero_shot", "few_shot"))
    populate(ledger, {"zero": 80, "few": 20}, extractor=ex, created_at=NOW - 14 * DAY, prefix="old")
    # the same mix, but zero-shot answers cost twice as much in the recent window (a model update)
    populate(ledger, {"zero": 79, "few": 21}, extractor=ex, created_at=NOW - 1 * DAY, prefix="new",
             costs={"zero_shot": 0.002})  # fmt: skip
    z = next(x for x in build_report(ledger, as_of=NOW)["drift"]["tiers"] if x["tier"] == "zero_shot")
    assert "cost_per_attempt" in z["flags"] and "cost_per_valid" in z["flags"]
    assert "success_rate" not in z["flags"]


# -- reproducible with plain SQL, and the other formats ------------------------------------------


def test_every_query_reruns_in_plain_sqlite(sqlite_ledger, request):
    ledger = sqlite_ledger
    populate(ledger, {"zero": 50, "few": 20, "ft": 30}, created_at=NOW - 3 * DAY)
    populate(ledger, {"zero": 5}, created_at=NOW - DAY, prefix="n")
    r = build_report(ledger, as_of=NOW)
    con = sqlite3.connect(ledger.path)  # a plain connection: the queries, in order, as recorded
    request.addfinalizer(con.close)
    names, documents, attempts = [], 0, 0
    for q in r["queries"]:
        cur = con.execute(q["sql"], q["params"])
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        names.append(q["name"])
        if q["name"] in ("rollup_documents", "edge_extractions"):  # whole hours, and the hours at the edges
            documents += sum(row.get("n", 1) for row in rows)
        if q["name"] in ("rollup_attempts", "edge_attempts"):
            attempts += sum(row.get("n", 1) for row in rows)
    assert documents == r["totals"]["documents"] == 105
    assert attempts == sum(t["attempts"] for t in r["tiers"]) == 265
    assert {"rollup_documents", "rollup_attempts", "rollup_latency", "edge_extractions"} <= set(names)
    json.dumps(r)  # all of it is JSON
    r2 = build_report(ledger, Scope(schema="Invoice"), as_of=NOW)
    con2 = sqlite3.connect(ledger.path)
    request.addfinalizer(con2.close)
    for q in r2["queries"]:
        con2.execute(q["sql"], q["params"]).fetchall()
    assert strip_queries(r2) == strip_queries(r) | {"scope": r2["scope"]}


def strip_queries(r):
    return {k: v for k, v in r.items() if k != "queries"}


def test_all_query_plans_give_the_same_report(sqlite_ledger, monkeypatch):
    """The full scan reads the current-extraction flags the ledger keeps unfiltered; filtered, it
    materialises the scope's latest extractions and joins, scanning the attempts by index over
    most of a big ledger or from the scope's extractions otherwise; the rollups read per-hour sums
    and the hours at the edges. Same numbers every way, with reruns (superseded extractions) and
    eval's forced extractions in the ledger."""
    from .ledger_fixtures import COSTS, result
    from .test_report_compat import differences

    ledger = sqlite_ledger

    ex = populate(ledger, {"none": 10}, created_at=NOW - 3 * DAY, prefix="r")
    populate(ledger, {"zero": 50, "few": 20, "ft": 30, "none": 7}, created_at=NOW - DAY)
    populate(ledger, {"few": 10}, extractor=ex, created_at=NOW - DAY, prefix="r")  # reruns now succeed
    ledger.record(ex, result(ex, "ft", "fffe", COSTS), forced_tier="fine_tuned", config_hash=ex.tier_hashes["fine_tuned"])
    assert ledger.query("SELECT COUNT(*) FROM extractions WHERE superseded_by IS NOT NULL")[0][0] == 10
    rollups = build_report(ledger, as_of=NOW)
    assert "rollup_attempts" in [q["name"] for q in rollups["queries"]]
    monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", False)
    current = build_report(ledger, as_of=NOW)
    assert "a.current = 1" in next(q["sql"] for q in current["queries"] if q["name"] == "attempts")
    monkeypatch.setattr("extractkit.report._aggregate.USE_CURRENT", False)
    small = build_report(ledger, as_of=NOW)
    monkeypatch.setattr("extractkit.report._aggregate.DRIVEN_MIN", 0)
    driven = build_report(ledger, as_of=NOW)
    assert "INDEXED BY attempts_tier CROSS JOIN" in next(q["sql"] for q in driven["queries"] if q["name"] == "attempts")
    assert "INDEXED BY" not in next(q["sql"] for q in small["queries"] if q["name"] == "attempts")
    assert strip_queries(driven) == strip_queries(small) == strip_queries(current)
    assert differences(strip_queries(rollups), strip_queries(current)) == []
    assert current["totals"]["documents"] == 117 and current["totals"]["ok"] == 110
    # a run filter over most of the ledger reads the flags in place too, unless one of its
    # extractions was superseded (then it materialises): the same numbers as materialised
    runs = [r["id"] for r in ledger.query("SELECT id FROM runs ORDER BY rowid")]
    for scope, in_place in ((Scope(run_id=runs[1]), True), (Scope(run_id=runs[0]), False),
                            (Scope(schema="Invoice"), False), (Scope(schema="Invoice", run_id=runs[1]), False)):  # fmt: skip
        monkeypatch.setattr("extractkit.report._aggregate.USE_CURRENT", True)
        fast = build_report(ledger, scope, as_of=NOW)
        names = [q["name"] for q in fast["queries"]]
        assert ("latest" not in names) is in_place, scope
        monkeypatch.setattr("extractkit.report._aggregate.USE_CURRENT", False)
        assert strip_queries(fast) == strip_queries(build_report(ledger, scope, as_of=NOW)), scope
        monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", True)
        assert differences(strip_queries(build_report(ledger, scope, as_of=NOW)), strip_queries(fast)) == [], scope
        monkeypatch.setattr("extractkit.report._aggregate.USE_ROLLUPS", False)
    assert fast["totals"]["documents"] == 107


def test_csv_has_one_row_per_tier(ledger):
    populate(ledger, {"zero": 50, "few": 20, "ft": 30})
    rows = list(csv.DictReader(io.StringIO(report_csv(build_report(ledger, as_of=NOW)))))
    assert [r["tier"] for r in rows] == ["zero_shot", "few_shot", "fine_tuned"]
    assert rows[1]["resolved"] == "20" and math.isclose(float(rows[1]["cost_per_valid_usd"]), 0.008)


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "extractkit", *args], capture_output=True, text=True,
                          timeout=120, **kw)  # fmt: skip


def test_report_cli_formats_and_errors(tmp_path, ledger):
    populate(ledger, {"zero": 50, "few": 20, "ft": 30})
    ledger.close()
    lp = str(ledger.target)
    term = cli("report", "--ledger", lp, "--failure-cost", "2", "--training-cost", "50")
    assert term.returncode == 0, term.stderr
    assert "Keep fine_tuned" in term.stdout and "break-even after 84 documents" in term.stdout
    out = cli("report", "--ledger", lp, "--json", "--csv", str(tmp_path / "r.csv"), "--html",
              str(tmp_path / "r.html"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["totals"]["documents"] == 100
    assert (tmp_path / "r.csv").read_text().startswith("tier,kind,")
    assert "<svg" in (tmp_path / "r.html").read_text()
    bad = cli("report", "--ledger", lp, "--since", "last tuesday")
    assert bad.returncode == 2 and "--since" in bad.stderr
    bad = cli("report", "--ledger", lp, "--failure-cost", "0")
    assert bad.returncode == 2 and "failure_cost" in bad.stderr
    missing = cli("report", "--ledger", str(tmp_path / "nope.sqlite3"))
    assert missing.returncode == 2 and "no ledger" in missing.stderr
    since = cli("report", "--ledger", lp, "--since", "1d", "--json")
    assert json.loads(since.stdout)["totals"]["documents"] == 100


def test_a_model_that_changes_under_the_same_name_is_flagged(ledger):
    from extractkit import Attempt, Outcome, Result, Usage

    ex = chain(("zero_shot",))

    def answer(doc: str, served: str, fingerprint: str | None, at: float, run: str) -> None:
        a = Attempt(tier="zero_shot", model="gpt-4o-mini", number=1, outcome=Outcome.OK, usage=Usage(10, 5),
                    cost_usd=0.001, started_at=at, served_model=served, fingerprint=fingerprint)  # fmt: skip
        ledger.record(ex, Result(value=None, tier=None, attempts=[a], latency_s=1.0, schema_hash=ex.schema_hash,
                                 document_sha256=f"{doc:0>64}"), run_id=run)  # fmt: skip

    old_run, new_run = (ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash) for _ in "ab")
    for i in range(3):
        answer(f"a{i}", "gpt-4o-mini-2024-07-18", "fp_1", NOW - 20 * DAY, old_run)
    answer("b1", "gpt-4o-mini-2025-03-01", "fp_9", NOW - DAY, new_run)
    r = build_report(ledger, as_of=NOW)
    [change] = r["drift"]["model_changes"]
    assert change["before"] == ["gpt-4o-mini-2024-07-18 (fp_1)"] and change["new"] == ["gpt-4o-mini-2025-03-01 (fp_9)"]
    assert any("now answered by gpt-4o-mini-2025-03-01" in f for f in r["drift"]["flagged"])
    rows = {(m["served_model"], m["first_seen"]) for m in r["served_models"]}
    assert rows == {("gpt-4o-mini-2024-07-18", NOW - 20 * DAY), ("gpt-4o-mini-2025-03-01", NOW - DAY)}
    # nothing new in the recent window: no flag
    assert build_report(ledger, as_of=NOW - 5 * DAY)["drift"]["model_changes"] == []
    # a filtered report lists the models that answered its own attempts
    early = build_report(ledger, Scope(run_id=old_run), as_of=NOW)
    assert [m["served_model"] for m in early["served_models"]] == ["gpt-4o-mini-2024-07-18"]
    assert early["drift"]["model_changes"] == []
    late = build_report(ledger, Scope(run_id=new_run), as_of=NOW)
    assert [m["served_model"] for m in late["served_models"]] == ["gpt-4o-mini-2025-03-01"]
    [z] = late["tiers"]
    assert (z["first_attempt_at"], z["last_attempt_at"]) == (NOW - DAY, NOW - DAY)


def test_headline_is_the_fine_tuned_tiers_verdict_by_kind_not_by_name():
    from extractkit.report import headline_sentence

    verdicts = [{"tier": "refined_prompt", "sentence": "A"}, {"tier": "ft", "sentence": "B"},
                {"tier": "big_model", "sentence": "C"}]  # fmt: skip
    kinds = {"zero": "zero_shot", "refined_prompt": "few_shot", "ft": "fine_tuned", "big_model": "zero_shot"}
    assert headline_sentence(verdicts, kinds) == "B"
    assert headline_sentence(verdicts, {**kinds, "ft": "few_shot"}) == "C"  # no fine-tuned tier: the last
    assert headline_sentence([], kinds) is None
