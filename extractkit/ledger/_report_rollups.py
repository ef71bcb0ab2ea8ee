"""The report's reads of the rollups (``_rollups``) and its bounded reads of the plain tables, written
once for both engines (no SQLite-only function, no rowid, no ``INDEXED BY``; ``?`` parameters).

A report's scope is whole rollup rows (``ROLLUP_*``, filtered by ``rollup_where``) plus, for the hours
at its edges, the plain extractions of those hours (``EXACT_*``, filtered by ``member_where``: the
same membership, row by row). See ``_rollups`` for the keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .._results import FIELD_ERROR_OUTCOMES
from ._queries import outcomes_in
from ._rollups import ATTEMPT_COLUMNS, DAILY, DAY_HOURS, EXTRACTION_COLUMNS, HOUR, NOT_GONE, in_list

__all__ = ["in_list"]


def key_filters(
    alias: str, *, schema: str | None, config: str | None, run: str | None
) -> tuple[str, list[Any]]:
    """The scope's filters on rollup rows (``alias``): schema (name or hash prefix), config (hash
    prefix), run."""
    clauses, params = ["1 = 1"], []  # type: list[str], list[Any]
    if schema:
        clauses.append(f"{alias}.schema IN (SELECT hash FROM schemas WHERE name = ? OR hash LIKE ?)")
        params += [schema, schema + "%"]
    if config:
        clauses.append(f"{alias}.config LIKE ?")
        params.append(config + "%")
    if run:
        clauses.append(f"{alias}.run = ?")
        params.append(run)
    return " AND ".join(clauses), params


def source(table: str, keys: tuple[str, str], hours: str, days: str) -> str:
    """A table's rows in scope: whole days from its daily twin (``days``, ``keys[0]``: alias ``d``),
    the other hours from the table (``hours``, ``keys[1]``: alias ``h``); ``span`` is a row's length
    in hours. Its parameters: the keys' twice."""
    return (
        f"(SELECT d.*, {DAY_HOURS} AS span FROM {table}{DAILY} d WHERE {keys[0]} AND {days}"
        f" UNION ALL SELECT h.*, 1 AS span FROM {table} h WHERE {keys[1]} AND {hours})"
    )


def _in_view(alias: str, *, until: float | None, run: bool) -> list[str]:
    """Rows in the scope's view: not empty (rows emptied by superseding stay, at zero), and never
    superseded (no ``until``) or superseded in an hour that starts at or after ``until``, by the
    whole ledger (``gone``) or, with a run, by that run (``gone_run``)."""
    gone = f"{alias}.{'gone_run' if run else 'gone'}"
    return [f"{alias}.n > 0",
            f"{gone} = {NOT_GONE}" if until is None else f"{gone} >= {math.ceil(until / HOUR)}"]  # fmt: skip


def _first_whole_day(since: float) -> int:
    """The first hour of the first whole day at or after ``since``."""
    return math.ceil(math.ceil(since / HOUR) / DAY_HOURS) * DAY_HOURS


def _end_of_whole_days(until: float) -> int:
    """The first hour of the day ``until`` falls in: whole days end there."""
    return math.floor(math.floor(until / HOUR) / DAY_HOURS) * DAY_HOURS


def day_where(
    alias: str, *, since: float | None, until: float | None, run: bool, partial: Iterable[int]
) -> str:
    """Daily rows wholly inside the scope (see ``rollup_where``), outside the ``partial`` days."""
    out = _in_view(alias, until=until, run=run)
    if since is not None:
        out.append(f"{alias}.hour >= {_first_whole_day(since)}")
    if until is not None:
        out.append(f"{alias}.hour < {_end_of_whole_days(until)}")
    days = sorted(set(partial))
    if days:
        out.append(f"{alias}.hour / {DAY_HOURS} NOT IN {in_list(days)}")
    return " AND ".join(out)


def partial_hours(alias: str, *, since: float | None, until: float | None, partial: Iterable[int]) -> str:
    """The hours not in a whole day ``day_where`` reads: those of the partial days and of the days
    the scope's bounds cut."""
    out = []
    days = sorted(set(partial))
    if days:
        out.append(f"{alias}.hour / {DAY_HOURS} IN {in_list(days)}")
    if since is not None:
        out.append(f"{alias}.hour < {_first_whole_day(since)}")
    if until is not None:
        out.append(f"{alias}.hour >= {_end_of_whole_days(until)}")
    return "(" + (" OR ".join(out) or "1 = 0") + ")"


