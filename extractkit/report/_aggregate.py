"""The report's numbers: SQL over the ledger's plain tables, then a little arithmetic, in steps that
each return typed values (``_model``): ``read_rows`` (every query of the scope), ``totals_of`` and
``unresolved_of``, ``tier_sums`` then ``tier_stats``, ``rescue_and_verdicts``, ``drift``,
``field_failures``, ``versions_of`` and ``checklist_of`` (``_checklist``), ``notes``; ``read_report``
puts them together. Nothing here formats for display
beyond the sentences the report carries.

Unit of account: a *document* is the latest final (ok or failed) extraction of one document text
by one chain config, within the scope. Extractions where one tier was forced (eval) are left out:
they say nothing about how the chain escalates. Every query run is kept in ``queries`` (SQL and
parameters) so each number can be reproduced with any SQLite client.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from .._errors import ConfigError
from .._redact import redact
from .._results import FIELD_ERROR_OUTCOMES, Outcome
from ..ledger import (
    DOCUMENT_ERRORS,
    PAIRS_CUT,
    SERVED_REFRESH_S,
    TIERS_IN,
    VERSION_PAIRS,
    VERSION_STATS,
    VERSION_STATS_CURRENT,
    Ledger,
    ensure_rollups,
    field_failures_sql,
    new_id,
    rollup_field_errors,
    rollup_json_value,
)
from ..ledger import rollup_queries as rq
from ..local import accuracy_note, ran_locally
from ._checklist import MIN_VERSION_DOCUMENTS, check_options, checklist_of, tiers_with_several, versions_of
from ._format import first_line, money
from ._model import (
    Chunked,
    Drift,
    DriftTier,
    FieldCount,
    FieldFailure,
    FieldFailures,
    ModelChange,
    Query,
    Report,
    ReportScope,
    Rescue,
    Sampled,
    ServedModel,
    Span,
    TierStats,
    Totals,
    TrendDay,
    Unresolved,
    UnresolvedExample,
    ValueCount,
    Way,
    Window,
)
from ._rollup import EXAMPLES, percentile_of, read_parts, scope_member
from ._sources import sources_of
from ._stats import Z99, percentile, two_proportion_z, wilson
from ._verdict import FINE_TUNED, Economics, Verdict, headline_sentence, marginal_verdict

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

DAY = 86_400.0


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

    def run_only(self, alias: str = "e") -> tuple[str, dict[str, Any]] | None:
        """A run filter alone, with a named parameter, on extractions (``e``) or on attempts
        (``a``: an attempt's run is its extraction's); None for any other scope."""
        if not self.run_id or Scope(run_id=self.run_id) != self:
            return None
        return f"{alias}.run_id = :scope_run", {"scope_run": self.run_id}



SAMPLE = 20_000  # latency percentiles read at most about this many values (every k-th row)
DRIVEN_MIN = 50_000  # from this many documents (and a fifth of the ledger), scan attempts by index

# The latest final extraction of each (document, config) in scope, materialised once per report.
LATEST = [
    """
CREATE TEMP TABLE {latest} (
    id TEXT PRIMARY KEY, document_sha256 TEXT, config_hash TEXT, schema_hash TEXT, path TEXT, status TEXT,
    tier TEXT, outcome TEXT, error TEXT, cost_usd REAL, latency_s REAL, created_at REAL,
    prompt_tokens INTEGER, completion_tokens INTEGER)""",
    """
INSERT INTO {latest}
SELECT e.id, e.document_sha256, e.config_hash, e.schema_hash, e.path, e.status, e.tier, e.outcome, e.error,
       e.cost_usd, e.latency_s, e.created_at, e.prompt_tokens, e.completion_tokens
FROM extractions e JOIN (
    SELECT MAX(e.id) AS id FROM extractions e
    WHERE e.status IN ('ok', 'failed') AND {where}
    GROUP BY e.document_sha256, e.config_hash
) m ON m.id = e.id""",
]

# Without filters the scope is every chain's current extractions, kept flagged by the ledger's writes
# (extractions.superseded_by, attempts.current): read in place, nothing materialised.
CURRENT = """(
SELECT e.rowid AS rowid, e.id, e.document_sha256, e.config_hash, e.schema_hash, e.path, e.status, e.tier,
       e.outcome, e.error, e.cost_usd, e.latency_s, e.created_at, e.prompt_tokens, e.completion_tokens
FROM extractions e
WHERE e.status IN ('ok', 'failed') AND e.superseded_by IS NULL AND e.forced_tier IS NULL)"""
USE_CURRENT = True  # tests switch it off to check both ways agree

# A run filter over most of a big ledger: when none of the run's final extractions has been
# superseded, its latest extractions are exactly its current ones, so the flags are read in place
# as above, with the run filter on extractions and on attempts (an attempt's run is its extraction's).
SCOPE_CHECK = """
SELECT COUNT(*) AS n, TOTAL(e.superseded_by IS NOT NULL) AS superseded FROM extractions e
WHERE e.status IN ('ok', 'failed') AND e.forced_tier IS NULL AND {where}"""
CURRENT_IN_SCOPE = CURRENT[:-1] + " AND {where})"

SQL = {
    # one pass over the documents for the totals, winners, unresolved, configs and the daily trend
    "documents": """
SELECT CAST(created_at / 86400 AS INTEGER) AS day, config_hash, schema_hash, tier, status, outcome,
       COUNT(*) AS n, TOTAL(cost_usd) AS cost_usd, TOTAL(cost_usd IS NULL) AS unpriced,
       TOTAL(prompt_tokens) AS prompt_tokens, TOTAL(completion_tokens) AS completion_tokens,
       MIN(created_at) AS first_at, MAX(created_at) AS last_at
FROM {latest} GROUP BY 1, 2, 3, 4, 5, 6""",
    "ledger_extractions": """
SELECT COUNT(*) AS n FROM extractions""",
    # per way (live | batch | mixed): the rollups' rule (``ledger._rollups.Sums.extraction``)
    "ways": """
SELECT w.via, COUNT(*) AS n, TOTAL(w.status = 'ok') AS ok, TOTAL(w.cost_usd) AS cost,
       TOTAL(w.cost_usd IS NULL) AS unpriced, TOTAL(w.live) AS live_cost,
       TOTAL(w.live IS NULL) AS live_unpriced
FROM (SELECT COALESCE(e.via, 'live') AS via, l.status, l.cost_usd,
             CASE WHEN COALESCE(e.via, 'live') = 'live' THEN l.cost_usd ELSE e.live_cost_usd END AS live
      FROM {latest} l JOIN extractions e ON e.id = l.id) w
GROUP BY w.via ORDER BY w.via""",
    "served_models": """
SELECT tier, model, served_model, fingerprint, first_seen, last_seen FROM served_models
ORDER BY tier, first_seen""",
    "document_latency": """
SELECT latency_s FROM {latest} WHERE latency_s IS NOT NULL AND rowid % :k = 0""",
    "attempt_latency": """
SELECT a.tier, a.latency_s FROM {latest} l CROSS JOIN attempts a ON a.extraction_id = l.id
WHERE a.latency_s IS NOT NULL AND a.rowid % :k = 0""",
    # the same, for a scope covering most of a big ledger: filter the attempts first
    "attempt_latency_driven": """
SELECT a.tier, a.latency_s FROM attempts a CROSS JOIN {latest} l ON l.id = a.extraction_id
WHERE a.latency_s IS NOT NULL AND a.rowid % :k = 0""",
    # every k-th row by rowid, visited directly rather than by scanning the table
    "attempt_latency_current": """
WITH RECURSIVE r(x) AS (
    SELECT :k UNION ALL SELECT x + :k FROM r WHERE x + :k <= (SELECT MAX(rowid) FROM attempts))
SELECT a.tier, a.latency_s FROM r CROSS JOIN attempts a ON a.rowid = r.x
WHERE a.current = 1 AND a.latency_s IS NOT NULL{attempts_where}""",
    "unresolved_examples": """
SELECT path, document_sha256, outcome, error FROM {latest} WHERE status = 'failed'
ORDER BY id DESC LIMIT 20""",
    "chains": """
