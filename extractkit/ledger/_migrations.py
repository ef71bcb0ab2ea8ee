"""Named, forward-only migrations, applied in order when a ledger is opened: one list per engine.

Never edit or reorder a migration that has shipped: add a new one, to BOTH lists, under the same
name (``MIGRATIONS`` for SQLite, ``PG_MIGRATIONS`` for PostgreSQL). Both are written in SQLite's
DDL; on PostgreSQL each passes ``_dialect.ddl_to_postgres`` (``REAL`` -> ``DOUBLE PRECISION``,
``BLOB`` -> ``BYTEA``, ``a IS b`` -> ``IS NOT DISTINCT FROM``, ...). A migration whose SQL is the same
on both engines is one constant added to both lists (as ``0006_current_unique``). PostgreSQL's list
starts with the whole schema as SQLite has it after ``0005_document_paths``, in one migration.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from . import _rollups
from ._dialect import ddl_to_postgres
from ._limits import SHARED_LIMITS, SHARED_LIMITS_PG
from ._queue import WORK_QUEUE
from ._waves import ATTEMPT_VIA, BATCH_WAVES

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,                 -- batch | library | eval
            config_hash TEXT,
            config_json TEXT,
            schema_hash TEXT,
            extractkit_version TEXT,
            started_at REAL NOT NULL,
            ended_at REAL,
            status TEXT NOT NULL,               -- running | done | interrupted | failed
            n_documents INTEGER DEFAULT 0,
            n_ok INTEGER DEFAULT 0,
            n_failed INTEGER DEFAULT 0,
            n_errors INTEGER DEFAULT 0,
            n_skipped INTEGER DEFAULT 0,
            n_resumed INTEGER DEFAULT 0
        );
        CREATE TABLE documents (
            sha256 TEXT PRIMARY KEY,            -- of the extracted text (UTF-8)
            path TEXT,                          -- where it was last seen
            size INTEGER,                       -- bytes of the source file
            type TEXT,                          -- txt | md | json | html | pdf | text
            text TEXT,                          -- NULL when store_text is off
            first_seen REAL NOT NULL
        );
        CREATE TABLE schemas (
            hash TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            json TEXT NOT NULL
        );
        CREATE TABLE prompts (
            hash TEXT PRIMARY KEY,
            origin TEXT,
            source TEXT NOT NULL
        );
        CREATE TABLE extractions (
            id TEXT PRIMARY KEY,                -- sorts by time
            run_id TEXT REFERENCES runs(id),
            document_sha256 TEXT,               -- NULL when the document could not be read
            path TEXT,
            schema_hash TEXT NOT NULL,
            config_hash TEXT NOT NULL,
            status TEXT NOT NULL,               -- ok | failed | error (document unreadable)
            tier TEXT,                          -- winning tier, NULL unless ok
            outcome TEXT,                       -- ok, or the last failure outcome / error kind
            value_json TEXT,
            error TEXT,
            n_attempts INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,                      -- NULL when some price was unknown
            latency_s REAL,
            created_at REAL NOT NULL
        );
        CREATE INDEX extractions_resume
            ON extractions(document_sha256, schema_hash, config_hash, status);
        CREATE INDEX extractions_run ON extractions(run_id);
        CREATE TABLE attempts (
            id TEXT PRIMARY KEY,
            extraction_id TEXT NOT NULL REFERENCES extractions(id),
            run_id TEXT,
            tier TEXT NOT NULL,
            model TEXT NOT NULL,
            number INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT,
            errors_json TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            latency_s REAL,
            started_at REAL,
            finish_reason TEXT,
            status_code INTEGER,
            prompt_hash TEXT,
            schema_hash TEXT,
            output TEXT
        );
        CREATE INDEX attempts_extraction ON attempts(extraction_id);
        CREATE INDEX attempts_tier ON attempts(tier, outcome);
        """,
    ),
    # 0002's backfill of `follows` writes the outcome categories out as they were when it shipped
    # (validation: invalid_json, schema_invalid, ungrounded; transient: rate_limited, api_error,
    # timeout), on purpose: a migration is history, it classifies the rows that existed then and
    # must not follow extractkit._results.VALIDATION_OUTCOMES / TRANSIENT_OUTCOMES when they change
    # (connection_error came later: no ledger without 0002 holds one). Live code uses the
    # categories (ledger._ledger._follows); tests/test_outcome_categories.py checks both.
    (
        "0002_eval",
        """
        ALTER TABLE extractions ADD COLUMN forced_tier TEXT;  -- set when one tier ran alone (eval)
        CREATE INDEX extractions_forced
            ON extractions(document_sha256, schema_hash, config_hash, forced_tier, status);
        DROP INDEX extractions_resume;          -- extractions_forced serves the resume lookup too
        ALTER TABLE attempts ADD COLUMN follows TEXT;  -- NULL: a tier's first try; reask | retry
        UPDATE attempts SET follows = (
            SELECT CASE WHEN p.outcome IN ('invalid_json', 'schema_invalid', 'ungrounded') THEN 'reask'
                        WHEN p.outcome IN ('rate_limited', 'api_error', 'timeout') THEN 'retry' END
            FROM attempts p WHERE p.extraction_id = attempts.extraction_id AND p.tier = attempts.tier
              AND p.number = attempts.number - 1
        ) WHERE number > 1;
        -- the latest final extraction of a document by a chain is the "current" one; reports read
        -- these flags, kept up to date by every write, instead of grouping to find it
        ALTER TABLE extractions ADD COLUMN superseded_by TEXT;  -- a newer final extraction of the same
        ALTER TABLE attempts ADD COLUMN won INTEGER;      -- 1: this attempt's tier resolved the document
        ALTER TABLE attempts ADD COLUMN current INTEGER;  -- 1: its extraction is current and not eval's
        UPDATE extractions SET superseded_by = (
            SELECT MAX(t.id) FROM extractions t
            WHERE t.document_sha256 = extractions.document_sha256 AND t.schema_hash = extractions.schema_hash
              AND t.config_hash = extractions.config_hash AND t.forced_tier IS extractions.forced_tier
              AND t.status IN ('ok', 'failed') AND t.id > extractions.id
        ) WHERE status IN ('ok', 'failed');
        UPDATE attempts SET
            won = (SELECT COALESCE(e.tier = attempts.tier, 0) FROM extractions e
                   WHERE e.id = attempts.extraction_id),
            current = (SELECT e.superseded_by IS NULL AND e.forced_tier IS NULL
                              AND e.status IN ('ok', 'failed')
                       FROM extractions e WHERE e.id = attempts.extraction_id);
        CREATE INDEX extractions_created ON extractions(created_at);
        ALTER TABLE attempts ADD COLUMN served_model TEXT;  -- what the provider says answered
        ALTER TABLE attempts ADD COLUMN fingerprint TEXT;
        CREATE TABLE served_models (            -- each model seen behind a tier's configured name
            tier TEXT NOT NULL,
            model TEXT NOT NULL,                -- as configured
            served_model TEXT NOT NULL,         -- as the provider answered
            fingerprint TEXT NOT NULL,          -- '' when the provider sent none
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,           -- refreshed at most once a minute per writer
            PRIMARY KEY (tier, model, served_model, fingerprint)
        );
        CREATE TABLE eval_items (
            run_id TEXT NOT NULL REFERENCES runs(id),
            gold_id TEXT NOT NULL,              -- line number or the gold line's "id"
            document_sha256 TEXT,               -- NULL when the document could not be read
            path TEXT,
            expected_json TEXT NOT NULL,
            PRIMARY KEY (run_id, gold_id)
        );
        CREATE INDEX eval_items_document ON eval_items(document_sha256);
        CREATE TABLE eval_results (             -- which extraction answered each gold item per tier
            run_id TEXT NOT NULL REFERENCES runs(id),
            gold_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            extraction_id TEXT NOT NULL REFERENCES extractions(id),
            reused INTEGER NOT NULL DEFAULT 0,  -- 1 when taken from an earlier eval (not paid again)
            PRIMARY KEY (run_id, gold_id, tier)
        );
        CREATE TABLE eval_scores (
            run_id TEXT NOT NULL REFERENCES runs(id),
            gold_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            extraction_id TEXT REFERENCES extractions(id),
            field TEXT NOT NULL,                -- dotted path; list items as lines[].name
            expected_json TEXT,
            got_json TEXT,
            result TEXT NOT NULL                -- tp | tn | fp | fn | wrong (counts as fp and fn)
        );
        CREATE INDEX eval_scores_run ON eval_scores(run_id, tier, field);
        """,
    ),
    (
        "0003_finetune_jobs",
        """
        CREATE TABLE finetune_jobs (
            id TEXT PRIMARY KEY,                -- the provider's job id (ftjob-...)
            created_at REAL NOT NULL,
            updated_at REAL,
            base_url TEXT,                      -- the provider's API base (no credentials)
            base_model TEXT NOT NULL,
            suffix TEXT,
            seed INTEGER,
            n_epochs INTEGER,
            training_file TEXT,                 -- provider file ids
            validation_file TEXT,
            manifest_json TEXT,                 -- the export behind it: counts, filters, hashes
            status TEXT NOT NULL,               -- queued, running, succeeded, failed, cancelled, ...
            fine_tuned_model TEXT,
            trained_tokens INTEGER,
            error TEXT
        );
        CREATE TABLE finetune_events (
            id TEXT PRIMARY KEY,                -- the provider's event id
            job_id TEXT NOT NULL REFERENCES finetune_jobs(id),
            created_at REAL,
            level TEXT,
            message TEXT
        );
        CREATE INDEX finetune_events_job ON finetune_events(job_id, created_at);
        """,
    ),
    (
        "0004_run_owner",
        """
        -- the process that started a run, so that a run whose process died (kill -9, power loss)
        -- is marked interrupted when the ledger is next opened on the same host
        ALTER TABLE runs ADD COLUMN owner_pid INTEGER;
        ALTER TABLE runs ADD COLUMN owner_host TEXT;   -- socket.gethostname()
        ALTER TABLE runs ADD COLUMN owner_start TEXT;  -- when that process started (a reused pid differs)
        CREATE INDEX runs_running ON runs(owner_host) WHERE status = 'running';
        """,
    ),
    (
        "0005_document_paths",
        """
        CREATE TABLE document_paths (           -- every path a document's content was seen at
            document_sha256 TEXT NOT NULL,
            path TEXT NOT NULL,                 -- readable: UTF-8, other bytes written \\xNN
            path_bytes BLOB NOT NULL,           -- the exact bytes of the path (os.fsencode)
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            run_id TEXT,                        -- the last run that saw it there
            PRIMARY KEY (document_sha256, path_bytes)
        );
        CREATE INDEX document_paths_path ON document_paths(path);
        """,
    ),
]