# created days whose attempts started on a day a drift window's edge cuts (read hour by hour)
ROLLUP_CUT_DAYS = """
SELECT DISTINCT r.hour FROM rollup_attempts_daily r
WHERE {keys} AND {where} AND r.ahour / 24 IN {days}"""


def rollup_where(alias: str, *, since: float | None, until: float | None, run: bool,
                 exclude: Iterable[int] = ()) -> str:  # fmt: skip
    """Rollup rows wholly inside the scope's time window and wholly in its view, outside the hours
    ``exclude`` (read exactly instead): created in an hour that starts at or after ``since`` and ends
    by ``until``; never superseded (no ``until``), or superseded in an hour that starts at or after
    ``until``, by the whole ledger (``gone``) or, with a run, by that run (``gone_run``)."""
    out = _in_view(alias, until=until, run=run)
    if since is not None:
        out.append(f"{alias}.hour >= {math.ceil(since / HOUR)}")
    if until is not None:
        out.append(f"{alias}.hour < {math.floor(until / HOUR)}")
    skip = sorted(set(exclude))
    if skip:
        out.append(f"{alias}.hour NOT IN {in_list(skip)}")
    return " AND ".join(out)


# the (hour, gone) pairs of a scope's documents: which hours are whole, which are at its edges
ROLLUP_HOURS = """
SELECT r.hour, r.{gone} AS gone FROM rollup_documents r
WHERE {keys} AND r.n > 0 AND r.hour >= ? AND r.hour <= ?
GROUP BY r.hour, r.{gone} HAVING SUM(r.n) > 0"""

# whether any extraction of the scope (a run) was superseded: the rows moved out of the current view
ROLLUP_RUN_MOVED = f"""
SELECT 1 AS moved FROM rollup_documents_daily r
WHERE {{keys}} AND r.n > 0 AND r.gone != {NOT_GONE} LIMIT 1"""

# unresolved documents per hour, the latest first: where the most recent examples are
ROLLUP_FAILED_HOURS = """
SELECT r.hour, SUM(r.n) AS n FROM rollup_documents r
WHERE {keys} AND {where} AND r.status = 'failed'
GROUP BY r.hour ORDER BY r.hour DESC"""

# the first and last hours each (config, tier)'s attempts started in (its first and last use)
ROLLUP_ATTEMPT_SPANS = """
SELECT r.config, r.tier, MIN(r.ahour) AS lo, MAX(r.ahour) AS hi FROM rollup_attempts r
WHERE {keys} AND {where} AND r.ahour >= 0
GROUP BY r.config, r.tier"""

# the hours holding documents whose attempts started in the given hours
ROLLUP_ATTEMPT_HOURS = """
SELECT DISTINCT r.hour FROM rollup_attempts r
WHERE {keys} AND {where} AND r.ahour IN {ahours}"""

ROLLUP_DOCUMENTS = """
SELECT r.hour / 24 AS day, r.config AS config_hash, r.schema AS schema_hash, r.tier, r.status, r.outcome,
       SUM(r.n) AS n, SUM(r.cost) AS cost_usd, SUM(r.unpriced) AS unpriced,
       SUM(r.prompt_tokens) AS prompt_tokens,
       SUM(r.completion_tokens) AS completion_tokens
FROM {source} r
GROUP BY r.hour / 24, r.config, r.schema, r.tier, r.status, r.outcome HAVING SUM(r.n) > 0"""

# per (config, tier, outcome, model) and drift window (r: recent, b: baseline; whole hours, the
# others are edges; first and last use come from the edges)
ROLLUP_ATTEMPTS = """
SELECT r.config, r.tier, r.outcome, r.model, {window} AS w,
       SUM(r.n) AS n, SUM(r.first) AS first,
       SUM(r.reasks) AS reasks, SUM(r.retries) AS retries, SUM(r.cost) AS cost, SUM(r.priced) AS priced,
       SUM(r.prompt_tokens) AS prompt_tokens, SUM(r.completion_tokens) AS completion_tokens,
       SUM(r.own) AS own,
       SUM(r.cost_sq) AS cost_sq
FROM {source} r
GROUP BY r.config, r.tier, r.outcome, r.model, {window} HAVING SUM(r.n) > 0"""


