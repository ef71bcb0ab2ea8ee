"""Rollups: the report's sums, kept per hour by every write, so a report reads hours, not attempts.

Why: the report summed every attempt of the scope (1,000,000 attempts: 1.8 s on SQLite), so its
cost grew with the ledger. These tables hold the same sums per *hour* (UTC) and key, written in the
same transaction as each extraction (``apply``, called by ``Ledger.record``), so a report's cost
grows with hours x tiers x outcomes (x runs, configs, schemas, models), whatever the attempt count.

Unit and key. A row sums the final (ok or failed) extractions of one chain (``forced_tier`` NULL:
eval rows stay out, as in the report) that share::

    hour      the extraction's created_at // 3600 (``HOUR``)
    run       its run id ('' for none)         config, schema   its chain config and schema hashes
    gone      the hour its next final extraction of the same document and chain was created
              (it superseded this one); ``NOT_GONE`` while it is current
    gone_run  the same for the next one *of the same run*; ``NOT_GONE`` while it is its run's latest

and, per table, the rest of the key:

- ``rollup_documents``: + status, winning tier, outcome -> documents, cost (unknown prices counted
  apart: ``unpriced``), tokens;
- ``rollup_attempts``: + the attempt's started hour (``ahour``; -1 when unknown), tier, outcome,
  model -> attempts, first tries, re-asks, retries, cost, priced, tokens, ``own`` (spent by the
  tier that resolved the document), cost squared (drift's Welch test);
- ``rollup_latency``: + tier ('' for the document's own latency), log-spaced bucket -> count and
  sum of the values (percentiles from buckets: see ``bucket``);
- ``rollup_fields``: + tier, outcome, ``loc`` (JSON text of a Pydantic error's loc), whether the
  error was ``ungrounded`` -> errors, counted from ``attempts.errors_json`` in Python at write time
  (outcomes in ``FIELD_ERROR_OUTCOMES``);
- ``rollup_ways`` (issue 18): + the way its attempts went (``extractions.via``: live, batch or
  mixed) -> documents, valid ones, cost (``unpriced`` apart), and what the same attempts cost or
  would have cost live (``live_cost``; ``live_unpriced`` counts the documents where that is
  unknown): cost per valid extraction by way, and the Batch API's saving.

Each table has a daily twin (``*_daily``, the same sums per day; in ``rollup_attempts_daily`` the
started hour is the first hour of the day), so a report over months reads days, and hours only on
the days at its edges.

Superseded extractions are *moved*, not deleted: when a newer final extraction of the same document
and chain is recorded, the older one's sums are subtracted under its old key and added under its
new ``gone`` (and ``gone_run`` when the new one is of the same run), in the same transaction. So
every report scope the report knows is a set of whole rows, up to the hours at its edges:

- the current view (unfiltered, ``--since``, ``--schema``, ``--config``): ``gone = NOT_GONE``;
- ``--until U``: created before U, and ``gone`` at or after U (the latest extraction as of U);
- ``--run R`` (with or without a time window): ``run = R`` and ``gone_run`` at or after U: what R
  did, even where a later run extracted the same documents again.

The report reads the hours at the edges of its scope (and of its drift windows, and the first and
last hours of each tier) from the plain tables, exactly, and every other hour from here.
This assumes what every write through ``Ledger.record`` guarantees: of one document and chain, a
later extraction (higher id) is not created earlier.

Writes that bypass ``Ledger.record`` (bulk SQL, hand edits) must call ``rebuild``. ``rebuild``
recomputes every row from the plain tables (also the backfill: the 0007_rollups migration leaves
``rollup_state.built = 0`` and the first report builds the rollups, once, see ``ensure``).
Concurrent writers (PostgreSQL): ``apply`` takes ``rollup_state``'s row FOR SHARE, ``rebuild`` FOR
UPDATE, so a rebuild never misses or double-counts a write; rows are upserted in key order, so two
writers lock shared rows in the same order (no deadlock).
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._results import FIELD_ERROR_OUTCOMES
from ._queries import outcomes_in

HOUR = 3600
NOT_GONE = 1 << 40  # the "gone" hour of an extraction still current (later than any real hour)
NO_HOUR = -1  # the started hour of an attempt without started_at
# Latency buckets: bucket b holds values in [RATIO**b, RATIO**(b+1)); a bucket's representative
# is the mean of the values in it (its sum over its count), so a percentile read from buckets is
# within a factor RATIO of the value a full scan reads (under 5 % off), and exact wherever the
# values in a bucket are equal. Values <= 0 share bucket ZERO_BUCKET.
RATIO = 1.05
_LOG_RATIO = math.log(RATIO)
ZERO_BUCKET = -(1 << 20)

FINAL = ("ok", "failed")
FIELD_OUTCOMES = frozenset(o.value for o in FIELD_ERROR_OUTCOMES)
BASE = ("hour", "run", "config", "schema", "gone", "gone_run")
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # table -> (key, sums), in lock order
    "rollup_documents": (BASE + ("status", "tier", "outcome"),
                         ("n", "cost", "unpriced", "prompt_tokens", "completion_tokens")),
    "rollup_attempts": (BASE + ("ahour", "tier", "outcome", "model"),
                        ("n", "first", "reasks", "retries", "cost", "priced", "prompt_tokens",
                         "completion_tokens", "own", "cost_sq")),
    "rollup_latency": (BASE + ("tier", "bucket"), ("n", "total")),
    "rollup_fields": (BASE + ("tier", "outcome", "loc", "ungrounded"), ("n",)),
    "rollup_ways": (BASE + ("via",), ("n", "ok", "cost", "unpriced", "live_cost", "live_unpriced")),
}  # fmt: skip
ROLLUPS_0007 = ("rollup_documents", "rollup_attempts", "rollup_latency", "rollup_fields")  # its tables
# Each table has a daily twin (``_daily``): the same rows summed per day (``hour`` holds the day's first
# hour; in ``rollup_attempts_daily`` ``ahour`` is the first hour of the day the attempt started), so a
# report reads whole days from the twins and only the days at its edges hour by hour.
DAILY = "_daily"
DAY_HOURS = 24
ALL_TABLES = [*TABLES, *(t + DAILY for t in TABLES)]  # the lock order


def spec(table: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A table's (key, sums), a daily twin's as its table's."""
    return TABLES[table.removesuffix(DAILY)]


