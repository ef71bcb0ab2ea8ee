"""The report's numbers: SQL over the ledger's plain tables, then a little arithmetic.

Unit of account: a *document* is the latest final (ok or failed) extraction of one document text
by one chain config, within the scope. Extractions where one tier was forced (eval) are left out:
they say nothing about how the chain escalates. Every query run is kept in ``queries`` (SQL and
parameters) so each number can be reproduced with any SQLite client.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from ..ledger import Ledger
from ._stats import Z99, two_proportion_z, wilson
from ._verdict import Economics, marginal_verdict

DAY = 86_400.0
VALIDATION = "('invalid_json', 'schema_invalid', 'ungrounded')"
TRANSIENT = "('rate_limited', 'api_error', 'timeout')"


@dataclass(frozen=True)
class Scope:
    """Which extractions a report covers. Times are Unix seconds."""

    schema: str | None = None  # schema name, or a prefix of its hash
    run_id: str | None = None
    since: float | None = None
    until: float | None = None
    config_hash: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = ["e.forced_tier IS NULL"]
        params: list[Any] = []
        if self.schema:
            clauses.append("e.schema_hash IN (SELECT hash FROM schemas WHERE name = ? OR hash LIKE ?)")
            params += [self.schema, self.schema + "%"]
        if self.run_id:
            clauses.append("e.run_id = ?")
            params.append(self.run_id)
        if self.since is not None:
            clauses.append("e.created_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("e.created_at < ?")
            params.append(self.until)
        if self.config_hash:
            clauses.append("e.config_hash LIKE ?")
            params.append(self.config_hash + "%")
        return " AND ".join(clauses), params

    def window(self, since: float, until: float) -> Scope:
        lo = since if self.since is None else max(since, self.since)
        hi = until if self.until is None else min(until, self.until)
        return Scope(self.schema, self.run_id, lo, hi, self.config_hash)


# The latest final extraction of each (document, config) in scope, and its attempts with the
# outcome of the attempt before each one in the same tier (to tell re-asks from retries).
BASE = """
WITH scope AS (
    SELECT e.* FROM extractions e WHERE e.status IN ('ok', 'failed') AND {where}
),
latest AS (
    SELECT s.* FROM scope s
    WHERE s.id = (SELECT MAX(t.id) FROM scope t
                  WHERE t.document_sha256 = s.document_sha256 AND t.config_hash = s.config_hash)
),
att AS (
    SELECT a.*, LAG(a.outcome) OVER (PARTITION BY a.extraction_id, a.tier ORDER BY a.number) AS prev
    FROM attempts a JOIN latest l ON l.id = a.extraction_id
)
"""


def _rank(q: float) -> str:
    """SQL for the nearest rank of quantile q among ``cnt`` rows (ceil without ceil())."""
    return f"MAX(1, CAST({q} * cnt AS INTEGER) + ({q} * cnt > CAST({q} * cnt AS INTEGER)))"


SQL = {
    "totals": BASE
    + """
SELECT COUNT(*) AS documents, TOTAL(status = 'ok') AS ok, TOTAL(status = 'failed') AS failed,
       TOTAL(cost_usd) AS cost_usd, TOTAL(cost_usd IS NULL) AS unpriced,
       TOTAL(prompt_tokens) AS prompt_tokens, TOTAL(completion_tokens) AS completion_tokens,
       MIN(created_at) AS first_at, MAX(created_at) AS last_at,
       COUNT(DISTINCT config_hash) AS configs, COUNT(DISTINCT schema_hash) AS schemas
FROM latest""",
    "document_latency": BASE
    + f"""
, lat AS (SELECT latency_s, ROW_NUMBER() OVER (ORDER BY latency_s) AS rn, COUNT(*) OVER () AS cnt
          FROM latest WHERE latency_s IS NOT NULL)
SELECT MAX(CASE WHEN rn = {_rank(0.5)} THEN latency_s END) AS p50,
       MAX(CASE WHEN rn = {_rank(0.95)} THEN latency_s END) AS p95
FROM lat""",
    "tiers": BASE
    + f"""