def window_case(windows: dict[str, float]) -> str:
    """Which drift window an attempt's started hour lies wholly in: 'r', 'b' or ''."""
    r0, r1 = math.ceil(windows["recent_since"] / HOUR), math.floor(windows["recent_until"] / HOUR)
    b0, b1 = math.ceil(windows["baseline_since"] / HOUR), math.floor(windows["baseline_until"] / HOUR)
    return (f"CASE WHEN r.ahour >= {r0} AND r.ahour + r.span <= {r1} THEN 'r'"
            f" WHEN r.ahour >= {b0} AND r.ahour + r.span <= {b1} THEN 'b' ELSE '' END")  # fmt: skip


# per way (live | batch | mixed): documents, valid ones, cost and what they cost or would have cost live
ROLLUP_WAYS = """
SELECT r.via, SUM(r.n) AS n, SUM(r.ok) AS ok, SUM(r.cost) AS cost, SUM(r.unpriced) AS unpriced,
       SUM(r.live_cost) AS live_cost, SUM(r.live_unpriced) AS live_unpriced FROM {source} r
GROUP BY r.via HAVING SUM(r.n) > 0"""

ROLLUP_LATENCY = """
SELECT r.tier, r.bucket, SUM(r.n) AS n, SUM(r.total) AS total FROM {source} r
GROUP BY r.tier, r.bucket HAVING SUM(r.n) > 0"""

ROLLUP_FIELDS = """
SELECT r.tier, r.outcome, r.loc, r.ungrounded, SUM(r.n) AS n FROM {source} r
GROUP BY r.tier, r.outcome, r.loc, r.ungrounded HAVING SUM(r.n) > 0"""


def member_where(scope_where: str, *, run: bool, until: bool) -> str:
    """The scope's extractions row by row (``e``): ``scope_where`` (the report's filters, with
    ``?`` parameters; ``until`` adds one more, the ``until`` time, at the end) and the view:
    never superseded (the current view), or superseded at or after ``until``; with a run, no later
    final extraction of the same document and chain in that run (before ``until``)."""
    final = "e.status IN ('ok', 'failed') AND " + scope_where
    if run:
        later = ("SELECT 1 FROM extractions n WHERE n.document_sha256 = e.document_sha256"
                 " AND n.schema_hash = e.schema_hash AND n.config_hash = e.config_hash"
                 " AND n.forced_tier IS NULL"
                 " AND n.status IN ('ok', 'failed') AND n.run_id = e.run_id AND n.id > e.id")  # fmt: skip
        return f"{final} AND NOT EXISTS ({later}{' AND n.created_at < ?' if until else ''})"
    if until:
        return (
            f"{final} AND (e.superseded_by IS NULL OR"
            " (SELECT s.created_at FROM extractions s WHERE s.id = e.superseded_by) >= ?)"
        )
    return f"{final} AND e.superseded_by IS NULL"


def hour_ranges(hours: Iterable[int]) -> tuple[str, list[float]]:
    """``e.created_at`` within the given hours, consecutive hours as one range."""
    ranges: list[list[int]] = []
    for h in sorted(set(hours)):
        if ranges and ranges[-1][1] == h:
            ranges[-1][1] = h + 1
        else:
            ranges.append([h, h + 1])
    sql = " OR ".join("(e.created_at >= ? AND e.created_at < ?)" for _ in ranges)
    return f"({sql})", [float(x * HOUR) for r in ranges for x in r]


EXACT_EXTRACTIONS = "SELECT {columns} FROM extractions e WHERE {ranges} AND {member}"
EXACT_ATTEMPTS = f"""
SELECT {ATTEMPT_COLUMNS}
FROM extractions e JOIN attempts a ON a.extraction_id = e.id
WHERE {{ranges}} AND {{member}}"""


def exact_extractions_sql(ranges: str, member: str) -> str:
    columns = ", ".join(f"e.{c.strip()}" for c in EXTRACTION_COLUMNS.split(","))
    return EXACT_EXTRACTIONS.format(columns=columns, ranges=ranges, member=member)


# the most recent documents no tier resolved (ids sort by time), ``{since}``: created from a time on
# (the hours the rollups show holding at least that many: bounded by the extractions_created index)
UNRESOLVED_EXAMPLES = """
SELECT e.path, e.document_sha256, e.outcome, e.error FROM extractions e
WHERE e.status = 'failed'{since} AND {member}
ORDER BY e.id DESC LIMIT ?"""