_TEXT = {"run", "config", "schema", "status", "tier", "outcome", "model", "loc", "via"}
_REAL = {"cost", "cost_sq", "own", "total", "live_cost"}


def _tables(names: Sequence[str], int_type: str, real_type: str) -> list[str]:
    """``CREATE TABLE`` of these rollup tables and their daily twins."""
    out = []
    for table in [*names, *(t + DAILY for t in names)]:
        key, sums = spec(table)
        cols = [f"{c} {'TEXT' if c in _TEXT else int_type} NOT NULL" for c in key]
        cols += [f"{c} {real_type if c in _REAL else int_type} NOT NULL DEFAULT 0" for c in sums]
        out.append(f"CREATE TABLE {table} (\n    {', '.join(cols)},\n    PRIMARY KEY ({', '.join(key)}))")
    return out


def ddl(int_type: str = "INTEGER", real_type: str = "REAL") -> str:
    """The 0007_rollups migration, in SQLite's dialect (``_dialect`` writes it for PostgreSQL);
    integers BIGINT (``NOT_GONE`` needs 64 bits). Also an index that keeps the report's count of
    unreadable documents bounded. Its tables as they shipped (``ROLLUPS_0007``): later ones come
    with their own migrations."""
    out = _tables(ROLLUPS_0007, int_type, real_type)
    out.append(f"CREATE TABLE rollup_state (id {int_type} PRIMARY KEY, built {int_type} NOT NULL)")
    # a ledger with extractions already is built by its first report (``ensure``); a new one is built
    out.append(
        "INSERT INTO rollup_state (id, built)"
        " SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM extractions) THEN 0 ELSE 1 END"
    )
    out.append("CREATE INDEX extractions_errors ON extractions(created_at) WHERE status = 'error'")
    return ";\n".join(out) + ";\n"