SELECT tier, MIN(id) AS first_attempt,
       COUNT(DISTINCT extraction_id) AS reached,
       COUNT(DISTINCT CASE WHEN outcome = 'ok' THEN extraction_id END) AS resolved,
       COUNT(*) AS attempts,
       TOTAL(prev IN {VALIDATION}) AS reasks,
       TOTAL(prev IN {TRANSIENT}) AS retries,
       TOTAL(prompt_tokens) AS prompt_tokens, TOTAL(completion_tokens) AS completion_tokens,
       TOTAL(cost_usd) AS cost_usd, TOTAL(cost_usd IS NULL) AS unpriced_attempts,
       GROUP_CONCAT(DISTINCT model) AS models
FROM att GROUP BY tier ORDER BY first_attempt""",
    "tier_latency": BASE
    + f"""
, lat AS (SELECT tier, latency_s,
                 ROW_NUMBER() OVER (PARTITION BY tier ORDER BY latency_s) AS rn,
                 COUNT(*) OVER (PARTITION BY tier) AS cnt
          FROM att WHERE latency_s IS NOT NULL)
SELECT tier, MAX(CASE WHEN rn = {_rank(0.5)} THEN latency_s END) AS p50,
             MAX(CASE WHEN rn = {_rank(0.95)} THEN latency_s END) AS p95
FROM lat GROUP BY tier""",
    "failure_outcomes": BASE
    + """
SELECT tier, outcome, COUNT(*) AS n FROM att WHERE outcome != 'ok'
GROUP BY tier, outcome ORDER BY tier, n DESC, outcome""",
    "unresolved": BASE
    + """
SELECT outcome, COUNT(*) AS n FROM latest WHERE status = 'failed' GROUP BY outcome ORDER BY n DESC""",
    "unresolved_examples": BASE
    + """
SELECT path, document_sha256, outcome, error FROM latest WHERE status = 'failed'
ORDER BY id DESC LIMIT 20""",
    "rescue": BASE
    + """
SELECT l.tier, COUNT(DISTINCT l.id) AS rescued,
       TOTAL(CASE WHEN a.tier = l.tier THEN a.cost_usd END) AS own_cost_usd,
       TOTAL(CASE WHEN a.tier != l.tier THEN a.cost_usd END) AS lower_cost_usd,
       TOTAL(a.cost_usd IS NULL) AS unpriced
FROM latest l JOIN attempts a ON a.extraction_id = l.id
WHERE l.status = 'ok' GROUP BY l.tier""",
    "documents_by_config": BASE
    + """
SELECT config_hash, COUNT(*) AS n FROM latest GROUP BY config_hash""",
    "chains": BASE
    + """
SELECT DISTINCT r.config_hash, r.config_json FROM runs r
WHERE r.config_hash IN (SELECT DISTINCT config_hash FROM latest) AND r.config_json IS NOT NULL""",
    "document_errors": """
SELECT e.outcome, COUNT(*) AS n FROM extractions e WHERE e.status = 'error' AND {where}
GROUP BY e.outcome ORDER BY n DESC""",
    "trend": BASE
    + """
SELECT date(created_at, 'unixepoch') AS day, COUNT(*) AS documents, TOTAL(status = 'ok') AS ok,
       TOTAL(cost_usd) AS cost_usd FROM latest GROUP BY day ORDER BY day""",
    "trend_tiers": BASE
    + """
SELECT date(created_at, 'unixepoch') AS day, tier, COUNT(*) AS resolved
FROM latest WHERE status = 'ok' GROUP BY day, tier ORDER BY day""",
    "drift": BASE
    + """
SELECT tier, COUNT(DISTINCT extraction_id) AS reached,
       COUNT(DISTINCT CASE WHEN outcome = 'ok' THEN extraction_id END) AS resolved,
       COUNT(cost_usd) AS priced, TOTAL(cost_usd) AS cost_usd, TOTAL(cost_usd * cost_usd) AS cost_sq