# ``ledger.DOCUMENT_ERRORS`` read from the unreadable documents alone (the partial index
# ``extractions_errors``), whatever the scope's filters (a run's index would read all its extractions)
DOCUMENT_ERRORS_BOUNDED = """
WITH errors AS MATERIALIZED (SELECT * FROM extractions WHERE status = 'error')
SELECT e.outcome, COUNT(*) AS n FROM errors e WHERE e.id IN (
    SELECT MAX(e.id) FROM errors e WHERE {where}
    GROUP BY COALESCE('sha256:' || e.document_sha256, 'path:' || e.path))
GROUP BY e.outcome ORDER BY n DESC, e.outcome"""

CHAINS = """
SELECT DISTINCT r.config_hash, r.config_json FROM runs r
WHERE r.config_hash IN ({marks}) AND r.config_json IS NOT NULL"""

# whether a failed attempt's rejected values may be shown: its document's text is in the ledger
SHOW = ("CASE WHEN EXISTS (SELECT 1 FROM extractions x JOIN documents d ON d.sha256 = x.document_sha256"
        " WHERE x.id = a.extraction_id AND d.text IS NOT NULL) THEN 1 ELSE 0 END")  # fmt: skip


def field_values_sql(*, current: bool, member: str | None, recent: str, show: bool, run: bool = False) -> str:
    """One tier's (``?``) attempts with one outcome (``?``), the most recent ``?`` of them in scope,
    with their errors (the rejected values shown in the field table). ``current``: the whole
    ledger's current extractions, by the attempts' own flag; otherwise ``member`` (row-level
    membership of their extraction, with its parameters after the tier and outcome). ``recent``:
    the engine's order of insertion (SQLite's rowid; the id elsewhere). ``run`` (with ``current``):
    of one run (``?``, after the outcome), whose extractions are all current."""
    scope = (
        "a.current = 1" + (" AND a.run_id = ?" if run else "")
        if current
        else f"EXISTS (SELECT 1 FROM extractions e WHERE e.id = a.extraction_id AND {member})"
    )
    return (f"SELECT a.tier, a.errors_json, {SHOW if show else '0'} AS shown FROM attempts a"
            f" WHERE a.tier = ? AND a.outcome = ? AND {scope} ORDER BY {recent} DESC LIMIT ?")  # fmt: skip


def field_values_driven_sql(member: str, show: bool) -> str:
    """The same for a small scope, from its extractions: any ``?`` of its attempts with an outcome
    whose errors name fields."""
    return (f"SELECT a.tier, a.errors_json, {SHOW if show else '0'} AS shown"
            f" FROM extractions e JOIN attempts a ON a.extraction_id = e.id"
            f" WHERE {member} AND a.outcome IN {outcomes_in(FIELD_ERROR_OUTCOMES)} LIMIT ?")  # fmt: skip


# the documents two chain configs both sent to one tier, by whether each resolved them (see
# ledger.VERSION_PAIRS; here over the scope's extractions, ``{latest}``, a subquery)
PAIRS = """
WITH t AS MATERIALIZED (
    SELECT l.document_sha256 AS doc, l.config_hash AS config, a.tier,
           MAX(CASE WHEN a.outcome = 'ok' THEN 1 ELSE 0 END) AS ok
    FROM {latest} l JOIN attempts a ON a.extraction_id = l.id
    WHERE l.document_sha256 IS NOT NULL{sample} AND a.tier IN ({marks})
    GROUP BY l.id, l.document_sha256, l.config_hash, a.tier)
SELECT x.tier, x.config AS config_a, y.config AS config_b, x.ok AS ok_a, y.ok AS ok_b, COUNT(*) AS n
FROM t x JOIN t y ON y.doc = x.doc AND y.tier = x.tier AND y.config > x.config
GROUP BY x.tier, x.config, y.config, x.ok, y.ok"""

PAIRS_CUT_ANY = """
SELECT document_sha256 AS cut FROM extractions
WHERE document_sha256 IS NOT NULL ORDER BY document_sha256 LIMIT 1 OFFSET ?"""


def scope_latest(member: str) -> str:
    return f"(SELECT e.id, e.document_sha256, e.config_hash FROM extractions e WHERE {member})"


def marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))