# One current final extraction per (document, schema, chain config, forced tier), enforced by the
# database: a partial unique index. Ledgers written before it are first put right (an older current
# row that a newer one should have superseded is marked so; its attempts stop counting as current).
CURRENT_UNIQUE = """
        UPDATE extractions SET superseded_by = (
            SELECT MAX(t.id) FROM extractions t
            WHERE t.document_sha256 = extractions.document_sha256 AND t.schema_hash = extractions.schema_hash
              AND t.config_hash = extractions.config_hash AND t.forced_tier IS extractions.forced_tier
              AND t.status IN ('ok', 'failed') AND t.superseded_by IS NULL AND t.id > extractions.id
        ) WHERE status IN ('ok', 'failed') AND superseded_by IS NULL AND EXISTS (
            SELECT 1 FROM extractions t
            WHERE t.document_sha256 = extractions.document_sha256 AND t.schema_hash = extractions.schema_hash
              AND t.config_hash = extractions.config_hash AND t.forced_tier IS extractions.forced_tier
              AND t.status IN ('ok', 'failed') AND t.superseded_by IS NULL AND t.id > extractions.id
        );
        UPDATE attempts SET current = 0 WHERE current = 1 AND extraction_id IN (
            SELECT id FROM extractions WHERE superseded_by IS NOT NULL);
        CREATE UNIQUE INDEX extractions_current
            ON extractions(document_sha256, schema_hash, config_hash, COALESCE(forced_tier, ''))
            WHERE status IN ('ok', 'failed') AND superseded_by IS NULL;
"""
MIGRATIONS.append(("0006_current_unique", CURRENT_UNIQUE))
MIGRATIONS.append(_rollups.MIGRATION)  # the report's sums per hour and day (see _rollups)
# The shared work queue (ledger/_queue.py) is PostgreSQL's alone (claims with FOR UPDATE SKIP LOCKED,
# leases on the database's clock): on SQLite the name is recorded, so both lists name the same steps.
MIGRATIONS.append(("0008_work_queue", "-- PostgreSQL only: see ledger/_queue.py"))
MIGRATIONS.append(("0009_shared_limits", SHARED_LIMITS))  # see _limits

