"""Named read queries over the ledger's plain tables, for the reports (the report module fills in
its scope and runs them, keeping each query with the report so it can be rerun by hand)."""

from __future__ import annotations

from collections.abc import Iterable

from .._results import FIELD_ERROR_OUTCOMES, Outcome


def outcomes_in(outcomes: Iterable[Outcome]) -> str:
    """An SQL list of outcome values (``('a', 'b')``, sorted), written from a category of
    ``extractkit._results`` (its values are fixed identifiers, never user input), so the SQL
    follows the one definition."""
    return "(" + ", ".join(sorted(f"'{Outcome(o).value}'" for o in outcomes)) + ")"


# Whether a failed attempt's rejected values may be shown: only when asked (:with_values) and the
# attempt's document has its text in the ledger (recorded with store_text on). A document recorded
# with store_text off keeps its values out of every report, whoever opens the ledger.
_SHOW_VALUES = """CASE WHEN :with_values THEN (
    SELECT d.text IS NOT NULL FROM extractions x JOIN documents d ON d.sha256 = x.document_sha256
    WHERE x.id = a.extraction_id) ELSE 0 END"""


def field_failures_sql(scope_source: str, *, per_tier: bool) -> str:
    """Per tier and field, how often its value failed validation and how often it was ungrounded,
    and with which rejected value (Pydantic's ``input``; NULL where values are not shown).

    ``scope_source`` is the report's way to reach the attempts in scope: a ``FROM ... WHERE ...``
    clause over ``attempts a`` (it may join the report's ``latest`` table as ``l``), extended here
    with ``AND``. With ``per_tier`` it reads one tier (:tier) and one outcome (:outcome: one of
    ``FIELD_ERROR_OUTCOMES``, the outcomes whose errors name fields), its most recent :limit
    attempts: one outcome at a time, so the (tier, outcome) index yields them already in rowid
    order. Without, one pass over the scope's attempts with either outcome, at most :limit of them
    (for a scope the report reads by joining its few documents to their attempts)."""
    if per_tier:
        condition, sample = "a.tier = :tier AND a.outcome = :outcome", "ORDER BY a.rowid DESC LIMIT :limit"
    else:
        condition, sample = f"a.outcome IN {outcomes_in(FIELD_ERROR_OUTCOMES)}", "LIMIT :limit"
    return f"""
SELECT s.tier, json_extract(j.value, '$.type') = 'ungrounded' AS ungrounded,
       json_extract(j.value, '$.loc') AS loc,
       CASE WHEN s.show THEN json_extract(j.value, '$.input') END AS value, s.show AS shown, COUNT(*) AS n
FROM (SELECT a.tier, a.errors_json, {_SHOW_VALUES} AS show
      {scope_source} AND {condition}
      {sample}) s,
     json_each(CASE WHEN json_valid(s.errors_json) THEN s.errors_json ELSE '[]' END) j
WHERE json_type(j.value) = 'object'
GROUP BY 1, 2, 3, 4, 5"""


# Documents that could not be read, each counted once (the latest error of each document: by its
# content hash, or by its path when it could not be read at all), however many runs met it.
DOCUMENT_ERRORS = """
SELECT e.outcome, COUNT(*) AS n FROM extractions e WHERE e.id IN (
    SELECT MAX(e.id) FROM extractions e WHERE e.status = 'error' AND {where}
    GROUP BY COALESCE('sha256:' || e.document_sha256, 'path:' || e.path))
GROUP BY e.outcome ORDER BY n DESC, e.outcome"""


# Prompt versions compared (the report's ``versions`` step): run only when more than one chain config
# is in scope (with one, each tier has one version and the per-tier sums are its numbers). A tier's
# prompt version, examples and k / select are its chain config's (``runs.config_json``), so the
# attempts are summed per config, tier and outcome. ``{latest}`` is the report's documents in scope
# (a materialised table), joined to their attempts by the attempts' extraction index; ``{tiers}`` is
# empty, or limits the sums to the tiers in :tiers (a JSON list: those with more than one version).
VERSION_STATS = """
SELECT l.config_hash, a.tier, a.outcome, COUNT(*) AS n, TOTAL(a.number = 1) AS first,
       TOTAL(a.cost_usd) AS cost, COUNT(a.cost_usd) AS priced,
       MIN(a.started_at) AS first_started, MAX(a.started_at) AS last_started
FROM {latest} l CROSS JOIN attempts a ON a.extraction_id = l.id
WHERE 1{tiers}
GROUP BY 1, 2, 3"""