SELECT DISTINCT r.config_hash, r.config_json FROM runs r
WHERE r.config_hash IN (SELECT DISTINCT config_hash FROM {latest}) AND r.config_json IS NOT NULL""",
}

# drift windows are read by the time of the attempt
_RECENT = "a.started_at >= :recent_since AND a.started_at < :recent_until"
_BASELINE = "a.started_at >= :baseline_since AND a.started_at < :baseline_until"


def attempts_sql(latest: str, attempts_driven: bool, attempts_where: str = "") -> str:
    """Every attempt of the latest extractions, grouped by tier and outcome, with the other
    distinctions as conditional sums (no sort: over a whole ledger the scan follows the
    (tier, outcome) index)."""
    cols = [
        "a.tier", "a.outcome", "COUNT(*) AS n", "TOTAL(a.number = 1) AS first",
        "TOTAL(a.follows = 'reask') AS reasks", "TOTAL(a.follows = 'retry') AS retries",
        "TOTAL(a.cost_usd) AS cost", "COUNT(a.cost_usd) AS priced", "TOTAL(a.prompt_tokens) AS prompt_tokens",
        "TOTAL(a.completion_tokens) AS completion_tokens", "GROUP_CONCAT(DISTINCT a.model) AS models",
        "TOTAL(CASE WHEN a.won = 1 THEN a.cost_usd END) AS own",
        "MIN(a.started_at) AS first_started", "MAX(a.started_at) AS last_started",
    ]  # fmt: skip
    for w, cond in (("r", _RECENT), ("b", _BASELINE)):
        cols += [
            f"TOTAL(a.number = 1 AND {cond}) AS {w}_reached", f"COUNT(CASE WHEN {cond} THEN 1 END) AS {w}_n",
            f"COUNT(CASE WHEN {cond} THEN a.cost_usd END) AS {w}_priced",
            f"TOTAL(CASE WHEN {cond} THEN a.cost_usd END) AS {w}_cost",
            f"TOTAL(CASE WHEN {cond} THEN a.cost_usd * a.cost_usd END) AS {w}_cost_sq",
        ]  # fmt: skip
    if latest == CURRENT or attempts_where:  # the flags written with every extraction: no join at all
        source = f"attempts a INDEXED BY attempts_tier WHERE a.current = 1{attempts_where}"
    elif attempts_driven:
        source = f"attempts a INDEXED BY attempts_tier CROSS JOIN {latest} l ON l.id = a.extraction_id"
    else:
        source = f"{latest} l CROSS JOIN attempts a ON a.extraction_id = l.id"
    return f"SELECT {', '.join(cols)}\nFROM {source}\nGROUP BY a.tier, a.outcome"


UNGROUNDED_SAMPLE = 5_000  # the most recent ungrounded attempts per tier whose rejected fields are counted


def ungrounded_sql(latest: str, attempts_driven: bool, attempts_where: str = "") -> str:
    """The fields one tier's answers most often put values in that the document does not hold:
    each ungrounded error (its ``loc``) of the tier's most recent UNGROUNDED_SAMPLE ungrounded
    attempts in scope, counted. Over a big scope the (tier, outcome) index bounds the read."""
    where = "a.tier = :tier AND a.outcome = 'ungrounded'"
    by_index = "SELECT a.errors_json FROM attempts a INDEXED BY attempts_tier WHERE " + where
    recent = "ORDER BY a.rowid DESC LIMIT :limit"
    if latest == CURRENT or attempts_where:
        source = f"{by_index} AND a.current = 1{attempts_where} {recent}"
    elif attempts_driven:
        source = f"{by_index} AND a.extraction_id IN (SELECT id FROM {latest}) {recent}"
    else:
        source = (f"SELECT a.errors_json FROM {latest} l CROSS JOIN attempts a ON a.extraction_id = l.id "
                  f"WHERE {where} LIMIT :limit")  # fmt: skip
    return f"""
SELECT json_extract(j.value, '$.loc') AS loc, COUNT(*) AS n
FROM ({source}) s, json_each(CASE WHEN json_valid(s.errors_json) THEN s.errors_json ELSE '[]' END) j
WHERE json_extract(j.value, '$.type') = 'ungrounded'
GROUP BY 1 ORDER BY n DESC, loc LIMIT 5"""


def _field(loc: Any) -> str:
    try:
        parts = json.loads(loc)
    except (TypeError, ValueError):
        return str(loc)
    return ".".join(str(p) for p in parts) if isinstance(parts, list) else str(parts)


FIELD_SAMPLE = 5_000  # attempts per tier and outcome whose rejected fields are counted (the most recent
# ones when the report reads the whole ledger or most of it; in a smaller scope, any of its attempts)
# the outcomes whose errors name fields, in a fixed order (the SQL lists them)
FIELD_OUTCOMES = tuple(sorted(o.value for o in FIELD_ERROR_OUTCOMES))
FIELD_VALUES = 3  # the most frequent rejected values shown per field
FIELD_VALUE_CHARS = 80
VALUES_OFF = "the ledger keeps no document text (store_text = false): counts only, no rejected values"
VALUES_SOME_OFF = ("rejected values of documents recorded with store_text = false are left out "
                   "(counted, not shown)")  # fmt: skip


def field_source(latest: str, attempts_driven: bool, attempts_where: str = "") -> str:
    """How the field-failure query reaches the attempts in scope (see ``ungrounded_sql``)."""
    if latest == CURRENT or attempts_where:
        return f"FROM attempts a INDEXED BY attempts_tier WHERE a.current = 1{attempts_where}"
    if attempts_driven:
        return f"FROM attempts a INDEXED BY attempts_tier WHERE a.extraction_id IN (SELECT id FROM {latest})"
    return f"FROM {latest} l CROSS JOIN attempts a ON a.extraction_id = l.id WHERE 1"


def field_path(loc: Any) -> str:
    """A Pydantic ``loc`` as a field path, list items as ``[]`` (``lines[].total``), the whole
    answer as ``(root)``."""
    try:
        parts = json.loads(loc)
    except (TypeError, ValueError):
        return str(loc)
    if not isinstance(parts, list):
        return str(parts)
    out = ""
    for p in parts:
        p = str(p)
        out += "[]" if p.isdigit() else ("." if out else "") + p
    return out or "(root)"


def field_failures(rows_by_tier: dict[str, list[dict[str, Any]]], order: list[str], values_allowed: bool,
                   values_by_tier: dict[str, list[dict[str, Any]]] | None = None,
                   ) -> FieldFailures:  # fmt: skip
    """Step 5, the per-field failure table: per tier (chain order) and field, most failures first, how
    many times its value failed validation and how many times it was ungrounded, and the values
    rejected most often (each passed through ``redact``; None when values are not shown).
    ``values_by_tier``: the rejected values apart from the counts (``rows_by_tier`` then counts only)."""
    fields: dict[tuple[str, str], dict[str, Any]] = {}
    withheld = False

    def value(f: dict[str, Any], r: dict[str, Any], n: int) -> bool:
        if r["shown"] and r["value"] is not None:
            v = redact(first_line(str(r["value"]), FIELD_VALUE_CHARS))
            f["values"][v] = f["values"].get(v, 0) + n
        elif not r["shown"]:
            f["withheld"] = True
            return True
        return False

    for tier, rows in rows_by_tier.items():
        for r in rows:
            key = (tier, field_path(r["loc"]))
            f = fields.setdefault(key, {"tier": tier, "field": key[1], "validation": 0, "ungrounded": 0,
                                        "values": {}, "withheld": False})  # fmt: skip
            f["ungrounded" if r["ungrounded"] else "validation"] += r["n"]
            if values_by_tier is None:
                withheld = value(f, r, r["n"]) or withheld
    for tier, rows in (values_by_tier or {}).items():
        for r in rows:
            found = fields.get((tier, field_path(r["loc"])))
            if found is not None:
                withheld = value(found, r, r["n"]) or withheld
    rank = {t: i for i, t in enumerate(order)}
    out = []
    for f in fields.values():
        top = sorted(f["values"].items(), key=lambda kv: (-kv[1], kv[0]))[:FIELD_VALUES]
        shown = values_allowed and (bool(top) or not f["withheld"])  # None: every value withheld
        out.append(FieldFailure(
            tier=f["tier"], field=f["field"], validation=f["validation"], ungrounded=f["ungrounded"],
            values=tuple(ValueCount(value=v, n=n) for v, n in top) if shown else None,
            failures=f["validation"] + f["ungrounded"],
        ))  # fmt: skip
    out.sort(key=lambda f: (rank.get(f.tier, len(rank)), -f.failures, f.field))
    hidden = VALUES_OFF if not values_allowed else VALUES_SOME_OFF if withheld else None
    return FieldFailures(rows=tuple(out), values_hidden=hidden, sample_per_tier_and_outcome=FIELD_SAMPLE,
                         outcomes=FIELD_OUTCOMES)  # fmt: skip


class _Runner:
    """Runs the report's queries against one materialised ``latest`` table, keeping each query."""

    def __init__(self, ledger: Ledger, scope: Scope):
        self.ledger = ledger
        self.queries: list[dict[str, Any]] = []
        self.scope_params: dict[str, Any] = {}
        self.attempts_where = ""  # the scope's filter on attempts, when the flags are read in place
        self.current = USE_CURRENT and scope == Scope()
        if self.current:
            self.latest = CURRENT
            return
        run_scope = scope.run_only() if USE_CURRENT else None
        if run_scope is not None:
            where, params = run_scope
            [check] = self.run("scope_check", SCOPE_CHECK.format(where=where), params)
            total = self.run("ledger_extractions", SQL["ledger_extractions"], ())[0]["n"]
            if not check["superseded"] and check["n"] >= DRIVEN_MIN and check["n"] > 0.2 * total:
                self.current, self.scope_params = True, params
                self.latest = CURRENT_IN_SCOPE.format(where=where)
                self.attempts_where = " AND " + scope.run_only("a")[0]  # type: ignore[index]
                return
        self.latest = f"temp.report_latest_{new_id()}"
        where, params_ = scope.where()
        self.run("latest_table", LATEST[0].format(latest=self.latest), ())
        self.run("latest", LATEST[1].format(latest=self.latest, where=where), params_)

    def run(self, name: str, sql: str, params: Any) -> list[dict[str, Any]]:
        if self.scope_params:  # the scope's filter is inside the query: its parameters go along
            params = {**self.scope_params, **(params or {})}
        self.queries.append({"name": name, "sql": sql.strip(), "params": params})
        return [dict(r) for r in self.ledger.query(sql, params)]

    def __call__(self, name: str, params: Any = ()) -> list[dict[str, Any]]:
        sql = SQL[name].format(latest=self.latest, attempts_where=self.attempts_where)
        return self.run(name, sql, params)

    def close(self) -> None:
        if self.latest.startswith("temp."):
            self.ledger.query(f"DROP TABLE IF EXISTS {self.latest}")