# PostgreSQL: the schema as SQLite has it after 0005 (every table, column and index), then the same
# named migrations as SQLite from 0006 on.
PG_INITIAL = """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            config_hash TEXT,
            config_json TEXT,
            schema_hash TEXT,
            extractkit_version TEXT,
            started_at REAL NOT NULL,
            ended_at REAL,
            status TEXT NOT NULL,
            n_documents INTEGER DEFAULT 0,
            n_ok INTEGER DEFAULT 0,
            n_failed INTEGER DEFAULT 0,
            n_errors INTEGER DEFAULT 0,
            n_skipped INTEGER DEFAULT 0,
            n_resumed INTEGER DEFAULT 0,
            owner_pid INTEGER,
            owner_host TEXT,
            owner_start TEXT
        );
        CREATE INDEX runs_running ON runs(owner_host) WHERE status = 'running';
        CREATE TABLE documents (
            sha256 TEXT PRIMARY KEY,
            path TEXT,
            size BIGINT,
            type TEXT,
            text TEXT,
            first_seen REAL NOT NULL
        );
        CREATE TABLE schemas (
            hash TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            json TEXT NOT NULL
        );
        CREATE TABLE prompts (
            hash TEXT PRIMARY KEY,
            origin TEXT,
            source TEXT NOT NULL
        );
        CREATE TABLE extractions (
            id TEXT PRIMARY KEY,
            run_id TEXT REFERENCES runs(id),
            document_sha256 TEXT,
            path TEXT,
            schema_hash TEXT NOT NULL,
            config_hash TEXT NOT NULL,
            status TEXT NOT NULL,
            tier TEXT,
            outcome TEXT,
            value_json TEXT,
            error TEXT,
            n_attempts INTEGER NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            cost_usd REAL,
            latency_s REAL,
            created_at REAL NOT NULL,
            forced_tier TEXT,
            superseded_by TEXT
        );
        CREATE INDEX extractions_run ON extractions(run_id);
        CREATE INDEX extractions_forced
            ON extractions(document_sha256, schema_hash, config_hash, forced_tier, status);
        CREATE INDEX extractions_created ON extractions(created_at);
        CREATE TABLE attempts (
            id TEXT PRIMARY KEY,
            extraction_id TEXT NOT NULL REFERENCES extractions(id),
            run_id TEXT,
            tier TEXT NOT NULL,
            model TEXT NOT NULL,
            number INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            error TEXT,
            errors_json TEXT,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            cached_tokens BIGINT NOT NULL DEFAULT 0,
            cost_usd REAL,
            latency_s REAL,
            started_at REAL,
            finish_reason TEXT,
            status_code INTEGER,
            prompt_hash TEXT,
            schema_hash TEXT,
            output TEXT,
            follows TEXT,
            won INTEGER,
            current INTEGER,
            served_model TEXT,
            fingerprint TEXT
        );
        CREATE INDEX attempts_extraction ON attempts(extraction_id);
        CREATE INDEX attempts_tier ON attempts(tier, outcome);
        CREATE TABLE served_models (
            tier TEXT NOT NULL,
            model TEXT NOT NULL,
            served_model TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            PRIMARY KEY (tier, model, served_model, fingerprint)
        );
        CREATE TABLE eval_items (
            run_id TEXT NOT NULL REFERENCES runs(id),
            gold_id TEXT NOT NULL,
            document_sha256 TEXT,
            path TEXT,
            expected_json TEXT NOT NULL,
            PRIMARY KEY (run_id, gold_id)
        );
        CREATE INDEX eval_items_document ON eval_items(document_sha256);
        CREATE TABLE eval_results (
            run_id TEXT NOT NULL REFERENCES runs(id),
            gold_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            extraction_id TEXT NOT NULL REFERENCES extractions(id),
            reused INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run_id, gold_id, tier)
        );
        CREATE TABLE eval_scores (
            run_id TEXT NOT NULL REFERENCES runs(id),
            gold_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            extraction_id TEXT REFERENCES extractions(id),
            field TEXT NOT NULL,
            expected_json TEXT,
            got_json TEXT,
            result TEXT NOT NULL
        );
        CREATE INDEX eval_scores_run ON eval_scores(run_id, tier, field);
        CREATE TABLE finetune_jobs (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            updated_at REAL,
            base_url TEXT,
            base_model TEXT NOT NULL,
            suffix TEXT,
            seed BIGINT,
            n_epochs INTEGER,
            training_file TEXT,
            validation_file TEXT,
            manifest_json TEXT,
            status TEXT NOT NULL,
            fine_tuned_model TEXT,
            trained_tokens BIGINT,
            error TEXT
        );
        CREATE TABLE finetune_events (
            id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES finetune_jobs(id),
            created_at REAL,
            level TEXT,
            message TEXT
        );
        CREATE INDEX finetune_events_job ON finetune_events(job_id, created_at);
        CREATE TABLE document_paths (
            document_sha256 TEXT NOT NULL,
            path TEXT NOT NULL,
            path_bytes BLOB NOT NULL,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            run_id TEXT,
            PRIMARY KEY (document_sha256, path_bytes)
        );
        CREATE INDEX document_paths_path ON document_paths(path);
"""