# The same over the current extractions (the whole ledger, or one run of it), read by the attempts'
# flags with no join to extractions: an attempt's chain config is its run's (a batch or library run is
# one extractor, one config; eval runs' attempts are never current), its extraction's when it has no run.
VERSION_STATS_CURRENT = """
SELECT COALESCE(r.config_hash, (SELECT e.config_hash FROM extractions e WHERE e.id = a.extraction_id))
           AS config_hash,
       a.tier, a.outcome, COUNT(*) AS n, TOTAL(a.number = 1) AS first,
       TOTAL(a.cost_usd) AS cost, COUNT(a.cost_usd) AS priced,
       MIN(a.started_at) AS first_started, MAX(a.started_at) AS last_started
FROM attempts a INDEXED BY attempts_tier LEFT JOIN runs r ON r.id = a.run_id
WHERE a.current = 1{attempts_where}{tiers}
GROUP BY 1, 2, 3"""

TIERS_IN = " AND a.tier IN (SELECT value FROM json_each(:tiers))"  # the ``{tiers}`` of the queries above


# Where a sample of documents for the paired comparison ends: the document hash :n extractions into
# the (document_sha256, ...) index. The hash is of the content, so the documents below it are a
# uniform sample; the pairs query then reads only those, by the same index (bounded over any ledger).
PAIRS_CUT = """
SELECT document_sha256 AS cut FROM extractions INDEXED BY extractions_forced
WHERE document_sha256 IS NOT NULL ORDER BY document_sha256 LIMIT 1 OFFSET :n"""

# Documents two chain configs both sent to one tier, counted by whether each config's tier resolved
# them (ok_a, ok_b): the discordant pairs of a paired comparison (exact McNemar). config_a < config_b;
# the report maps configs to the versions they ran. Only the tiers named in :tiers (a JSON list:
# those with more than one version) are read; ``{sample}`` is empty, or bounds the documents read
# to those up to :cut (``PAIRS_CUT``).
VERSION_PAIRS = """
WITH t AS MATERIALIZED (
    SELECT l.document_sha256 AS doc, l.config_hash AS config, a.tier, MAX(a.outcome = 'ok') AS ok
    FROM {latest} l CROSS JOIN attempts a ON a.extraction_id = l.id
    WHERE l.document_sha256 IS NOT NULL{sample} AND a.tier IN (SELECT value FROM json_each(:tiers))
    GROUP BY l.id, a.tier)
SELECT x.tier, x.config AS config_a, y.config AS config_b, x.ok AS ok_a, y.ok AS ok_b, COUNT(*) AS n
FROM t x JOIN t y ON y.doc = x.doc AND y.tier = x.tier AND y.config > x.config
GROUP BY 1, 2, 3, 4, 5"""


# Where the text of the documents in scope came from (``document_sources``, migration 0012): the
# documents of each source (text | ocr | mixed) among the scope's current final extractions, and
# the OCR'd pages and their mean confidence. Driven by ``document_sources`` (only documents loaded
# with pages have a row: none for plain text), each looked up in ``extractions`` by its hash.
# ``{where}`` is the report scope's filter on ``e`` (positional parameters).
DOCUMENT_SOURCES = """
SELECT s.source, COUNT(*) AS n, SUM(s.ocr_pages) AS ocr_pages, SUM(s.ocr_mean * s.ocr_pages) AS ocr_weighted,
       SUM(CASE WHEN s.low_pages <> '[]' THEN 1 ELSE 0 END) AS low
FROM document_sources s WHERE EXISTS (
    SELECT 1 FROM extractions e WHERE e.document_sha256 = s.document_sha256 AND {where}
    AND e.superseded_by IS NULL AND e.status IN ('ok', 'failed'))
GROUP BY s.source ORDER BY s.source"""

# The documents in scope with OCR'd pages under the recorded threshold, lowest confidence first
# (at most :limit, the last positional parameter), with the path each was last extracted at.
DOCUMENT_SOURCES_LOW = """
SELECT s.document_sha256, s.source, s.n_pages, s.ocr_min, s.ocr_mean, s.low_threshold, s.low_pages,
       (SELECT MAX(e.path) FROM extractions e WHERE e.document_sha256 = s.document_sha256 AND {where}
        AND e.superseded_by IS NULL AND e.status IN ('ok', 'failed')) AS path
FROM document_sources s WHERE s.low_pages <> '[]' AND EXISTS (
    SELECT 1 FROM extractions e WHERE e.document_sha256 = s.document_sha256 AND {where}
    AND e.superseded_by IS NULL AND e.status IN ('ok', 'failed'))
ORDER BY s.ocr_min, s.document_sha256 LIMIT ?"""