MIGRATION = ("0007_rollups", ddl("BIGINT"))  # both engines (REAL is DOUBLE PRECISION on PostgreSQL)

# rollup_ways (issue 18, part of its migration): every extraction written before was live, so the
# new tables are filled from rollup_documents (and its twin) as a rebuild would fill them; where the
# rollups were never built (``rollup_state.built = 0``) the first report's rebuild fills them all.
_WAYS_FROM_DOCUMENTS = """
INSERT INTO {ways} (hour, run, config, schema, gone, gone_run, via, n, ok, cost, unpriced, live_cost,
                    live_unpriced)
SELECT hour, run, config, schema, gone, gone_run, 'live', SUM(n),
       SUM(CASE WHEN status = 'ok' THEN n ELSE 0 END), SUM(cost), SUM(unpriced), SUM(cost), SUM(unpriced)
FROM {documents} GROUP BY hour, run, config, schema, gone, gone_run HAVING SUM(n) != 0"""
WAYS = ";\n".join([
    *_tables(["rollup_ways"], "BIGINT", "REAL"),
    _WAYS_FROM_DOCUMENTS.format(ways="rollup_ways", documents="rollup_documents"),
    _WAYS_FROM_DOCUMENTS.format(ways="rollup_ways" + DAILY, documents="rollup_documents" + DAILY),
]) + ";\n"  # fmt: skip


