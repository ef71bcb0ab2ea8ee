"""The report's JSON stays what it was: on a ledger that exercises every part of the report (three
tiers over two drift windows, unpriced attempts, a served-model change, the local model, rejected
field values, an unreadable document), the JSON of ``build_report`` equals, key for key and value
for value (in the same key order), the JSON the code produced before the report became typed
values (issue 15). The expected file was written once by the code as found:

    EXTRACTKIT_WRITE_REPORT_FIXTURE=1 python -m pytest tests/test_report_compat.py
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from extractkit.ledger import Ledger, rebuild_rollups
from extractkit.report import Economics, Scope, build_report

from .ledger_fixtures import chain, populate
from .test_report_explains import extract_six, responder

DAY = 86_400.0
NOW = 1_800_000_000.0
FIXTURE = Path(__file__).parent / "data" / "report_compat.json"
SCOPES = {
    "whole_ledger": (Scope(), Economics(failure_cost=2.0, training_cost=50.0)),
    "filtered": (Scope(schema="Invoice"), Economics(failure_cost=0.5, min_documents=10)),
    "one_window": (Scope(since=NOW - 3 * DAY), Economics()),
    "empty": (Scope(schema="NoSuchSchema"), Economics()),
}


def compat_ledger(ledger: Ledger) -> None:
    extract_six(ledger)  # rejected values, ungrounded fields (times set below)
    with ledger.transaction() as tx:  # either engine
        tx.execute("UPDATE extractions SET created_at = ?", (NOW - 12 * DAY,))
        tx.execute("UPDATE attempts SET started_at = ?", (NOW - 12 * DAY - 1,))
        tx.execute("UPDATE served_models SET first_seen = ?, last_seen = ?", (NOW - 12 * DAY, NOW - 12 * DAY))
    counts = {"zero": 14, "few": 9, "ft": 8, "none": 4}
    populate(ledger, counts, created_at=NOW - 2 * DAY, prefix="r")
    populate(ledger, counts, created_at=NOW - 10 * DAY, prefix="b", costs={"few_shot": 0.003})
    populate(ledger, {"ft": 2, "none": 1}, created_at=NOW - 1 * DAY, prefix="u", costs={"fine_tuned": None})
    local = populate(ledger, {"zero": 3, "none": 1}, extractor=chain(("zero_shot",)), created_at=NOW - 4 * DAY,
                     prefix="l")  # fmt: skip
    with ledger.transaction() as tx:
        tx.execute(
            "UPDATE attempts SET model = 'local' WHERE extraction_id IN"
            " (SELECT id FROM extractions WHERE config_hash = ?)",
            (local.config_hash,),
        )
        # and its run config says so, as a run on the bundled model records it (endpoint "local")
        for run_id, config_json in tx.execute(
            "SELECT id, config_json FROM runs WHERE config_hash = ?", (local.config_hash,)
        ).fetchall():
            config = json.loads(config_json)
            for tier in config.get("tiers", []):
                tier.update(endpoint="local", model="local")
            tx.execute("UPDATE runs SET config_json = ? WHERE id = ?", (json.dumps(config), run_id))
    ex = chain()
    ledger.record_error(run_id=None, path="scan.pdf", kind="empty_document", message="no text in scan.pdf",
                        schema_hash=ex.schema_hash, config_hash=ex.config_hash)  # fmt: skip
    with ledger.transaction() as tx:
        tx.execute("UPDATE extractions SET created_at = ? WHERE status = 'error'", (NOW - 2 * DAY,))
        tx.executemany(
            "INSERT INTO served_models (tier, model, served_model, fingerprint, first_seen, last_seen)"
            " VALUES (?,?,?,?,?,?)",
            [("zero_shot", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "", NOW - 30 * DAY, NOW - 3 * DAY),
             ("zero_shot", "gpt-4o-mini", "gpt-4o-mini-2025-01-01", "fp_1", NOW - 2 * DAY, NOW - 1 * DAY)],
        )  # fmt: skip
    rebuild_rollups(ledger)  # the edits above bypass Ledger.record


def normalised(report: Any) -> Any:
    """The JSON of a report, with the one name that changes every run (the temp table) fixed."""
    text = json.dumps(report, indent=2)
    return json.loads(re.sub(r"temp\.report_latest_[0-9A-Za-z]+", "temp.report_latest_ID", text))


def key_order(x: Any) -> Any:
    if isinstance(x, dict):
        return [(k, key_order(v)) for k, v in x.items()]
    if isinstance(x, list):
        return [key_order(v) for v in x]
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def reports(request, mock_api, tmp_path) -> dict[str, Any]:
    """The reports of the compat ledger, on each engine: the same JSON on PostgreSQL (issue 17)."""
    mock_api.post("/chat/completions").mock(side_effect=responder)
    target = tmp_path / "ledger.sqlite3" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with Ledger(target) as ledger:
        compat_ledger(ledger)
        return {
            name: normalised(build_report(ledger, scope, economics=econ, as_of=NOW))
            for name, (scope, econ) in SCOPES.items()
        }


def test_report_json_is_unchanged(reports):
    """Every number and sentence is what it was. The queries are not (since the rollups, issue 17: the
    report reads per-hour sums and the hours at its edges; the fixture keeps the queries of the full
    scan); floats are compared to 1e-9 (sums of costs are added in another order)."""
    if os.environ.get("EXTRACTKIT_WRITE_REPORT_FIXTURE"):
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(reports, indent=1) + "\n", encoding="utf-8")
    expected = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert set(reports) == set(expected)
    for name in expected:
        got, want = without_queries(reports[name]), without_queries(expected[name])
        assert differences(got, want) == [], name
        assert key_order(got) == key_order(want), name


def without_queries(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "queries"}


def differences(a: Any, b: Any, path: str = "", rel: float = 1e-9) -> list[tuple[str, Any, Any]]:
    """Where two reports (plain data) differ: (path, a, b); floats equal to ``rel``."""
    out: list[tuple[str, Any, Any]] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in dict.fromkeys([*a, *b]):
            if k not in a or k not in b:
                out.append((f"{path}/{k}", a.get(k, "<missing>"), b.get(k, "<missing>")))
            else:
                out += differences(a[k], b[k], f"{path}/{k}", rel)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append((path, a, b))
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                out += differences(x, y, f"{path}[{i}]", rel)
    elif isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        if not numbers or not math.isclose(a, b, rel_tol=rel, abs_tol=1e-12):
            out.append((path, a, b))
    elif a != b:
        out.append((path, a, b))
    return out


def test_the_fixture_covers_every_part_of_the_report():
    """A compatibility check is only as good as what its ledger holds."""
    whole = json.loads(FIXTURE.read_text(encoding="utf-8"))["whole_ledger"]
    assert [t["tier"] for t in whole["tiers"]] == ["zero_shot", "few_shot", "fine_tuned"]
    assert whole["drift"]["model_changes"] and whole["drift"]["flagged"]
    assert any("success_z" in t for t in whole["drift"]["tiers"])
    assert whole["field_failures"]["rows"] and whole["unresolved"]["examples"] and whole["document_errors"]
    assert len(whole["notes"]) == 4 and whole["rescue"][-1]["break_even_documents"] is not None
    assert any(t["cost_usd"] is None for t in whole["tiers"])
    assert json.loads(FIXTURE.read_text(encoding="utf-8"))["empty"]["totals"]["documents"] == 0
