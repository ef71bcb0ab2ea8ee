"""Tier usage from the ledger: how often each tier wins and what a valid extraction costs.

Every number here is one SQL query over the ledger's plain tables (see ``TIER_SQL``), so it can
be reproduced with any SQLite tool.
"""

from __future__ import annotations

from typing import Any

from ..ledger import Ledger

# The latest final extraction of each (document, config) in scope.
LATEST_CTE = """
WITH scope AS (
    SELECT e.* FROM extractions e
    WHERE e.status IN ('ok', 'failed') {where}
),
latest AS (
    SELECT * FROM scope s
    WHERE s.id = (SELECT MAX(id) FROM scope t
                  WHERE t.document_sha256 = s.document_sha256 AND t.config_hash = s.config_hash)
)
"""

# Per tier, over those extractions.
TIER_SQL = (
    LATEST_CTE
    + """
SELECT a.tier,
       MIN(a.id) AS first_attempt,
       COUNT(DISTINCT a.extraction_id) AS reached,
       COUNT(DISTINCT CASE WHEN l.tier = a.tier THEN l.id END) AS resolved,
       COUNT(*) AS attempts,
       SUM(a.prompt_tokens) AS prompt_tokens,
       SUM(a.completion_tokens) AS completion_tokens,
       SUM(a.cost_usd) AS cost_usd,
       SUM(a.cost_usd IS NULL) AS unpriced_attempts,
       AVG(a.latency_s) AS mean_latency_s
FROM attempts a JOIN latest l ON l.id = a.extraction_id
GROUP BY a.tier
ORDER BY first_attempt
"""
)

TOTALS_SQL = (
    LATEST_CTE
    + """
SELECT COUNT(*) AS documents,
       SUM(status = 'ok') AS ok,
       SUM(status = 'failed') AS failed,
       SUM(cost_usd) AS cost_usd,
       SUM(cost_usd IS NULL) AS unpriced
FROM latest
"""
)


def tier_report(ledger: Ledger, *, run_id: str | None = None) -> dict[str, Any]:
    where, params = ("AND e.run_id = ?", [run_id]) if run_id else ("", [])
    tiers = [dict(r) for r in ledger.query(TIER_SQL.format(where=where), params)]
    totals = dict(ledger.query(TOTALS_SQL.format(where=where), params)[0])
    errors = ledger.query(
        "SELECT outcome, COUNT(*) AS n FROM extractions e WHERE status = 'error' "
        + where + " GROUP BY outcome", params)  # fmt: skip
    failures = ledger.query(
        "SELECT a.tier, a.outcome, COUNT(*) AS n FROM attempts a JOIN extractions e"
        " ON e.id = a.extraction_id WHERE a.outcome != 'ok' " + where
        + " GROUP BY a.tier, a.outcome ORDER BY n DESC", params)  # fmt: skip
    valid = totals.get("ok") or 0
    for t in tiers:
        t.pop("first_attempt", None)
        t["success_rate"] = t["resolved"] / t["reached"] if t["reached"] else None
        if t["unpriced_attempts"]:
            t["cost_usd"] = None
    cost = None if totals.get("unpriced") else (totals.get("cost_usd") or 0.0)
    totals["cost_per_valid_usd"] = (cost / valid) if (cost is not None and valid) else None
    totals["cost_usd"] = cost
    totals.pop("unpriced", None)
    return {
        "run_id": run_id,
        "totals": totals,
        "tiers": tiers,
        "failure_outcomes": [dict(r) for r in failures],
        "document_errors": {r["outcome"]: r["n"] for r in errors},
    }