def hour_of(t: float | None) -> int:
    return NO_HOUR if t is None else int(t // HOUR)


def bucket(x: float) -> int:
    """The latency bucket of ``x`` seconds (see ``RATIO``)."""
    if not x > 0:
        return ZERO_BUCKET
    b = math.floor(math.log(x) / _LOG_RATIO)
    # log() rounds: keep RATIO**b <= x < RATIO**(b+1) exact at the edges
    if RATIO**b > x:
        b -= 1
    elif RATIO ** (b + 1) <= x:
        b += 1
    return b


def loc_text(loc: Any) -> str:
    """A Pydantic error's ``loc`` as stored: its JSON text (compact)."""
    return json.dumps(loc, ensure_ascii=False, separators=(",", ":"))


def loc_value(text: str) -> Any:
    """``loc_text`` back to what SQLite's ``json_extract(error, '$.loc')`` returns (the form the
    report's field names are made from): text for a string, compact JSON for a list or object."""
    v = json.loads(text)
    if isinstance(v, bool):
        return int(v)
    return text if isinstance(v, (list, dict)) else v


def json_value(v: Any) -> Any:
    """A JSON value as SQLite's ``json_extract`` returns it (for a rejected ``input``)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return v


def field_errors(errors_json: str | None) -> list[dict[str, Any]]:
    """The objects of an attempt's ``errors_json`` (what ``json_each`` yields that is an object)."""
    if not errors_json:
        return []
    try:
        errors = json.loads(errors_json)
    except ValueError:
        return []
    items = errors if isinstance(errors, list) else list(errors.values()) if isinstance(errors, dict) else []
    return [x for x in items if isinstance(x, dict)]


# -- contributions ----------------------------------------------------------------------------
class Sums:
    """Rollup rows being summed: table -> key -> sums (a delta to upsert, or rows to insert)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple[Any, ...], list[float]]] = {t: {} for t in ALL_TABLES}

    def add(self, table: str, key: tuple[Any, ...], values: Sequence[float], sign: int = 1) -> None:
        day = key[0] // DAY_HOURS * DAY_HOURS
        if table == "rollup_attempts":
            ahour = key[6] // DAY_HOURS * DAY_HOURS if key[6] >= 0 else NO_HOUR
            daily = (day, *key[1:6], ahour, *key[7:])
        else:
            daily = (day, *key[1:])
        for t, k in ((table, key), (table + DAILY, daily)):
            row = self.rows[t].get(k)
            if row is None:
                self.rows[t][k] = [sign * v for v in values]
            else:
                for i, v in enumerate(values):
                    row[i] += sign * v

    def extraction(self, e: Mapping[str, Any], base: tuple[Any, ...], sign: int = 1) -> None:
        cost = e["cost_usd"]
        self.add("rollup_documents", base + (e["status"], e["tier"] or "", e["outcome"] or ""),
                 (1, cost or 0.0, cost is None, e["prompt_tokens"] or 0, e["completion_tokens"] or 0),
                 sign)  # fmt: skip
        if e["latency_s"] is not None:
            self.add("rollup_latency", base + ("", bucket(e["latency_s"])), (1, e["latency_s"]), sign)
        via = e["via"] or "live"
        live = cost if via == "live" else e["live_cost_usd"]  # live: what it cost is what it costs live
        self.add("rollup_ways", base + (via,),
                 (1, e["status"] == "ok", cost or 0.0, cost is None, live or 0.0, live is None),
                 sign)  # fmt: skip

    def attempt(self, a: Mapping[str, Any], base: tuple[Any, ...], sign: int = 1) -> None:
        cost, tier, outcome = a["cost_usd"], a["tier"], a["outcome"]
        c = cost or 0.0
        follows = a["follows"]
        self.add("rollup_attempts", base + (hour_of(a["started_at"]), tier, outcome, a["model"]),
                 (1, a["number"] == 1, follows == "reask", follows == "retry", c, cost is not None,
                  a["prompt_tokens"] or 0, a["completion_tokens"] or 0, c if a["won"] == 1 else 0.0, c * c),
                 sign)  # fmt: skip
        if a["latency_s"] is not None:
            self.add("rollup_latency", base + (tier, bucket(a["latency_s"])), (1, a["latency_s"]), sign)
        if outcome in FIELD_OUTCOMES:
            for err in field_errors(a["errors_json"]):
                key = base + (tier, outcome, loc_text(err.get("loc")), int(err.get("type") == "ungrounded"))
                self.add("rollup_fields", key, (1,), sign)

    def upsert(self, c: Any) -> None:
        """Add these sums to the tables (``INSERT ... ON CONFLICT DO UPDATE``, both engines), in
        table and key order; rows whose sums cancelled out are skipped."""
        for table in ALL_TABLES:
            rows = [k + tuple(v) for k, v in sorted(self.rows[table].items()) if any(v)]
            if rows:
                c.executemany(upsert_sql(table), rows)

    def insert(self, c: Any) -> None:
        for table in ALL_TABLES:
            key, sums = spec(table)
            cols = key + sums
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            items = self.rows[table].items()
            rows = [k + tuple(v) for k, v in items if v[0]]
            for i in range(0, len(rows), 50_000):
                c.executemany(sql, rows[i : i + 50_000])


@functools.cache
def upsert_sql(table: str) -> str:
    key, sums = spec(table)
    cols = key + sums
    sets = ", ".join(f"{s} = {table}.{s} + excluded.{s}" for s in sums)
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")  # fmt: skip


EXTRACTION_COLUMNS = ("id, run_id, document_sha256, schema_hash, config_hash, status, tier, outcome,"
                      " cost_usd,"
                      " prompt_tokens, completion_tokens, latency_s, created_at, forced_tier, via,"
                      " live_cost_usd")  # fmt: skip
ATTEMPT_COLUMNS = ("a.extraction_id, a.tier, a.outcome, a.model, a.number, a.follows, a.cost_usd,"
                   " a.prompt_tokens,"
                   " a.completion_tokens, a.won, a.latency_s, a.started_at,"
                   f" CASE WHEN a.outcome IN {outcomes_in(FIELD_ERROR_OUTCOMES)} THEN a.errors_json END"
                   " AS errors_json")  # fmt: skip

CHAIN = (f"SELECT {EXTRACTION_COLUMNS} FROM extractions WHERE document_sha256 = ? AND schema_hash = ?"
         " AND config_hash = ? AND forced_tier IS NULL AND status IN ('ok', 'failed')"
         " ORDER BY id")  # fmt: skip


def states(chain: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """Each extraction of one document and chain (in id order) -> its (gone, gone_run)."""
    out: dict[str, tuple[int, int]] = {}
    after: float | None = None
    after_in_run: dict[str, float] = {}
    for e in reversed(chain):
        run = e["run_id"] or ""
        nxt_run = after_in_run.get(run)
        out[e["id"]] = (NOT_GONE if after is None else hour_of(after),
                        NOT_GONE if nxt_run is None else hour_of(nxt_run))  # fmt: skip
        after = after_in_run[run] = e["created_at"]
    return out


def base_key(e: Mapping[str, Any], state: tuple[int, int]) -> tuple[Any, ...]:
    return (hour_of(e["created_at"]), e["run_id"] or "", e["config_hash"], e["schema_hash"], *state)


def _lock(c: Any, engine: str, exclusive: bool) -> None:
    if engine == "postgresql":  # SQLite's BEGIN IMMEDIATE already serialises every write
        c.execute(f"SELECT built FROM rollup_state WHERE id = 1 FOR {'UPDATE' if exclusive else 'SHARE'}")


# The rows ``Ledger.record`` inserts, in the order of its INSERTs' columns (``written``)
WRITTEN_EXTRACTION = ("id", "run_id", "document_sha256", "path", "schema_hash", "config_hash", "status",
                      "tier", "outcome", "value_json", "error", "n_attempts", "prompt_tokens",
                      "completion_tokens", "cost_usd", "latency_s", "created_at", "forced_tier", "via",
                      "live_cost_usd")  # fmt: skip
WRITTEN_ATTEMPT = ("id", "extraction_id", "run_id", "tier", "model", "number", "outcome", "error",
                   "errors_json", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd",
                   "latency_s", "started_at", "finish_reason", "status_code", "prompt_hash", "schema_hash",
                   "output", "follows", "won", "current", "served_model", "fingerprint", "via",
                   "live_cost_usd")  # fmt: skip


def apply(
    c: Any,
    extraction_id: str,
    engine: str = "sqlite",
    *,
    written: tuple[Sequence[Any], Sequence[Sequence[Any]]] | None = None,
    superseded: Sequence[str] | None = None,
) -> None:
    """Add one newly written extraction to the rollups, and move the earlier extractions of its
    document and chain it supersedes (the whole ledger's, and its run's): call inside the
    transaction that wrote it, after the write (``Ledger.record``).

    ``written``: the extraction's row and its attempts' rows as just inserted (columns
    ``WRITTEN_EXTRACTION`` and ``WRITTEN_ATTEMPT``), so they are not read back; ``superseded``: the
    ids of the extractions this one superseded (none: it is the first final extraction of its
    document and chain, so there is no chain to read). Without them, both are read."""
    if written is not None:
        e: Mapping[str, Any] = dict(zip(WRITTEN_EXTRACTION, written[0], strict=True))
    else:
        sql = f"SELECT {EXTRACTION_COLUMNS} FROM extractions WHERE id = ?"
        rows = c.execute(sql, (extraction_id,)).fetchall()
        if not rows:
            return
        e = rows[0]
    if e["forced_tier"] is not None or e["status"] not in FINAL:
        return
    _lock(c, engine, exclusive=False)
    sums = Sums()
    if written is not None and superseded is not None and not superseded:
        # the first final extraction of its document and chain (each one supersedes the current one,
        # so an earlier one would have been current): only its own sums, under the current key
        base = base_key(e, (NOT_GONE, NOT_GONE))
        sums.extraction(e, base)
        for row in written[1]:
            a = dict(zip(WRITTEN_ATTEMPT, row, strict=True))
            if a["outcome"] not in FIELD_OUTCOMES:
                a["errors_json"] = None  # as ATTEMPT_COLUMNS reads it
            sums.attempt(a, base)
    else:
        chain = c.execute(CHAIN, (e["document_sha256"], e["schema_hash"], e["config_hash"])).fetchall()
        before = states([x for x in chain if x["id"] != extraction_id])
        after = states(chain)
        for x in chain:
            old, new = before.get(x["id"]), after[x["id"]]
            if old == new:
                continue
            attempts = c.execute(f"SELECT {ATTEMPT_COLUMNS} FROM attempts a WHERE a.extraction_id = ?",
                                 (x["id"],)).fetchall()  # fmt: skip
            for state, sign in ((old, -1), (new, 1)):
                if state is None:
                    continue
                base = base_key(x, state)
                sums.extraction(x, base, sign)
                for a in attempts:
                    sums.attempt(a, base, sign)
    try:
        sums.upsert(c)
    except sqlite3.OperationalError as exc:  # a ledger opened by code without 0007_rollups: its
        if "no such table: rollup_" not in str(exc):  # rollups are built when it gains them
            raise


BATCH = 20_000  # extractions read per step of a rebuild


def rebuild(ledger: Any) -> None:
    """Recompute every rollup from the plain tables, in one transaction (the backfill of ledgers
    written before 0007_rollups, and the repair after writes that bypassed ``Ledger.record``).
    Reads the ledger once, in steps of BATCH extractions; a minute or so per 10,000,000 attempts."""
    engine = getattr(ledger, "engine", "sqlite")
    with ledger.transaction() as c:
        _lock(c, engine, exclusive=True)
        for table in ALL_TABLES:
            c.execute(f"DELETE FROM {table}")
        moved: dict[str, tuple[int, int]] = {}
        keys = c.execute(
            "SELECT DISTINCT document_sha256, schema_hash, config_hash FROM extractions"
            " WHERE superseded_by IS NOT NULL AND forced_tier IS NULL AND status IN ('ok', 'failed')"
        ).fetchall()
        for k in keys:
            moved.update(states(c.execute(CHAIN, (k[0], k[1], k[2])).fetchall()))
        current = (NOT_GONE, NOT_GONE)
        sums = Sums()
        last = ""
        while True:
            exts = c.execute(
                f"SELECT {EXTRACTION_COLUMNS} FROM extractions WHERE id > ? AND forced_tier IS NULL"
                " AND status IN ('ok', 'failed') ORDER BY id LIMIT ?", (last, BATCH),
            ).fetchall()  # fmt: skip
            if not exts:
                break
            bases = {}
            for e in exts:
                base = bases[e["id"]] = base_key(e, moved.get(e["id"], current))
                sums.extraction(e, base)
            hi = exts[-1]["id"]
            for a in c.execute(
                f"SELECT {ATTEMPT_COLUMNS} FROM extractions e JOIN attempts a ON a.extraction_id = e.id"
                " WHERE e.id > ? AND e.id <= ? AND e.forced_tier IS NULL AND e.status IN ('ok', 'failed')",
                (last, hi),
            ):  # fmt: skip
                sums.attempt(a, bases[a["extraction_id"]])
            last = hi
        sums.insert(c)
        c.execute("UPDATE rollup_state SET built = 1 WHERE id = 1")


def built(ledger: Any) -> bool:
    rows = ledger.query("SELECT built FROM rollup_state WHERE id = 1")
    return bool(rows and rows[0]["built"])


def ensure(ledger: Any) -> bool:
    """Build the rollups if they have never been built (the backfill of a ledger that has just
    gained them); True when this call built them."""
    if built(ledger):
        return False
    rebuild(ledger)
    return True


def in_list(values: Iterable[Any]) -> str:
    """An SQL list of integers, written into the statement (hours: never user input)."""
    return "(" + ", ".join(str(int(v)) for v in values) + ")"