# The order of a run's gold items and of their field scores, as written (the gold file's order),
# on both engines: SQLite read it from rowid, which PostgreSQL does not have. `seq` is a new_id()
# (it sorts by time); rows written before keep their rowid order, ahead of any later row.
EVAL_ORDER = """
        ALTER TABLE eval_items ADD COLUMN seq TEXT;
        ALTER TABLE eval_scores ADD COLUMN seq TEXT;
"""
EVAL_ORDER_SQLITE = EVAL_ORDER + """
        UPDATE eval_items SET seq = printf('%028d', rowid);
        UPDATE eval_scores SET seq = printf('%028d', rowid);
"""
MIGRATIONS.append(("0010_eval_order", EVAL_ORDER_SQLITE))

PG_MIGRATIONS: list[tuple[str, str]] = [
    ("0001_initial", PG_INITIAL),
    ("0006_current_unique", CURRENT_UNIQUE),
    _rollups.MIGRATION,
    ("0008_work_queue", WORK_QUEUE),
    ("0009_shared_limits", SHARED_LIMITS_PG),
    ("0010_eval_order", EVAL_ORDER),
]

# The Batch API's waves (ledger/_waves.py): jobs, items and the constraints that make a wave part
# built once and a document in flight once per chain; which way each attempt went (live | batch);
# the report's sums by way (rollup_ways, filled from rollup_documents: every older row was live).
BATCH_WAVES_MIGRATION = ("0011_batch_waves", BATCH_WAVES + ATTEMPT_VIA + _rollups.WAYS)
MIGRATIONS.append(BATCH_WAVES_MIGRATION)
PG_MIGRATIONS.append(BATCH_WAVES_MIGRATION)