def _i(x: Any) -> int:
    return int(x or 0)


def _chains(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each chain config's tiers, by config hash in hash order (the query's rows come in whatever
    order the engine's DISTINCT leaves them: PostgreSQL's is not SQLite's)."""
    chains = {}
    for r in sorted(rows, key=lambda r: (str(r["config_hash"]), str(r["config_json"]))):
        try:
            chains[r["config_hash"]] = json.loads(r["config_json"]).get("tiers", [])
        except (TypeError, ValueError, AttributeError):
            continue
    return chains


def check_scope_exists(ledger: Ledger, scope: Scope) -> None:
    """ConfigError when ``scope`` names a run or schema the ledger has never seen: for the CLI, where
    `--run` / `--schema` naming nothing is a typo, not an empty report (``build_report`` itself returns
    an empty report for such a scope)."""
    if scope.run_id:
        found = ledger.query("SELECT kind FROM runs WHERE id = ? LIMIT 1", [scope.run_id])
        if not found:
            raise ConfigError(f"no such run in {ledger.target}: {scope.run_id}")
        if found[0]["kind"] == "eval":
            raise ConfigError(f"run {scope.run_id} is an eval run (each tier forced alone, not the chain): "
                              f"show it with `extractkit eval --run {scope.run_id}`")  # fmt: skip
    if scope.config_hash and not ledger.query(
        "SELECT 1 FROM extractions WHERE config_hash LIKE ? LIMIT 1", [scope.config_hash + "%"]
    ):
        raise ConfigError(f"no such chain config in {ledger.target}: {scope.config_hash} (no config hash "
                          "or prefix of one)")  # fmt: skip
    if scope.schema and not ledger.query(
        "SELECT 1 FROM schemas WHERE name = ? OR hash LIKE ? LIMIT 1", [scope.schema, scope.schema + "%"]
    ):
        raise ConfigError(f"no such schema in {ledger.target}: {scope.schema} (no schema name or hash "
                          "prefix)")  # fmt: skip


@dataclass
class _Rows:
    """What the queries returned for one scope: step 1 of the report, nothing computed yet."""

    docs: list[dict[str, Any]]
    chains: dict[str, list[dict[str, Any]]]
    groups: list[dict[str, Any]]
    attempt_latency: list[dict[str, Any]]
    doc_latency: list[float]
    served: list[dict[str, Any]]
    ungrounded_fields: dict[str, list[FieldCount]]
    field_rows: dict[str, list[dict[str, Any]]]
    examples: list[dict[str, Any]]
    document_errors: dict[str, int]
    sampled: Sampled
    store_text: bool
    queries: list[dict[str, Any]]
    version_stats: list[dict[str, Any]] = field(default_factory=list)  # per (config, tier, outcome)
    version_pairs: list[dict[str, Any]] = field(default_factory=list)  # documents two configs shared
    values: dict[str, list[dict[str, Any]]] | None = None  # rejected values apart from the counts (rollups)
    latency: dict[str, dict[int, list[float]]] | None = None  # rollups: buckets per tier ('' documents)
    ways: list[dict[str, Any]] = field(default_factory=list)  # per way: n, ok, cost, unpriced, live_cost, ...


def read_rows(ledger: Ledger, scope: Scope, windows: dict[str, float]) -> _Rows:
    """Step 1, the scope: every query the report needs, run once, kept with its SQL. From the
    rollups (``read_rows_rollup``) unless USE_ROLLUPS is off (then ``read_rows_full``)."""
    if USE_ROLLUPS:
        return read_rows_rollup(ledger, scope, windows)
    return read_rows_full(ledger, scope, windows)


USE_ROLLUPS = True  # False: the full scan of the scope's attempts (SQLite only), the rollups' reference
DRIVEN_VALUES_MIN = 50_000  # below this many documents in scope, rejected values come from its extractions


def read_rows_rollup(ledger: Ledger, scope: Scope, windows: dict[str, float]) -> _Rows:
    """Step 1 from the rollups: the scope's sums (``_rollup.read_parts``: whole hours from the rollup
    tables, the hours at the edges from the plain tables), then the few bounded reads of the plain
    tables the sums cannot answer: chain configs, served models, the most recent unresolved
    documents, rejected values (a sample, as before), unreadable documents, paired comparisons."""
    ensure_rollups(ledger)  # once, on a ledger written before the rollups
    queries: list[dict[str, Any]] = []

    def run(name: str, sql: str, params: Sequence[Any]) -> list[Any]:
        queries.append({"name": name, "sql": sql.strip(), "params": list(params)})
        return ledger.query(sql, list(params))

    parts = read_parts(ledger, scope, windows, run)
    docs, groups = parts.docs, parts.groups
    documents = sum(r["n"] for r in docs)
    configs = sorted({r["config_hash"] for r in docs})
    chains = _chains(run("chains", rq.CHAINS.format(marks=rq.marks(configs)), configs)) if configs else {}
    # in code points (ORDER BY tier follows the database's collation: PostgreSQL's may put "backup" first)
    served = sorted((dict(r) for r in run("served_models", SQL["served_models"], ())),
                    key=lambda r: (r["tier"], r["first_seen"]))  # fmt: skip
    ungrounded: dict[str, dict[Any, int]] = {}
    counts: dict[str, dict[tuple[Any, int], int]] = {}
    for (tier, outcome, loc, grounded), n in parts.fields.items():
        c = counts.setdefault(tier, {})
        c[(loc, grounded)] = c.get((loc, grounded), 0) + n
        if outcome == "ungrounded" and grounded:
            ungrounded.setdefault(tier, {})[loc] = ungrounded.get(tier, {}).get(loc, 0) + n
    ungrounded_fields = {
        tier: [FieldCount(field=_field(loc), n=n)
               for loc, n in sorted(locs.items(), key=lambda kv: (-kv[1], str(kv[0])))[:5]]
        for tier, locs in sorted(ungrounded.items())
    }  # fmt: skip
    field_rows = {tier: [{"loc": loc, "ungrounded": u, "n": n} for (loc, u), n in c.items()]
                  for tier, c in counts.items()}  # fmt: skip
    member, member_params = scope_member(scope, parts.run_current)
    values = field_values(ledger, scope, run, groups, documents, member, member_params, parts.run_current)
    bounded = parts.examples_from is not None
    sql = rq.UNRESOLVED_EXAMPLES.format(member=member, since=" AND e.created_at >= ?" if bounded else "")
    params = [*([parts.examples_from] if bounded else []), *member_params, EXAMPLES]
    examples = [dict(r) for r in run("unresolved_examples", sql, params)]
    version_stats, version_pairs = versions_rows_rollup(run, docs, chains, groups, parts.by_config, member,
                                                        member_params)  # fmt: skip
    where, params = scope.where()
    errors = run("document_errors", rq.DOCUMENT_ERRORS_BOUNDED.format(where=where), params)
    document_errors = {r["outcome"]: r["n"] for r in errors}
    return _Rows(
        docs=docs, chains=chains, groups=groups, attempt_latency=[], doc_latency=[], served=served,
        ungrounded_fields=ungrounded_fields, field_rows=field_rows, examples=examples,
        document_errors=document_errors, store_text=ledger.store_text, queries=queries,
        sampled=Sampled(attempt_latency_every=1, document_latency_every=1),
        version_stats=version_stats, version_pairs=version_pairs, latency=parts.latency, values=values,
        ways=parts.ways,
    )  # fmt: skip


def field_values(ledger: Ledger, scope: Scope, run: Any, groups: Rows, documents: int, member: str,
                 member_params: list[Any], run_current: bool = False,
                 ) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """The rejected values of the field table: per tier and outcome whose errors name fields, its
    most recent FIELD_SAMPLE attempts in scope (by the (tier, outcome) index); in a small scope that
    an index reaches (a run, a time window), any of its attempts, read from its extractions."""
    failing = sorted({(g["tier"], g["outcome"]) for g in groups if g["outcome"] in FIELD_OUTCOMES})
    if not failing:
        return {}
    show = bool(ledger.store_text)
    rows: list[dict[str, Any]] = []
    if documents < DRIVEN_VALUES_MIN and (scope.run_id or scope.since is not None or scope.until is not None):
        sql = rq.field_values_driven_sql(member, show)
        rows = run("field_values", sql, [*member_params, FIELD_SAMPLE * len(failing)])
    else:
        by_run = run_current and scope == Scope(run_id=scope.run_id)  # a run all current: by the flags
        current = scope == Scope() or by_run
        recent = "a.rowid" if getattr(ledger, "engine", "sqlite") == "sqlite" else "a.id"
        sql = rq.field_values_sql(current=current, member=member, recent=recent, show=show, run=by_run)
        for tier, outcome in failing:
            own = [scope.run_id] if by_run else [] if current else member_params
            params = [tier, outcome, *own, FIELD_SAMPLE]
            rows += run("field_values", sql, params)
    counts: dict[tuple[str, str, Any], int] = {}  # (tier, errors_json, shown) -> attempts
    for r in rows:
        key = (r["tier"], r["errors_json"], r["shown"])
        counts[key] = counts.get(key, 0) + 1
    out: dict[str, list[dict[str, Any]]] = {}
    for (tier, errors_json, shown), n in counts.items():  # each distinct error list parsed once
        for err in rollup_field_errors(errors_json):
            out.setdefault(tier, []).append({
                "loc": rollup_json_value(err.get("loc")), "shown": shown, "n": n,
                "value": rollup_json_value(err.get("input")) if shown else None,
            })  # fmt: skip
    return out


def versions_rows_rollup(run: Any, docs: Rows, chains: dict[str, Rows], groups: Rows, by_config: Rows,
                         member: str, member_params: list[Any]) -> tuple[Rows, Rows]:  # fmt: skip
    """``versions_rows`` from the rollups: the per-config sums are already read (``by_config``)."""
    configs = {r["config_hash"] for r in docs}
    in_scope = {h: ts for h, ts in chains.items() if h in configs}
    several = tiers_with_several(in_scope)
    recorded = configs <= set(in_scope)
    holder = {t["name"]: h for h, ts in sorted(in_scope.items(), reverse=True) for t in ts}
    if len(configs) <= 1 or (recorded and not several):
        one = next(iter(configs), "")
        return [{**g, "config_hash": holder.get(g["tier"], one)} for g in groups], []
    if recorded:
        stats = [r for r in by_config if r["tier"] in several]
        stats += [{**g, "config_hash": holder[g["tier"]]} for g in groups if g["tier"] not in several]
    else:
        stats = list(by_config)
    if not several:
        return stats, []
    sample, params = "", list(member_params)
    if sum(r["n"] for r in docs) > PAIR_SAMPLE:
        cut = run("pairs_cut", rq.PAIRS_CUT_ANY, [PAIR_SAMPLE])
        if cut:
            sample = " AND l.document_sha256 <= ?"
            params.append(cut[0]["cut"])
    sql = rq.PAIRS.format(latest=rq.scope_latest(member), sample=sample, marks=rq.marks(several))
    return stats, [dict(r) for r in run("version_pairs", sql, [*params, *several])]


def read_rows_full(ledger: Ledger, scope: Scope, windows: dict[str, float]) -> _Rows:
    """Step 1 by a scan of the scope's extractions and attempts (SQLite), as before the rollups: the
    reference the rollups are tested against, and the benchmark's baseline."""
    q = _Runner(ledger, scope)
    try:
        docs = q("documents")
        documents = sum(r["n"] for r in docs)
        chains = _chains(q("chains"))
        # over most of a big ledger, follow the attempts' (tier, outcome) index; for a small scope,
        # start from its few extractions
        driven = (not q.current and documents >= DRIVEN_MIN
                  and documents > 0.2 * q("ledger_extractions")[0]["n"])  # fmt: skip
        groups = q.run("attempts", attempts_sql(q.latest, driven, q.attempts_where), windows)
        n_attempts = sum(g["n"] for g in groups)
        k_att, k_doc = max(1, n_attempts // SAMPLE), max(1, documents // SAMPLE)
        latency_query = "attempt_latency_current" if q.current else (
            "attempt_latency_driven" if driven else "attempt_latency")
        attempt_latency = q(latency_query, {"k": k_att})
        doc_latency = [r["latency_s"] for r in q("document_latency", {"k": k_doc})]
        served = q("served_models")
        ungrounded_fields: dict[str, list[FieldCount]] = {}
        for name in sorted({g["tier"] for g in groups if g["outcome"] == "ungrounded"}):
            sql = ungrounded_sql(q.latest, driven, q.attempts_where)
            rows = q.run("ungrounded_fields", sql, {"tier": name, "limit": UNGROUNDED_SAMPLE})
            ungrounded_fields[name] = [FieldCount(field=_field(r["loc"]), n=r["n"]) for r in rows]
        field_rows: dict[str, list[dict[str, Any]]] = {}
        # over the whole ledger or most of it, the most recent attempts per tier and outcome by the
        # index; over a scope of a few documents joined to their attempts, one pass
        per_tier = q.current or driven
        field_sql = field_failures_sql(field_source(q.latest, driven, q.attempts_where), per_tier=per_tier)
        failing = sorted({(g["tier"], g["outcome"]) for g in groups if g["outcome"] in FIELD_OUTCOMES})
        with_values = int(ledger.store_text)
        passes = [{"tier": t, "outcome": o} for t, o in failing] if per_tier else [{}] if failing else []
        for p in passes:
            limit = FIELD_SAMPLE if per_tier else FIELD_SAMPLE * max(1, len(failing))
            for r in q.run("field_failures", field_sql, {**p, "limit": limit, "with_values": with_values}):
                field_rows.setdefault(r["tier"], []).append(r)
        examples = q("unresolved_examples")
        ways = q("ways")
        version_stats, version_pairs = versions_rows(q, docs, chains, groups)
    finally:
        q.close()
    where, params = scope.where()
    errors_sql = DOCUMENT_ERRORS.format(where=where)
    q.queries.append({"name": "document_errors", "sql": errors_sql.strip(), "params": params})
    document_errors = {r["outcome"]: r["n"] for r in ledger.query(errors_sql, params)}
    return _Rows(
        docs=docs, chains=chains, groups=groups, attempt_latency=attempt_latency, doc_latency=doc_latency,
        served=served, ungrounded_fields=ungrounded_fields, field_rows=field_rows, examples=examples,
        document_errors=document_errors, store_text=ledger.store_text, queries=q.queries,
        sampled=Sampled(attempt_latency_every=k_att, document_latency_every=k_doc),
        version_stats=version_stats, version_pairs=version_pairs, ways=ways,
    )  # fmt: skip


Rows = list[dict[str, Any]]


PAIR_SAMPLE = 50_000  # extractions (in document-hash order: a uniform sample) read for paired comparisons


def versions_rows(q: _Runner, docs: Rows, chains: dict[str, Rows], groups: Rows) -> tuple[Rows, Rows]:
    """The rows the prompt versions are compared from, per (config, tier, outcome). A tier with one
    version of everything in scope (every config with one recorded chain) has the per-tier sums
    already read (``groups``) as its numbers: no query. For the others, the attempts summed per config
    (``ledger.VERSION_STATS``; over the current extractions by the attempts' flags,
    ``VERSION_STATS_CURRENT``), and the documents two configs shared (``ledger.VERSION_PAIRS``): over
    more than PAIR_SAMPLE documents, those of a uniform sample by content hash (``PAIRS_CUT``)."""
    configs = {r["config_hash"] for r in docs}
    in_scope = {h: ts for h, ts in chains.items() if h in configs}
    several = tiers_with_several(in_scope)
    recorded = configs <= set(in_scope)  # else the configs without a chain are told apart too
    holder = {t["name"]: h for h, ts in sorted(in_scope.items(), reverse=True) for t in ts}
    if len(configs) <= 1 or (recorded and not several):
        one = next(iter(configs), "")
        return [{**g, "config_hash": holder.get(g["tier"], one)} for g in groups], []
    tiers = TIERS_IN if recorded else ""
    params: dict[str, Any] = {"tiers": json.dumps(several)} if recorded else {}
    if q.current:
        sql = VERSION_STATS_CURRENT.format(attempts_where=q.attempts_where, tiers=tiers)
    else:
        sql = VERSION_STATS.format(latest=q.latest, tiers=tiers)
    stats = q.run("version_stats", sql, params)
    if recorded:  # the tiers with one version: their per-tier sums
        stats += [{**g, "config_hash": holder[g["tier"]]} for g in groups if g["tier"] not in several]
    if not several:
        return stats, []
    params = {"tiers": json.dumps(several)}
    sample = ""
    if sum(r["n"] for r in docs) > PAIR_SAMPLE:
        cut = q.run("pairs_cut", PAIRS_CUT, {"n": PAIR_SAMPLE})
        if cut:
            sample, params["cut"] = " AND l.document_sha256 <= :cut", cut[0]["cut"]
    pairs_sql = VERSION_PAIRS.format(latest=q.latest, sample=sample)
    return stats, q.run("version_pairs", pairs_sql, params)


def totals_of(rows: _Rows) -> Totals:
    """The chain over the documents in scope."""
    t = _document_totals(rows.docs)
    documents, valid = t["documents"], _i(t["ok"])
    chain_cost = None if t["unpriced"] else t["cost_usd"]
    return Totals(
        documents=documents, ok=valid, failed=_i(t["failed"]),
        success_rate=valid / documents if documents else None,
        prompt_tokens=_i(t["prompt_tokens"]), completion_tokens=_i(t["completion_tokens"]),
        cost_usd=chain_cost,
        cost_per_valid_usd=chain_cost / valid if chain_cost is not None and valid else None,
        latency_p50_s=_percentile(rows, "", 0.5),
        latency_p95_s=_percentile(rows, "", 0.95),
        first_at=t["first_at"], last_at=t["last_at"], configs=_i(t["configs"]), schemas=_i(t["schemas"]),
    )  # fmt: skip


def _percentile(
    rows: _Rows, tier: str, p: float, latencies: dict[str, list[float]] | None = None
) -> float | None:
    """A latency percentile of one tier ('' for documents): from the rollups' buckets, else of the
    values read (a sample beyond SAMPLE)."""
    if rows.latency is not None:
        return percentile_of(rows.latency.get(tier), p)
    return percentile(rows.doc_latency if not tier else (latencies or {}).get(tier, []), p)


def unresolved_of(rows: _Rows, totals: Totals) -> Unresolved:
    """Documents no tier resolved: how many by last outcome, and the most recent few."""
    failed_by: dict[str, int] = {}
    for r in rows.docs:
        if r["status"] != "ok":
            failed_by[r["outcome"]] = failed_by.get(r["outcome"], 0) + r["n"]
    return Unresolved(
        by_outcome=dict(sorted(failed_by.items(), key=lambda kv: (-kv[1], kv[0]))), documents=totals.failed,
        examples=tuple(UnresolvedExample(**e) for e in rows.examples),
        more=max(0, totals.failed - len(rows.examples)),
    )  # fmt: skip


@dataclass
class _TierSums:
    """One tier's attempts summed over its (tier, outcome) groups."""

    tier: str
    reached: int = 0
    resolved: int = 0
    attempts: int = 0
    reasks: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_attempts: int = 0
    own: float = 0.0  # spent on the documents it resolved, by the tier itself
    models: set[str] = field(default_factory=set)
    failure_outcomes: dict[str, int] = field(default_factory=dict)
    first_started: float = math.inf
    last_started: float = -math.inf


DriftSums = dict[tuple[str, str], dict[str, float]]  # (window, tier) -> the sums drift compares


def tier_sums(groups: list[dict[str, Any]]) -> tuple[dict[str, _TierSums], DriftSums]:
    """Per tier, its attempts summed; per (window, tier), the sums drift compares."""
    per: dict[str, _TierSums] = {}
    drift_sums: DriftSums = {}
    for g in groups:
        name, n = g["tier"], g["n"]
        t = per.setdefault(name, _TierSums(name))
        if g["first_started"] is not None:
            t.first_started = min(t.first_started, g["first_started"])
            t.last_started = max(t.last_started, g["last_started"])
        t.reached += int(g["first"])
        t.resolved += n if g["outcome"] == "ok" else 0
        t.attempts += n
        t.reasks += int(g["reasks"])
        t.retries += int(g["retries"])
        t.prompt_tokens += int(g["prompt_tokens"])
        t.completion_tokens += int(g["completion_tokens"])
        t.cost_usd += g["cost"]
        t.unpriced_attempts += n - g["priced"]
        t.models.update((g["models"] or "").split(","))
        if g["outcome"] != "ok":
            t.failure_outcomes[g["outcome"]] = t.failure_outcomes.get(g["outcome"], 0) + n
        t.own += g["own"]
        for key, w in (("recent", "r"), ("baseline", "b")):
            if not g[f"{w}_n"]:
                continue
            d = drift_sums.setdefault((key, name), {"reached": 0, "resolved": 0, "priced": 0,
                                                    "cost_usd": 0.0, "cost_sq": 0.0})  # fmt: skip
            d["reached"] += int(g[f"{w}_reached"])
            d["resolved"] += g[f"{w}_n"] if g["outcome"] == "ok" else 0
            d["priced"] += g[f"{w}_priced"]
            d["cost_usd"] += g[f"{w}_cost"]
            d["cost_sq"] += g[f"{w}_cost_sq"]
    return per, drift_sums


def tier_stats(per: dict[str, _TierSums], rows: _Rows, documents: int) -> tuple[TierStats, ...]:
    """Step 2: per tier, in chain order (as configured; a tier only some configs have goes after those
    it follows), what it reached, resolved, spent and took."""
    latencies: dict[str, list[float]] = {}
    for r in rows.attempt_latency:
        latencies.setdefault(r["tier"], []).append(r["latency_s"])
    kinds = {t["name"]: t.get("kind") for tiers in rows.chains.values() for t in tiers}
    rank: dict[str, int] = {}  # after every tier it follows in any config (not in the last config read)
    for ts in rows.chains.values():
        for i, x in enumerate(ts):
            rank[x["name"]] = max(rank.get(x["name"], i), i)
    out = []
    for t in sorted(per.values(), key=lambda t: (rank.get(t.tier, len(rank)), -t.reached, t.tier)):
        lo, hi = wilson(t.resolved, t.reached)
        cost = None if t.unpriced_attempts else t.cost_usd
        seen = math.isfinite(t.first_started)
        out.append(TierStats(
            tier=t.tier, reached=t.reached, resolved=t.resolved, attempts=t.attempts, reasks=t.reasks,
            retries=t.retries, prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens,
            cost_usd=cost, unpriced_attempts=t.unpriced_attempts,
            models=tuple(sorted(m for m in t.models if m)),
            failure_outcomes=dict(sorted(t.failure_outcomes.items(), key=lambda kv: (-kv[1], kv[0]))),
            kind=kinds.get(t.tier), success_rate=t.resolved / t.reached if t.reached else None,
            success_ci=(lo, hi) if t.reached else None,
            share_resolved=t.resolved / documents if documents else None,
            cost_per_attempt_usd=cost / t.attempts if cost is not None and t.attempts else None,
            # what the tier spent, failures included, per document it resolved
            cost_per_valid_usd=cost / t.resolved if cost is not None and t.resolved else None,
            first_attempt_at=t.first_started if seen else None,
            last_attempt_at=t.last_started if seen else None,
            latency_p50_s=_percentile(rows, t.tier, 0.5, latencies),
            latency_p95_s=_percentile(rows, t.tier, 0.95, latencies),
            ungrounded_fields=tuple(rows.ungrounded_fields.get(t.tier, [])),  # most often rejected first
        ))  # fmt: skip
    return tuple(out)


def rescue_and_verdicts(tiers: tuple[TierStats, ...], per: dict[str, _TierSums], rows: _Rows, documents: int,
                        economics: Economics) -> tuple[tuple[Rescue, ...], tuple[Verdict, ...]]:  # fmt: skip
    """Step 3: what each tier after the first rescued (documents it resolved that the tiers before it
    did not), what that cost, and the verdict on running it."""
    docs_by_config: dict[str, int] = {}
    # documents each tier resolved and everything spent on them (an extraction's cost is the sum
    # of its attempts', unknown when any is): earlier tiers' rescue spend is this minus the own
    won: dict[str, dict[str, Any]] = {}
    for r in rows.docs:
        docs_by_config[r["config_hash"]] = docs_by_config.get(r["config_hash"], 0) + r["n"]
        if r["status"] == "ok":
            spent = won.setdefault(r["tier"], {"n": 0, "spent": 0.0, "unpriced": 0})
            spent["n"] += r["n"]
            spent["spent"] += r["cost_usd"]
            spent["unpriced"] += int(r["unpriced"])
    chains, order = rows.chains, [t.tier for t in tiers]
    rescue, verdicts = [], []
    for t in tiers[1:]:
        name = t.tier
        configs = [h for h, ts in chains.items() if any(x["name"] == name for x in ts)]
        n = sum(docs_by_config.get(h, 0) for h in configs) if configs else documents
        before = _before(name, chains, order)
        on_won = won.get(name, {"n": 0, "spent": 0.0, "unpriced": 0})
        own = per[name].own
        lower = max(0.0, on_won["spent"] - own)
        rescued = on_won["n"]
        known = not on_won["unpriced"] and t.cost_usd is not None
        rescue_cost = on_won["spent"] if known else None
        v = marginal_verdict(name, before, n=n, rescued=rescued, spend=t.cost_usd, economics=economics,
                             kind=t.kind)  # fmt: skip
        rescue.append(Rescue(
            tier=name, kind=t.kind, after=tuple(before), documents=n, rescued=rescued,
            own_cost_usd=own if known else None, lower_cost_usd=lower if known else None,
            rescue_cost_usd=rescue_cost,
            cost_per_rescued_usd=rescue_cost / rescued if rescue_cost is not None and rescued else None,
            tier_cost_usd=t.cost_usd,
            marginal_cost_per_rescue_usd=t.cost_usd / rescued if t.cost_usd is not None and rescued else None,
            failures_avoided_usd=rescued * economics.failure_cost,
            break_even_documents=v.break_even_documents,
        ))  # fmt: skip
        verdicts.append(v)
    return tuple(rescue), tuple(verdicts)


def read_report(
    ledger: Ledger,
    scope: Scope | None = None,
    *,
    economics: Economics | None = None,
    as_of: float | None = None,
    recent_days: float = 7,
    baseline_days: float = 28,
    target_success: float | None = None,
    min_version_documents: int = MIN_VERSION_DOCUMENTS,
) -> Report:
    """Everything ``extractkit report`` shows, as typed values (see the module docstring), in steps:
    the scope's rows, per-tier stats, rescue and verdicts, drift, failures, notes."""
    scope = scope or Scope()
    economics = economics or Economics()
    check_options(target_success, min_version_documents)
    now = time.time() if as_of is None else as_of
    windows = {
        "recent_since": now - recent_days * DAY, "recent_until": now,
        "baseline_since": now - (recent_days + baseline_days) * DAY,
        "baseline_until": now - recent_days * DAY,
    }  # fmt: skip
    rows = read_rows(ledger, scope, windows)
    totals = totals_of(rows)
    per, drift_sums = tier_sums(rows.groups)
    chunked, extra_ok, extra_windows = chunked_of(ledger, scope, windows)
    for (_, name), extra in extra_ok.items():  # a chunked document resolved by a tier once, not per chunk
        if name in per:
            per[name].resolved -= extra
    for key, extra in extra_windows.items():
        if key in drift_sums:
            drift_sums[key]["resolved"] -= extra
    if extra_ok:
        rows.version_stats = [_fewer_ok(r, extra_ok) for r in rows.version_stats]
    served = rows.served if scope == Scope() else scoped_served(rows.served, per)
    tiers = tier_stats(per, rows, totals.documents)
    rescue, verdicts = rescue_and_verdicts(tiers, per, rows, totals.documents, economics)
    configured = [t["name"] for chain in rows.chains.values() for t in chain]  # the tiers the chains have
    unresolved = unresolved_of(rows, totals)
    versions = versions_of(rows.version_stats, rows.version_pairs, rows.chains, [t.tier for t in tiers],
                           min_version_documents)  # fmt: skip
    sources = sources_of(_keeping(ledger, rows.queries), *scope.where())
    checklist = checklist_of(tiers, totals, unresolved, rows.document_errors, rescue, verdicts, versions,
                             economics, target_success, sources)  # fmt: skip
    return Report(
        **ways_of(rows.ways),
        **({"chunked": chunked} if chunked is not None else {}),
        **({"sources": sources} if sources is not None else {}),
        scope=ReportScope(**scope.__dict__, as_of=now),
        economics=economics,
        totals=totals,
        tiers=tiers,
        unresolved=unresolved,
        document_errors=rows.document_errors,
        rescue=rescue,
        verdicts=verdicts,
        verdict=_headline(verdicts, tiers, scope, configured),
        drift=drift(drift_sums, windows, recent_days, baseline_days, served),
        served_models=tuple(ServedModel(**r) for r in served),
        trend=trend(rows.docs),
        sampled=rows.sampled,
        field_failures=field_failures(rows.field_rows, [t.tier for t in tiers], rows.store_text, rows.values),
        versions=versions,
        checklist=checklist,
        notes=(*notes(tiers, economics, local=local_tiers(rows), chains=len(rows.chains)),
               *chunked_note(chunked)),
        queries=tuple(Query(**x) for x in rows.queries),
    )


# The final extractions in scope of documents extracted in chunks (0013_chunks; the partial index
# extractions_chunked keeps this a read of those few rows, not of the scope)
CHUNKED_SQL = """
SELECT e.id, e.document_sha256, e.config_hash, e.n_chunks, e.conflicts_json, e.cost_usd FROM extractions e
WHERE e.n_chunks IS NOT NULL AND e.status IN ('ok', 'failed') AND {where}"""


def chunked_of(
    ledger: Ledger, scope: Scope, windows: dict[str, float] | None = None
) -> tuple[Chunked | None, dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """The scope's documents extracted in chunks (the latest such extraction of each document and
    config), or None when there are none (a report without long documents is as before); per
    (config, tier), how many of their chunk attempts answered ``ok`` beyond one per document the
    tier resolved (a tier's ``resolved`` counts its ``ok`` attempts: a chunked document has one per
    chunk); and the same per (drift window, tier) of ``windows`` (by the attempts' start, the
    document counted resolved in the window of its first attempt, where drift counts it reached).
    The attempts read are those of the chunked extractions only."""
    where, params = scope.where()
    latest: dict[tuple[str, str], Any] = {}
    for r in ledger.query(CHUNKED_SQL.format(where=where), params):
        key = (r["document_sha256"], r["config_hash"])
        if key not in latest or r["id"] > latest[key]["id"]:
            latest[key] = r
    if not latest:
        return None, {}, {}
    rows = list(latest.values())
    costs = [r["cost_usd"] for r in rows]
    chunked = Chunked(documents=len(rows), chunks=sum(_i(r["n_chunks"]) for r in rows),
                      conflicts=sum(len(json.loads(r["conflicts_json"] or "[]")) for r in rows),
                      cost_usd=None if any(c is None for c in costs) else round(sum(costs), 10))  # fmt: skip
    runs: dict[tuple[str, str, str], list[Any]] = {}  # (extraction, config, tier) -> its chunk attempts
    ids = [r["id"] for r in rows]
    for i in range(0, len(ids), CHUNKED_STEP):
        part = ids[i : i + CHUNKED_STEP]
        for a in ledger.query(CHUNK_ATTEMPTS_SQL.format(marks=",".join("?" * len(part))), part):
            runs.setdefault((a["extraction_id"], a["config_hash"], a["tier"]), []).append(a)

    def window_of(t: float | None) -> str | None:
        for name in ("recent", "baseline"):
            if windows and t is not None and windows[f"{name}_since"] <= t < windows[f"{name}_until"]:
                return name
        return None

    extra: dict[tuple[str, str], int] = {}
    extra_windows: dict[tuple[str, str], int] = {}
    for (_, config, tier), attempts in runs.items():
        ok = [a for a in attempts if a["outcome"] == Outcome.OK.value]
        resolved = bool(ok) and any(_i(a["won"]) for a in attempts)
        extra[(config, tier)] = extra.get((config, tier), 0) + len(ok) - resolved
        first = next((a for a in attempts if _i(a["number"]) == 1), None)
        for a in ok:
            w = window_of(a["started_at"])
            if w is not None:
                extra_windows[(w, tier)] = extra_windows.get((w, tier), 0) + 1
        w = window_of(first["started_at"]) if first is not None else None
        if resolved and w is not None:
            extra_windows[(w, tier)] = extra_windows.get((w, tier), 0) - 1
    return chunked, extra, extra_windows


CHUNKED_STEP = 500  # extraction ids per read of their chunk attempts
CHUNK_ATTEMPTS_SQL = """
SELECT a.extraction_id, e.config_hash, a.tier, a.outcome, a.number, a.won, a.started_at
FROM attempts a JOIN extractions e ON e.id = a.extraction_id
WHERE a.extraction_id IN ({marks}) AND a.chunk IS NOT NULL"""


def _fewer_ok(r: Any, extra_ok: dict[tuple[str, str], int]) -> Any:
    """A version-stats row (per config, tier, outcome) with its chunked documents' extra ``ok``
    chunk attempts taken out (see ``chunked_of``)."""
    extra = extra_ok.get((r["config_hash"], r["tier"]), 0)
    if not extra or r["outcome"] != Outcome.OK.value:
        return r
    d = dict(r)
    d["n"] = _i(d["n"]) - extra
    d["priced"] = max(0, _i(d["priced"]) - extra)
    return d


def chunked_note(chunked: Chunked | None) -> tuple[str, ...]:
    if chunked is None:
        return ()
    return (f"{chunked.documents} document(s) longer than a tier's context were extracted in "
            f"{chunked.chunks} chunks and merged, with {chunked.conflicts} conflict(s) between chunks "
            "(Result.conflicts, extractions.conflicts_json); every chunk's cost is in its "
            "document's cost.",)  # fmt: skip


def _keeping(ledger: Ledger, queries: list[dict[str, Any]]) -> Any:
    """``run(name, sql, params)`` over ``ledger`` that keeps each query in ``queries``."""

    def run(name: str, sql: str, params: Sequence[Any]) -> list[Any]:
        queries.append({"name": name, "sql": sql.strip(), "params": list(params)})
        return ledger.query(sql, list(params))

    return run


def ways_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Cost per valid extraction by way (live / batch / mixed) and the Batch API's saving: what the
    batch and mixed documents' attempts would have cost live minus what they cost (None when a
    price is unknown), and their cost as a share of that. Nothing when no attempt went by batch:
    a live-only report is as before."""
    if not any(r["via"] != "live" and r["n"] for r in rows):
        return {}
    ways = []
    for r in sorted(rows, key=lambda r: WAY_ORDER.get(r["via"], len(WAY_ORDER))):
        n, ok = _i(r["n"]), _i(r["ok"])
        if not n:
            continue
        cost = None if r["unpriced"] else float(r["cost"])
        ways.append(Way(via=r["via"], documents=n, ok=ok, cost_usd=cost,
                        cost_per_valid_usd=cost / ok if cost is not None and ok else None,
                        live_cost_usd=None if r["live_unpriced"] else float(r["live_cost"])))  # fmt: skip
    batched = [w for w in ways if w.via != "live"]
    saving = ratio = None
    if all(w.cost_usd is not None and w.live_cost_usd is not None for w in batched):
        spent = sum(w.cost_usd or 0.0 for w in batched)
        live = sum(w.live_cost_usd or 0.0 for w in batched)
        saving = round(live - spent, 10)
        ratio = spent / live if live else None
    return {"ways": tuple(ways), "saving_usd": saving, "saving_ratio": ratio}


WAY_ORDER = {"live": 0, "batch": 1, "mixed": 2}


class ReportOptions(TypedDict, total=False):
    """``read_report``'s keyword options, for ``build_report``."""

    economics: Economics | None
    as_of: float | None
    recent_days: float
    baseline_days: float
    target_success: float | None
    min_version_documents: int


def build_report(
    ledger: Ledger, scope: Scope | None = None, **options: Unpack[ReportOptions]
) -> dict[str, Any]:
    """``read_report`` as plain data: the ``--json`` output (``Report.to_dict()``)."""
    return read_report(ledger, scope, **options).to_dict()


def local_tiers(rows: _Rows) -> set[str]:
    """The tiers in scope that ran on the bundled local model, as ``extractkit.local`` decides."""
    return {t["name"] for ts in rows.chains.values() for t in ts if ran_locally(t)}


def notes(
    tiers: Sequence[TierStats], economics: Economics | None = None, local: set[str] | None = None,
    chains: int = 1,
) -> tuple[str, ...]:
    """The report's notes. ``local``: the tiers that ran on the bundled local model (``extractkit.local``
    decides, from the run configs)."""
    out = []
    trained = economics is not None and economics.training_cost is not None
    if trained and tiers and not any(t.kind == FINE_TUNED for t in tiers[1:]):
        out.append(
            f"the training cost ({money(economics.training_cost)}) applies to a fine-tuned tier only, "  # type: ignore[union-attr]
            "and no fine-tuned tier ran after another tier in scope: it is left out."
        )
    if chains > 1:
        out.append(
            f"{chains} chain configs are in scope and their tiers are counted together by name (a tier "
            "row mixes their models and prompts): `--config-hash HASH` reports one, `--run ID` one run."
        )
    on_local = [t.tier for t in tiers if t.tier in (local or set())]
    if on_local:
        out.append(accuracy_note(on_local))
    rejected = [f"{t.tier}: " + ", ".join(f"{f.field} ({f.n})" for f in t.ungrounded_fields)
                for t in tiers if t.ungrounded_fields]  # fmt: skip
    if rejected:
        out.append("values not found in the document (ungrounded), most often in: " + "; ".join(rejected))
    if any(t.unpriced_attempts for t in tiers):
        out.append(
            "some attempts have no price (model not in the price table): costs that include them are "
            "shown as unknown; set `price` on the tier."
        )
    return tuple(out)


def _before(name: str, chains: dict[str, list[dict[str, Any]]], order: list[str]) -> list[str]:
    for ts in chains.values():
        names = [x["name"] for x in ts]
        if name in names:
            return names[: names.index(name)]
    return order[: order.index(name)]


def _headline(
    verdicts: Sequence[Verdict], tiers: Sequence[TierStats], scope: Scope | None = None,
    configured: Sequence[str] = (),
) -> str:  # fmt: skip
    if not tiers:
        if scope is not None and (scope.since or scope.until or scope.config_hash or scope.run_id):
            return ("No extraction by a chain in this scope: widen --since/--until or drop --run/"
                    "--config-hash (eval runs are shown by `extractkit eval --run`).")  # fmt: skip
        return ("No extraction by a chain in scope yet: run `extractkit extract` first (eval runs force "
                "each tier alone and are shown by `extractkit eval --run`).")  # fmt: skip
    sentence = headline_sentence(verdicts, {t.tier: t.kind for t in tiers})
    if sentence is None:
        idle = [n for n in dict.fromkeys(configured) if n != tiers[0].tier]
        first = tiers[0]
        if idle and first.resolved < first.reached:  # it did not resolve them all, and nothing escalated
            return (
                f"Only {first.tier} ran, and it left {first.reached - first.resolved} of {first.reached} "
                f"documents unresolved without escalating them (see their last outcomes: a provider "
                f"that failed or a transient error ends a document there), so {', '.join(idle)} never "
                "ran: there is nothing to compare yet."
            )
        if idle:
            return (
                f"Only {tiers[0].tier} was needed: the chain never escalated, so {', '.join(idle)} never "
                "ran and there is nothing to compare it with; run `extractkit eval` to compare the tiers "
                "on a gold set."
            )
        return (
            f"Only one tier ({tiers[0].tier}) ran: there is nothing to compare it with; "
            "add a tier or run `extractkit eval`."
        )
    return sentence


def drift(sums: DriftSums, windows: dict[str, float], recent_days: float,
          baseline_days: float, served: list[dict[str, Any]] | None = None) -> Drift:  # fmt: skip
    """Step 4: per tier, the recent window against the one before it: success rate (two-proportion z)
    and cost per attempt (Welch), flagged at p < 0.01; cost per valid extraction is flagged when
    it moved by 20 % or more and either test is significant. A document belongs to the window of
    its latest extraction."""
    out = []
    names = list(dict.fromkeys(name for (_, name) in sums))
    for name in names:
        r, b = sums.get(("recent", name)), sums.get(("baseline", name))
        recent, baseline = _window(r), _window(b)
        if not r or not b or min(r["reached"], b["reached"]) < 20:
            note = "too few documents in one of the windows to compare (need 20 each)"
            out.append(DriftTier(tier=name, recent=recent, baseline=baseline, flags=(), note=note))
            continue
        flags = []
        z = two_proportion_z(int(r["resolved"]), int(r["reached"]), int(b["resolved"]), int(b["reached"]))
        if z is not None and abs(z) >= Z99:
            flags.append("success_rate")
        cz = _welch_from_sums(r, b)
        if cz is not None and abs(cz) >= Z99:
            flags.append("cost_per_attempt")
        cr, cb = recent.cost_per_valid_usd, baseline.cost_per_valid_usd
        if cr is not None and cb and abs(cr - cb) / cb >= 0.2 and flags:
            flags.append("cost_per_valid")
        out.append(DriftTier(tier=name, recent=recent, baseline=baseline, flags=tuple(flags), success_z=z,
                             cost_per_attempt_z=cz))  # fmt: skip
    changes = model_changes(served or [], windows["recent_since"], windows["recent_until"])
    return Drift(
        model_changes=changes,
        recent=Span(since=windows["recent_since"], until=windows["recent_until"], days=recent_days),
        baseline=Span(since=windows["baseline_since"], until=windows["baseline_until"], days=baseline_days),
        tiers=tuple(out),
        flagged=tuple([f"{i.tier}: {', '.join(i.flags)}" for i in out if i.flags]
                      + [c.sentence for c in changes]),  # fmt: skip
    )


def scoped_served(served: list[dict[str, Any]], per: dict[str, _TierSums]) -> list[dict[str, Any]]:
    """The served models of a filtered report: those recorded for a (tier, model) the scope's
    attempts used, seen while they ran. (The ledger keeps one row per served model and tier, with
    first and last sightings, the last refreshed at most every SERVED_REFRESH_S.)"""
    out = []
    for r in served:
        t = per.get(r["tier"])
        if t is None or r["model"] not in t.models:
            continue
        if r["first_seen"] <= t.last_started and r["last_seen"] + SERVED_REFRESH_S >= t.first_started:
            out.append(r)
    return out


def model_changes(served: list[dict[str, Any]], since: float, until: float) -> tuple[ModelChange, ...]:
    """A tier whose provider answered with a model (or system fingerprint) first seen in the recent
    window, after answering with another before it: the name stayed, the model moved."""
    out = []
    by_tier: dict[str, list[dict[str, Any]]] = {}
    for r in served:
        by_tier.setdefault(r["tier"], []).append(r)
    for tier, rows in by_tier.items():
        before = [r for r in rows if r["first_seen"] < since]
        new = [r for r in rows if since <= r["first_seen"] < until]
        if not before or not new:
            continue

        def label(r: dict[str, Any]) -> str:
            return r["served_model"] + (f" ({r['fingerprint']})" if r["fingerprint"] else "")

        old_labels = sorted({label(r) for r in before})
        new_labels = sorted({label(r) for r in new})
        out.append(ModelChange(
            tier=tier, model=rows[0]["model"], before=tuple(old_labels), new=tuple(new_labels),
            sentence=f"{tier}: {rows[0]['model']} is now answered by {', '.join(new_labels)} "
                     f"(before: {', '.join(old_labels)})",
        ))  # fmt: skip
    return tuple(out)


def _window(r: dict[str, Any] | None) -> Window:
    if not r:
        return Window(reached=0, resolved=0, success_rate=None, cost_per_valid_usd=None)
    priced = r["priced"] > 0
    return Window(
        reached=r["reached"],
        resolved=r["resolved"],
        success_rate=r["resolved"] / r["reached"] if r["reached"] else None,
        cost_usd=r["cost_usd"] if priced else None,
        cost_per_valid_usd=r["cost_usd"] / r["resolved"] if priced and r["resolved"] else None,
    )


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


def _document_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [r["first_at"] for r in rows]
    lasts = [r["last_at"] for r in rows]
    return {
        "documents": sum(r["n"] for r in rows),
        "ok": sum(r["n"] for r in rows if r["status"] == "ok"),
        "failed": sum(r["n"] for r in rows if r["status"] == "failed"),
        "cost_usd": sum(r["cost_usd"] for r in rows),
        "unpriced": sum(r["unpriced"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "first_at": min(firsts) if firsts and math.isfinite(min(firsts)) else None,
        "last_at": max(lasts) if lasts and math.isfinite(max(lasts)) else None,
        "configs": len({r["config_hash"] for r in rows}),
        "schemas": len({r["schema_hash"] for r in rows}),
    }


def trend(rows: list[dict[str, Any]]) -> tuple[TrendDay, ...]:
    """Per day: documents, valid, cost per valid extraction, and documents resolved per tier."""
    days: dict[str, dict[str, Any]] = {}
    for r in rows:
        day = time.strftime("%Y-%m-%d", time.gmtime(r["day"] * 86_400))  # days since 1970 (UTC)
        d = days.setdefault(day, {"day": day, "documents": 0, "ok": 0, "cost_usd": 0.0,
                                  "resolved_by_tier": {}})  # fmt: skip
        d["documents"] += r["n"]
        d["cost_usd"] += r["cost_usd"]
        if r["status"] == "ok":
            d["ok"] += r["n"]
            d["resolved_by_tier"][r["tier"]] = d["resolved_by_tier"].get(r["tier"], 0) + r["n"]
    return tuple(TrendDay(**d, cost_per_valid_usd=d["cost_usd"] / d["ok"] if d["ok"] else None)
                 for d in days.values())  # fmt: skip