FROM att GROUP BY tier""",
}


class _Runner:
    def __init__(self, ledger: Ledger):
        self.ledger = ledger
        self.queries: list[dict[str, Any]] = []

    def __call__(self, name: str, scope: Scope) -> list[dict[str, Any]]:
        where, params = scope.where()
        sql = SQL[name].format(where=where)
        self.queries.append({"name": name, "sql": sql.strip(), "params": params})
        return [dict(r) for r in self.ledger.query(sql, params)]


def _i(x: Any) -> int:
    return int(x or 0)


def _chains(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    chains = {}
    for r in rows:
        try:
            chains[r["config_hash"]] = json.loads(r["config_json"]).get("tiers", [])
        except (TypeError, ValueError, AttributeError):
            continue
    return chains


def build_report(
    ledger: Ledger,
    scope: Scope | None = None,
    *,
    economics: Economics | None = None,
    as_of: float | None = None,
    recent_days: float = 7,
    baseline_days: float = 28,
) -> dict[str, Any]:
    """Everything ``extractkit report`` shows, as plain data (see the module docstring)."""
    scope = scope or Scope()
    economics = economics or Economics()
    q = _Runner(ledger)
    totals = q("totals", scope)[0]
    documents = _i(totals["documents"])
    valid = _i(totals["ok"])
    chain_cost = None if totals["unpriced"] else totals["cost_usd"]
    lat = q("document_latency", scope)[0]
    chains = _chains(q("chains", scope))
    docs_by_config = {r["config_hash"]: r["n"] for r in q("documents_by_config", scope)}
    kinds = {t["name"]: t.get("kind") for tiers in chains.values() for t in tiers}

    tiers = q("tiers", scope)
    latencies = {r["tier"]: r for r in q("tier_latency", scope)}
    failures: dict[str, dict[str, int]] = {}
    for r in q("failure_outcomes", scope):
        failures.setdefault(r["tier"], {})[r["outcome"]] = r["n"]
    for t in tiers:
        t.pop("first_attempt")
        for k in ("reasks", "retries", "prompt_tokens", "completion_tokens", "unpriced_attempts"):
            t[k] = _i(t[k])
        name = t["tier"]
        t["kind"] = kinds.get(name)
        t["models"] = sorted((t["models"] or "").split(","))
        t["success_rate"] = t["resolved"] / t["reached"] if t["reached"] else None
        lo, hi = wilson(t["resolved"], t["reached"])
        t["success_ci"] = [lo, hi] if t["reached"] else None
        t["share_resolved"] = t["resolved"] / documents if documents else None
        cost = None if t["unpriced_attempts"] else t["cost_usd"]
        t["cost_usd"] = cost
        t["cost_per_attempt_usd"] = cost / t["attempts"] if cost is not None and t["attempts"] else None
        # what the tier spent, failures included, per document it resolved
        t["cost_per_valid_usd"] = cost / t["resolved"] if cost is not None and t["resolved"] else None
        t["latency_p50_s"] = latencies.get(name, {}).get("p50")
        t["latency_p95_s"] = latencies.get(name, {}).get("p95")
        t["failure_outcomes"] = failures.get(name, {})

    order = [t["tier"] for t in tiers]
    rescue_rows = {r["tier"]: r for r in q("rescue", scope)}
    rescue, verdicts = [], []
    for t in tiers[1:] if len(tiers) > 1 else []:
        name = t["tier"]
        configs = [h for h, ts in chains.items() if any(x["name"] == name for x in ts)]
        n = sum(docs_by_config.get(h, 0) for h in configs) if configs else documents
        before = _before(name, chains, order)
        r = rescue_rows.get(name, {"rescued": 0, "own_cost_usd": 0.0, "lower_cost_usd": 0.0, "unpriced": 0})
        rescued = _i(r["rescued"])
        known = not r["unpriced"] and t["cost_usd"] is not None
        rescue_cost = (r["own_cost_usd"] + r["lower_cost_usd"]) if known else None
        v = marginal_verdict(name, before, n=n, rescued=rescued, spend=t["cost_usd"], economics=economics)
        rescue.append(
            {
                "tier": name,
                "kind": t["kind"],
                "after": before,
                "documents": n,
                "rescued": rescued,
                "own_cost_usd": r["own_cost_usd"] if known else None,
                "lower_cost_usd": r["lower_cost_usd"] if known else None,
                "rescue_cost_usd": rescue_cost,
                "cost_per_rescued_usd": rescue_cost / rescued
                if rescue_cost is not None and rescued
                else None,
                "tier_cost_usd": t["cost_usd"],
                "marginal_cost_per_rescue_usd": t["cost_usd"] / rescued
                if t["cost_usd"] is not None and rescued
                else None,
                "failures_avoided_usd": rescued * economics.failure_cost,
                "break_even_documents": v.break_even_documents,
            }
        )
        verdicts.append(v.to_dict())

    where_err, params_err = scope.where()
    errors_sql = SQL["document_errors"].format(where=where_err)
    q.queries.append({"name": "document_errors", "sql": errors_sql.strip(), "params": params_err})
    document_errors = {r["outcome"]: r["n"] for r in ledger.query(errors_sql, params_err)}

    now = time.time() if as_of is None else as_of
    report = {
        "scope": {**scope.__dict__, "as_of": now},
        "economics": economics.__dict__,
        "totals": {
            "documents": documents,
            "ok": valid,
            "failed": _i(totals["failed"]),
            "success_rate": valid / documents if documents else None,
            "prompt_tokens": _i(totals["prompt_tokens"]),
            "completion_tokens": _i(totals["completion_tokens"]),
            "cost_usd": chain_cost,
            "cost_per_valid_usd": chain_cost / valid if chain_cost is not None and valid else None,
            "latency_p50_s": lat["p50"],
            "latency_p95_s": lat["p95"],
            "first_at": totals["first_at"],
            "last_at": totals["last_at"],
            "configs": _i(totals["configs"]),
            "schemas": _i(totals["schemas"]),
        },
        "tiers": tiers,
        "unresolved": {
            "by_outcome": {r["outcome"]: r["n"] for r in q("unresolved", scope)},
            "examples": q("unresolved_examples", scope),
        },
        "document_errors": document_errors,
        "rescue": rescue,
        "verdicts": verdicts,
        "verdict": _headline(verdicts, tiers),
        "drift": drift(q, scope, now, recent_days, baseline_days),
        "trend": trend(q, scope),
    }
    report["notes"] = notes(tiers)
    report["queries"] = q.queries
    return report


def notes(tiers: list[dict[str, Any]]) -> list[str]:
    out = []
    local = [t["tier"] for t in tiers if "local" in t["models"]]
    if local:
        out.append(
            f"{', '.join(local)} ran on the bundled local model (SmolLM2-135M): these numbers prove the "
            "pipeline works end to end; they say nothing about the accuracy of a real model."
        )
    if any(t["unpriced_attempts"] for t in tiers):
        out.append(
            "some attempts have no price (model not in the price table): costs that include them are "
            "shown as unknown; set `price` on the tier."
        )
    return out


def _before(name: str, chains: dict[str, list[dict[str, Any]]], order: list[str]) -> list[str]:
    for ts in chains.values():
        names = [x["name"] for x in ts]
        if name in names:
            return names[: names.index(name)]
    return order[: order.index(name)]


def _headline(verdicts: list[dict[str, Any]], tiers: list[dict[str, Any]]) -> str:
    if not tiers:
        return "No extractions in scope yet: run `extractkit extract` first."
    if not verdicts:
        return (
            f"Only one tier ({tiers[0]['tier']}) ran: there is nothing to compare it with; "
            "add a tier or run `extractkit eval`."
        )
    fine = [v for v in verdicts if "fine" in (v["tier"] or "")] or verdicts[-1:]
    return str(fine[-1]["sentence"])


def drift(q: _Runner, scope: Scope, now: float, recent_days: float, baseline_days: float) -> dict[str, Any]:
    """Per tier, the recent window against the one before it: success rate (two-proportion z)
    and cost per attempt (Welch), flagged at p < 0.01; cost per valid extraction is flagged when
    it moved by 20 % or more and either test is significant."""
    recent = (now - recent_days * DAY, now)
    base = (now - (recent_days + baseline_days) * DAY, now - recent_days * DAY)
    rows_r = {r["tier"]: r for r in q("drift", scope.window(*recent))}
    rows_b = {r["tier"]: r for r in q("drift", scope.window(*base))}
    out = []
    for name in list(dict.fromkeys([*rows_b, *rows_r])):
        r, b = rows_r.get(name), rows_b.get(name)
        item: dict[str, Any] = {"tier": name, "recent": _window(r), "baseline": _window(b), "flags": []}
        if not r or not b or min(r["reached"], b["reached"]) < 20:
            item["note"] = "too few documents in one of the windows to compare (need 20 each)"
            out.append(item)
            continue
        z = two_proportion_z(r["resolved"], r["reached"], b["resolved"], b["reached"])
        item["success_z"] = z
        if z is not None and abs(z) >= Z99:
            item["flags"].append("success_rate")
        cz = _welch_from_sums(r, b)
        item["cost_per_attempt_z"] = cz
        if cz is not None and abs(cz) >= Z99:
            item["flags"].append("cost_per_attempt")
        cr, cb = item["recent"]["cost_per_valid_usd"], item["baseline"]["cost_per_valid_usd"]
        if cr is not None and cb and abs(cr - cb) / cb >= 0.2 and item["flags"]:
            item["flags"].append("cost_per_valid")
        out.append(item)
    return {
        "recent": {"since": recent[0], "until": recent[1], "days": recent_days},
        "baseline": {"since": base[0], "until": base[1], "days": baseline_days},
        "tiers": out,
        "flagged": [f"{i['tier']}: {', '.join(i['flags'])}" for i in out if i["flags"]],
    }


def _window(r: dict[str, Any] | None) -> dict[str, Any]:
    if not r:
        return {"reached": 0, "resolved": 0, "success_rate": None, "cost_per_valid_usd": None}
    priced = r["priced"] > 0
    return {
        "reached": r["reached"],
        "resolved": r["resolved"],
        "success_rate": r["resolved"] / r["reached"] if r["reached"] else None,
        "cost_usd": r["cost_usd"] if priced else None,
        "cost_per_valid_usd": r["cost_usd"] / r["resolved"] if priced and r["resolved"] else None,
    }


def _welch_from_sums(r: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Welch's z for mean cost per attempt, from count, sum and sum of squares."""

    def mv(x: dict[str, Any]) -> tuple[float, float, int]:
        n = x["priced"]
        if n < 2:
            return 0.0, 0.0, n
        mean = x["cost_usd"] / n
        var = (x["cost_sq"] - n * mean * mean) / (n - 1)
        var = 0.0 if var < (mean * 1e-6) ** 2 else var  # rounding residue of a constant
        return mean, var, n

    (mr, vr, nr), (mb, vb, nb) = mv(r), mv(b)
    if nr < 2 or nb < 2:
        return None
    if math.isclose(mr, mb, rel_tol=1e-9, abs_tol=1e-15):
        return 0.0  # sums of floats leave residues; equal means are no change
    se = math.sqrt(vr / nr + vb / nb)
    if se == 0:
        return None if mr == mb else math.copysign(math.inf, mr - mb)
    return (mr - mb) / se


def trend(q: _Runner, scope: Scope) -> list[dict[str, Any]]:
    """Per day: documents, valid, cost per valid extraction, and documents resolved per tier."""
    by_tier: dict[str, dict[str, int]] = {}
    for r in q("trend_tiers", scope):
        by_tier.setdefault(r["day"], {})[r["tier"]] = r["resolved"]
    days = []
    for r in q("trend", scope):
        ok = _i(r["ok"])
        days.append(
            {
                "day": r["day"],
                "documents": r["documents"],
                "ok": ok,
                "cost_usd": r["cost_usd"],
                "cost_per_valid_usd": r["cost_usd"] / ok if ok else None,
                "resolved_by_tier": by_tier.get(r["day"], {}),
            }
        )
    return days