# Where each document's text came from (issue 19, Document.pages): the text layer, OCR or both,
# the OCR's mean and lowest page confidence, and the OCR'd pages under the ledger's threshold.
# Written with the document's extraction (Ledger._write_extraction), one row per document; the
# same SQL on both engines.
DOCUMENT_SOURCES = """
        CREATE TABLE document_sources (
            document_sha256 TEXT PRIMARY KEY,   -- documents.sha256
            source TEXT NOT NULL,               -- text | ocr | mixed | none
            n_pages INTEGER NOT NULL,
            ocr_pages INTEGER NOT NULL,         -- pages read by OCR
            ocr_mean REAL,                      -- mean of the OCR'd pages' confidences (0..1)
            ocr_min REAL,                       -- the lowest OCR'd page's confidence
            low_threshold REAL,                 -- a page under this is listed in low_pages
            low_pages TEXT,                     -- JSON list of page numbers, [] when none
            pages_json TEXT NOT NULL            -- JSON [[number, source, confidence], ...]
        );
"""
DOCUMENT_SOURCES_MIGRATION = ("0012_document_sources", DOCUMENT_SOURCES)
MIGRATIONS.append(DOCUMENT_SOURCES_MIGRATION)
PG_MIGRATIONS.append(DOCUMENT_SOURCES_MIGRATION)
# Long documents (issue 19): the chunk each attempt was on (NULL: the whole document), and per
# extraction how many chunks it was cut into (NULL: not chunked) and where they disagreed
# (``Result.conflicts`` as JSON). The same on both engines.
CHUNKS_MIGRATION = ("0013_chunks", """
        ALTER TABLE attempts ADD COLUMN chunk INTEGER;
        ALTER TABLE extractions ADD COLUMN n_chunks INTEGER;
        ALTER TABLE extractions ADD COLUMN conflicts_json TEXT;
        CREATE INDEX extractions_chunked ON extractions(created_at) WHERE n_chunks IS NOT NULL;
""")
MIGRATIONS.append(CHUNKS_MIGRATION)
PG_MIGRATIONS.append(CHUNKS_MIGRATION)
# Where each grounded value of an extraction was found in its document's text (Result.spans): a JSON
# object on the extraction, {"total": [{"start": 120, "end": 128, "page": 1}], "items[3].sku": [...]}.
# A column, not a table of rows: it is written with the value it describes, in the same INSERT (no
# extra rows on the write path the batch benchmarks measure), read whole with it (--out, the report's
# document view), and it is NULL for failed extractions and for those recorded before it existed.
VALUE_SPANS_MIGRATION = ("0014_value_spans", "ALTER TABLE extractions ADD COLUMN spans_json TEXT;")
MIGRATIONS.append(VALUE_SPANS_MIGRATION)
PG_MIGRATIONS.append(VALUE_SPANS_MIGRATION)

# The file each paged document (PDF, image) was read from, by the sha256 of its bytes: a rerun finds
# a scan's final result by its file before OCR reads it again (batch/_runner.py). One file may have
# been several documents (loaded with and without page images, another OCR engine's text): a row
# each. Written with the document's paths (Ledger.add_source_files); the same on both engines.
SOURCE_FILES_MIGRATION = ("0015_source_files", """
        CREATE TABLE source_files (
            file_sha256 TEXT NOT NULL,          -- sha256 of the file's bytes
            document_sha256 TEXT NOT NULL,      -- the document read from it (documents.sha256)
            PRIMARY KEY (file_sha256, document_sha256)
        );
""")
MIGRATIONS.append(SOURCE_FILES_MIGRATION)
PG_MIGRATIONS.append(SOURCE_FILES_MIGRATION)

def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations this database lacks; return their names.

    Safe when several processes or threads open one fresh ledger at once: the applied migrations
    are read again *inside* a write transaction (``BEGIN IMMEDIATE``), so exactly one connection
    applies each migration and the others, waiting on the lock (the connection's busy timeout),
    find it done. All pending migrations are applied in that one transaction, so a failure leaves
    the database as it was. An up-to-date database costs one read and takes no write lock.
    """
    if not _pending(_applied(conn)):
        return []
    conn.execute("BEGIN IMMEDIATE")  # waits for any other writer (busy timeout)
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        applied = _pending(_applied(conn))  # again, now that no one else can be applying them
        for name in applied:
            for statement in _statements(dict(MIGRATIONS)[name]):
                conn.execute(statement)
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, julianday('now'))", (name,))
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return applied


def _applied(conn: sqlite3.Connection) -> set[str]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'"
    ).fetchone()
    return {row[0] for row in conn.execute("SELECT name FROM _migrations")} if exists else set()


def _pending(done: set[str]) -> list[str]:
    return [name for name, _ in MIGRATIONS if name not in done]


def _statements(sql: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# -- PostgreSQL ----------------------------------------------------------------------------------

PG_LOCK_KEY = "extractkit.migrate"  # pg_advisory_xact_lock(hashtext(this)) while migrating


def migrate_postgres(conn: Any) -> list[str]:
    """Apply the PostgreSQL migrations this database lacks (``conn``: a psycopg connection in
    autocommit mode); return their names.

    Safe when many processes open one fresh database at once: everything runs in one transaction
    under ``pg_advisory_xact_lock``, and what is applied is read again inside it, so exactly one
    connection applies each migration and the others, waiting on the lock, find it done. An
    up-to-date database costs one read and takes no lock."""
    if not _pg_pending(_pg_applied(conn)):
        return []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (PG_LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations"
                     " (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")  # fmt: skip
        applied = _pg_pending(_pg_applied(conn))
        sql = dict(PG_MIGRATIONS)
        for name in applied:
            for statement in _statements(ddl_to_postgres(sql[name])):
                conn.execute(statement)
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (%s, EXTRACT(EPOCH FROM now()))",
                         (name,))  # fmt: skip
    return applied


def _pg_applied(conn: Any) -> set[str]:
    exists = conn.execute("SELECT to_regclass('_migrations') IS NOT NULL").fetchone()[0]
    return {row[0] for row in conn.execute("SELECT name FROM _migrations")} if exists else set()


def _pg_pending(done: set[str]) -> list[str]:
    return [name for name, _ in PG_MIGRATIONS if name not in done]
