"""The ledger: every run, document, extraction and attempt, in SQLite (WAL) or PostgreSQL.

One ``Ledger`` class; its target picks the engine: a file path (SQLite, the embedded default) or a
``postgresql://`` URL (``_pg.PgEngine``, psycopg 3 with its pool). The SQL below is written once,
in SQLite's style; on PostgreSQL each statement is translated (``_dialect``). ``transaction()``
yields a handle with ``execute`` / ``executemany`` on both engines, ``query`` returns rows with
``row["col"]`` and ``row[0]``, and every parameter is redacted on both."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from .. import _redact
from .._errors import LedgerError
from .._pages import LOW_CONFIDENCE, Page, low_pages, text_source
from .._results import TRANSIENT_OUTCOMES, VALIDATION_OUTCOMES, Attempt, Outcome, Result, sum_costs
from .._schema import canonical_json, json_schema
from . import _rollups
from ._dialect import POSTGRES, SQLITE, Dialect
from ._migrations import migrate
from ._owner import is_gone, this_process
from ._pg import PgEngine, is_url
from ._reads import LedgerReads
from ._waves import LedgerWaves, Wrote

DEFAULT_PATH = Path(".extractkit") / "ledger.sqlite3"
ENV_VAR = "EXTRACTKIT_LEDGER"

SERVED_REFRESH_S = 60  # a served model's last_seen is written at most this often per writer


def default_path() -> Path:
    """``$EXTRACTKIT_LEDGER``, else ``.extractkit/ledger.sqlite3`` in the current directory."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


_id_lock = threading.Lock()
_id_state = [0, 0]  # last millisecond, sequence within it


def new_id() -> str:
    """A 28-hex-digit id that sorts in creation order: milliseconds, a sequence, randomness."""
    with _id_lock:
        ms = int(time.time() * 1000)
        if ms <= _id_state[0]:
            ms, seq = _id_state[0], _id_state[1] + 1
        else:
            seq = 0
        _id_state[0], _id_state[1] = ms, seq
    return f"{ms:012x}{seq:04x}{secrets.token_hex(6)}"


def scrub(text: str | None, secrets_: Iterable[str] = ()) -> str | None:
    """Remove API keys and bearer tokens from text (``secrets_`` are registered first, so they are
    redacted everywhere from now on). The ledger needs no call: see ``RedactingConnection``."""
    for s in secrets_:
        _redact.register(s)
    return _redact.redact_opt(text)


def clean_params(params: Any) -> Any:
    """Every parameter of a statement through the redaction: a tuple, or a dict for named ones."""
    if isinstance(params, Mapping):
        return {k: _redact.redact_param(v) for k, v in params.items()}
    return tuple(map(_redact.redact_param, params))


class RedactingConnection(sqlite3.Connection):
    """The ledger's write boundary: every parameter of every statement passes ``redact``, so no
    text column of any table (documents, extractions, attempts, served models, runs, eval and
    fine-tune tables) can hold a registered secret or a key-like token, whoever writes it.
    Lookups by value are redacted alike, so they still find what was stored."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return super().execute(sql, clean_params(parameters) if parameters else parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return super().executemany(sql, map(clean_params, seq_of_parameters))

    def lock(self, key: str) -> None:
        """Nothing to do: a SQLite write transaction (BEGIN IMMEDIATE) already excludes all others."""


OPEN_TIMEOUT_S = 60.0  # how long opening waits for other processes opening or writing the same file
BUSY_TIMEOUT_S = 30.0  # each statement's wait for a lock held by another connection


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (and their extended codes)
    return "locked" in str(exc) or "busy" in str(exc)


def _connect(path: Path) -> tuple[sqlite3.Connection, list[str]]:
    """Connect, switch to WAL and migrate; returns the connection and the migrations applied.

    Many processes or threads may open one fresh file at once. Migrations take the write lock
    before reading what is applied (``migrate``); switching a fresh file to WAL needs an exclusive
    lock and can fail at once with "database is locked" instead of waiting, so a busy failure
    anywhere here is retried with a growing pause until ``OPEN_TIMEOUT_S``. Every step is
    idempotent or transactional, so a retry starts cleanly."""
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    pause = 0.005
    while True:
        conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S,
            factory=RedactingConnection,
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            return conn, migrate(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            if not _is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        except BaseException:
            conn.close()
            raise
        time.sleep(pause * (0.5 + secrets.randbelow(1000) / 1000))  # jitter: openers do not march in step
        pause = min(pause * 2, 0.5)


class Ledger(LedgerReads, LedgerWaves):
    """The ledger. ``Ledger("runs.sqlite3")`` (SQLite; ``":memory:"`` for tests) or
    ``Ledger("postgresql://user@host/db")`` (PostgreSQL, shared by many processes and machines);
    no target: ``$EXTRACTKIT_LEDGER``, else ``.extractkit/ledger.sqlite3``. ``store_text=False``
    keeps no document text. ``engine`` is ``"sqlite"`` or ``"postgresql"``, ``target`` a printable
    name (a URL's password masked), ``dialect`` the SQL fragments that differ (``_dialect``).

    Safe to share between asyncio tasks and threads: each extraction is written with its attempts
    in one transaction, so a crash never leaves half of one. Any number of processes and threads
    may open one ledger at once, a fresh one included (migrations: ``_migrations``).

    Opening marks ``interrupted`` the runs still ``running`` whose process is gone on this host
    (``interrupted`` lists their ids); runs started on another host are left as they are.

    SQLite only: ``conn`` (the connection) and ``path`` (the file; on PostgreSQL a ``Path`` made
    of the masked URL, kept for older callers: print ``target``).
    """

    conn: sqlite3.Connection
    dialect: Dialect

    def __init__(self, path: str | Path | None = None, *, store_text: bool = True,
                 ocr_low_confidence: float = LOW_CONFIDENCE):  # fmt: skip
        target: str | Path = path if path is not None else os.environ.get(ENV_VAR) or DEFAULT_PATH
        self.store_text = store_text
        self.ocr_low_confidence = ocr_low_confidence  # an OCR'd page under this is listed as low
        self._lock = threading.RLock()
        self._writer: ThreadPoolExecutor | None = None  # arecord's thread, started at first use
        self._versions_written: set[str] = set()  # schema and prompt hashes already stored
        self._served_written: dict[tuple[str, str, str, str], float] = {}  # served model -> written at
        self._pg: PgEngine | None = None
        if is_url(target):
            self.engine, self.dialect = "postgresql", POSTGRES
            self._pg = PgEngine(str(target))
            self.target, self.applied = self._pg.target, self._pg.applied
            self.path = Path(self.target)  # for callers written for files only: print .target instead
            try:
                self.interrupted = self._interrupt_orphaned_runs()
            except BaseException:
                self._pg.close()
                raise
            return
        self.engine, self.dialect = "sqlite", SQLITE
        _refuse_other_databases(str(target))
        if str(target).startswith(("postgresql:/", "postgres:/")):  # Path("postgresql://h/db") lost a slash
            raise LedgerError(f"{target} is not a file but a postgresql:// URL that went through Path(): "
                              "pass the URL as a string (Ledger.target, not Ledger.path)")  # fmt: skip
        self.path = Path(target)
        self.target = str(self.path)
        try:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn, self.applied = _connect(self.path)
            self.interrupted = self._interrupt_orphaned_runs()
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open ledger {self.path}: {exc}") from exc

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)  # writes already handed over are committed first
        if self._pg is not None:
            self._pg.close()
            return
        with self._lock:
            self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One write transaction, committed at the end of the block and rolled back on error:
        ``with ledger.transaction() as tx: tx.execute(sql, params)`` (also ``executemany``, and
        ``lock(key)`` to serialise with every other transaction locking the same key).

        SQLite: BEGIN IMMEDIATE ... COMMIT, serialised with every other use of the connection
        (which is in autocommit mode, where ``with conn:`` alone would commit each statement on its
        own); ``tx`` is the connection. PostgreSQL: a pooled connection's transaction (READ
        COMMITTED); ``tx`` translates each statement."""
        if self._pg is not None:
            with self._pg.transaction() as tx:
                yield tx
            return
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    # -- runs -------------------------------------------------------------------------------
    def start_run(self, kind: str, config: dict[str, Any] | None = None,
                  config_hash: str | None = None, schema_hash: str | None = None) -> str:  # fmt: skip
        from .. import __version__

        run_id = new_id()
        pid, host, start = this_process()  # marked interrupted on a later open if it dies unended
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO runs (id, kind, config_hash, config_json, schema_hash,"
                " extractkit_version, started_at, status, owner_pid, owner_host, owner_start)"
                " VALUES (?,?,?,?,?,?,?, 'running', ?,?,?)",
                (run_id, kind, config_hash, canonical_json(config) if config else None,
                 schema_hash, __version__, time.time(), pid, host, start),
            )  # fmt: skip
        return run_id

    def _interrupt_orphaned_runs(self) -> list[str]:
        """Mark ``interrupted`` (with ``ended_at``) the runs still ``running`` whose process is gone
        on this host; return their ids. Runs started on another host, and runs without a recorded
        owner (written before the 0004_run_owner migration), are left as they are: their processes cannot be
        seen from here. See ``_owner.py`` for how a reused process id is told apart."""
        rows = self._read(
            "SELECT id, owner_pid, owner_start FROM runs"
            " WHERE status = 'running' AND owner_host = ? AND owner_pid IS NOT NULL",
            (socket.gethostname(),),
        )
        dead = [r["id"] for r in rows if is_gone(r["owner_pid"], r["owner_start"])]
        if dead:
            with self.transaction() as tx:
                now = time.time()
                tx.executemany(
                    "UPDATE runs SET status = 'interrupted', ended_at = ?"
                    " WHERE id = ? AND status = 'running'",
                    [(now, run_id) for run_id in dead],
                )
        return dead

    def finish_run(self, run_id: str, status: str, **counts: int) -> None:
        allowed = {"n_documents", "n_ok", "n_failed", "n_errors", "n_skipped", "n_resumed"}
        sets = ", ".join(f"{k} = ?" for k in counts if k in allowed)
        values = [v for k, v in counts.items() if k in allowed]
        with self.transaction() as tx:
            tx.execute(
                f"UPDATE runs SET status = ?, ended_at = ?{', ' + sets if sets else ''} WHERE id = ?",
                (status, time.time(), *values, run_id),
            )

    # -- lookups ------------------------------------------------------------------------------
    def find_final(
        self, document_sha256: str, schema_hash: str, config_hash: str, *, forced_tier: str | None = None
    ) -> Any:
        """The latest final (ok or failed) extraction of this document by this chain (or by this
        tier alone, with ``forced_tier``), or None."""
        rows = self._read(
            "SELECT * FROM extractions WHERE document_sha256 = ? AND schema_hash = ?"
            " AND config_hash = ? AND forced_tier IS ? AND status IN ('ok', 'failed')"
            " ORDER BY id DESC LIMIT 1",
            (document_sha256, schema_hash, config_hash, forced_tier),
        )
        return rows[0] if rows else None

    def find_final_by_file(self, file_sha256: str, schema_hash: str, config_hash: str) -> Any:
        """``find_final`` for the documents read from a file with these bytes (``source_files``):
        the latest final extraction by this chain of any of them, or None. One indexed query."""
        rows = self._read(
            "SELECT e.* FROM source_files f JOIN extractions e ON e.document_sha256 = f.document_sha256"
            " WHERE f.file_sha256 = ? AND e.schema_hash = ? AND e.config_hash = ? AND e.forced_tier IS NULL"
            " AND e.status IN ('ok', 'failed') ORDER BY e.id DESC LIMIT 1",
            (file_sha256, schema_hash, config_hash),
        )
        return rows[0] if rows else None

    def add_source_files(self, seen: Iterable[tuple[str, str]]) -> None:
        """Record which document was read from which file: (file sha256, document sha256) rows."""
        rows = list(dict.fromkeys(seen))
        if not rows:
            return
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO source_files (file_sha256, document_sha256) VALUES (?,?) ON CONFLICT DO NOTHING",
                rows,
            )

    def paths_of(self, document_sha256: str) -> list[Any]:
        """Every path where this document's content was seen (``path``, ``path_bytes``, ...)."""
        return self._read(
            "SELECT * FROM document_paths WHERE document_sha256 = ? ORDER BY path_bytes",
            (document_sha256,),
        )

    def _read(self, sql: str, params: Any = ()) -> list[Any]:
        """Rows of one read (the ledger's own statements: errors pass as they are on SQLite)."""
        if self._pg is not None:
            return self._pg.query(sql, params)
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def add_document_paths(self, seen: Iterable[tuple[str, str, bytes, str | None]]) -> None:
        """Record where documents were seen: (sha256, readable path, exact path bytes, run id)
        rows, in one transaction; a path seen again only refreshes ``last_seen`` and ``run_id``."""
        now = time.time()
        rows = [(sha, path, path_bytes, now, now, run_id) for sha, path, path_bytes, run_id in seen]
        if not rows:
            return
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO document_paths (document_sha256, path, path_bytes, first_seen, last_seen,"
                " run_id) VALUES (?,?,?,?,?,?) ON CONFLICT (document_sha256, path_bytes) DO UPDATE SET"
                " last_seen = excluded.last_seen, run_id = excluded.run_id, path = excluded.path",
                rows,
            )

    def query(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> list[Any]:
        """Rows of one statement (SQLite-style SQL, translated on PostgreSQL); ``params``
        positional (a sequence, ``?``) or named (a mapping, ``:name``). Rows support ``row["col"]``
        and ``row[0]``. Errors are ``LedgerError``."""
        args: Any = dict(params) if isinstance(params, Mapping) else tuple(params)
        if self._pg is not None:
            return self._pg.query(sql, args)
        with self._lock:
            try:
                return self.conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {self.path}: {exc}") from exc

    def tables(self) -> list[str]:
        """The names of the ledger's tables (``_migrations`` included), sorted."""
        if self._pg is not None:
            sql = ("SELECT table_name FROM information_schema.tables"
                   " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")  # fmt: skip
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return sorted(str(r[0]) for r in self._read(sql))

    # -- writes -------------------------------------------------------------------------------
    def record(
        self,
        extractor: Any,
        result: Result[Any],
        *,
        text: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
        size: int | None = None,
        doc_type: str | None = None,
        config_hash: str | None = None,
        forced_tier: str | None = None,
        pages: Sequence[Page] = (),
    ) -> str:
        """Write one extraction and its attempts (one transaction). Returns the extraction id.

        ``forced_tier`` marks an extraction where one tier ran alone (eval); its ``config_hash`` is
        then that tier's own hash, so reports of the chain leave it out and eval can reuse it.
        ``pages``: the document's ``Document.pages``, where its text came from (``document_sources``).
        """
        with self.transaction() as c, _pipelined(c):
            ext_id, wrote = self._write_extraction(
                c, extractor, result, text=text, run_id=run_id, path=path, size=size, doc_type=doc_type,
                config_hash=config_hash, forced_tier=forced_tier, pages=pages,
            )  # fmt: skip
        self._wrote(wrote)
        return ext_id

    def _write_extraction(
        self,
        c: Any,
        extractor: Any,
        result: Result[Any],
        *,
        text: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
        size: int | None = None,
        doc_type: str | None = None,
        config_hash: str | None = None,
        forced_tier: str | None = None,
        pages: Sequence[Page] = (),
    ) -> tuple[str, Wrote]:
        """The body of ``record`` inside the caller's transaction ``c`` (``record``, and
        ``finish_batch_items`` for a document's final result: one copy of the rules that supersede
        the earlier extraction and keep the rollups). Returns the extraction id and what to pass
        to ``_wrote`` once the transaction has committed."""
        schema = extractor.schema
        ext_id = new_id()
        now = time.time()
        value_json = (
            json.dumps(result.value.model_dump(mode="json"), ensure_ascii=False)
            if result.value is not None
            else None
        )
        usage = result.usage
        _register_tier_keys(extractor)
        written: list[str] = []
        chain_hash = config_hash or extractor.config_hash
        # two writers of one document by one chain take turns (PostgreSQL; SQLite's write lock
        # already excludes them): the second supersedes the first. The unique index enforces it.
        c.lock(f"{result.document_sha256}|{result.schema_hash}|{chain_hash}|{forced_tier or ''}")
        if result.schema_hash not in self._versions_written:
            c.execute(
                "INSERT INTO schemas (hash, name, json) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                (result.schema_hash, schema.__name__, canonical_json(json_schema(schema))),
            )
            written.append(result.schema_hash)
        for tier in extractor.tiers:
            if tier.template.hash not in self._versions_written:
                c.execute(
                    "INSERT INTO prompts (hash, origin, source) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                    (tier.template.hash, tier.template.origin, tier.template.source),
                )
                written.append(tier.template.hash)
        c.execute(
            "INSERT INTO documents (sha256, path, size, type, text, first_seen)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT(sha256) DO UPDATE SET"
            " path = COALESCE(excluded.path, documents.path),"
            " text = COALESCE(documents.text, excluded.text)",
            (result.document_sha256, path, size, doc_type or "text",
             text if self.store_text else None, now),
        )  # fmt: skip
        if pages:
            c.execute(
                "INSERT INTO document_sources (document_sha256, source, n_pages, ocr_pages, ocr_mean,"
                " ocr_min, low_threshold, low_pages, pages_json) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (document_sha256) DO UPDATE SET low_threshold = excluded.low_threshold,"
                " low_pages = excluded.low_pages",
                _source_row(result.document_sha256, pages, self.ocr_low_confidence, text),
            )  # fmt: skip
        # the earlier final extractions of this document by this chain are no longer current: before
        # the new one goes in, as the unique index (0006_current_unique) allows one current row
        older = [r[0] for r in c.execute(
            "UPDATE extractions SET superseded_by = ? WHERE document_sha256 = ? AND schema_hash = ?"
            " AND config_hash = ? AND forced_tier IS ? AND status IN ('ok', 'failed')"
            " AND superseded_by IS NULL AND id != ? RETURNING id",
            (ext_id, result.document_sha256, result.schema_hash, chain_hash, forced_tier, ext_id),
        ).fetchall()]  # fmt: skip
        ext_row = (ext_id, run_id, result.document_sha256, path, result.schema_hash,
                   chain_hash, "ok" if result.ok else "failed", result.tier,
                   result.outcome.value, value_json, result.error,
                   len(result.attempts), usage.prompt_tokens, usage.completion_tokens,
                   result.cost_usd, result.latency_s, now, forced_tier, extraction_via(result.attempts),
                   sum_costs([live_cost(a) for a in result.attempts]))  # fmt: skip
        c.execute(
            "INSERT INTO extractions (id, run_id, document_sha256, path, schema_hash,"
            " config_hash, status, tier, outcome, value_json, error, n_attempts,"
            " prompt_tokens, completion_tokens, cost_usd, latency_s, created_at, forced_tier, via,"
            " live_cost_usd, spans_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (*ext_row, spans_json(result)),
        )
        if older:
            stale = [(x,) for x in older]
            c.executemany("UPDATE attempts SET current = 0 WHERE extraction_id = ?", stale)
        att_rows = [(*_attempt_row(new_id(), ext_id, run_id, a, follows),
                     int(result.ok and a.tier == result.tier), int(forced_tier is None), a.served_model,
                     a.fingerprint, via_of(a), getattr(a, "live_cost_usd", None))
                    for a, follows in zip(result.attempts, _follows(result.attempts), strict=True)]
        c.executemany(
            "INSERT INTO attempts (id, extraction_id, run_id, tier, model, number, outcome,"
            " error, errors_json, prompt_tokens, completion_tokens, cached_tokens, cost_usd,"
            " latency_s, started_at, finish_reason, status_code, prompt_hash, schema_hash,"
            " output, follows, won, current, served_model, fingerprint, via, live_cost_usd)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            att_rows,
        )
        if any(a.chunk is not None for a in result.attempts):  # a long document, in chunks
            _write_chunks(c, ext_id, result, att_rows)
        # the report's sums, in this transaction (from the rows just written, not read back)
        _rollups.apply(c, ext_id, self.engine, written=(ext_row, att_rows), superseded=older)
        # which model answered: written when first seen by this writer, then at most once a minute
        served = {}
        for a in result.attempts:
            key = (a.tier, a.model, a.served_model or "", a.fingerprint or "")
            if a.served_model and now - self._served_written.get(key, -1e9) >= SERVED_REFRESH_S:
                served[key] = a.started_at or now
        if served:
            c.executemany(
                "INSERT INTO served_models (tier, model, served_model, fingerprint, first_seen,"
                " last_seen) VALUES (?,?,?,?,?,?) ON CONFLICT (tier, model, served_model, fingerprint)"
                " DO UPDATE SET first_seen = MIN(served_models.first_seen, excluded.first_seen),"
                " last_seen = MAX(served_models.last_seen, excluded.last_seen)",
                [(*key, at, at) for key, at in served.items()],
            )
        return ext_id, (written, served, now)

    def _wrote(self, wrote: Wrote) -> None:
        """What ``_write_extraction`` wrote, remembered once its transaction has committed."""
        written, served, now = wrote
        self._versions_written.update(written)
        self._served_written.update(dict.fromkeys(served, now))

    async def arecord(self, extractor: Any, result: Result[Any], **kwargs: Any) -> str:
        """``record`` on the ledger's writer thread: the event loop goes on with other documents
        while SQLite commits (and, every few hundred commits, checkpoints its WAL, a few ms).
        Writes stay one at a time and in order; one that has started is finished even if the
        awaiting task is cancelled (a rerun then finds it, nothing is written twice)."""
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extractkit-ledger")
        call = functools.partial(self.record, extractor, result, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._writer, call)

    def record_error(
        self, *, run_id: str | None, path: str, kind: str, message: str, schema_hash: str,
        config_hash: str, document_sha256: str | None = None,
    ) -> str:  # fmt: skip
        """A document that could not be read: a per-document error, no attempts."""
        ext_id = new_id()
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO extractions (id, run_id, document_sha256, path, schema_hash,"
                " config_hash, status, outcome, error, created_at)"
                " VALUES (?,?,?,?,?,?, 'error', ?,?,?)",
                (ext_id, run_id, document_sha256, path, schema_hash, config_hash, kind,
                 message, time.time()),
            )  # fmt: skip
        return ext_id

    # -- eval -------------------------------------------------------------------------------------
    def record_eval_item(self, run_id: str, gold_id: str, document_sha256: str | None, path: str | None,
                         expected: dict[str, Any]) -> None:  # fmt: skip
        with self.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO eval_items (run_id, gold_id, document_sha256, path, expected_json,"
                " seq) VALUES (?,?,?,?,?,?)",
                (run_id, gold_id, document_sha256, path, json.dumps(expected, ensure_ascii=False), new_id()),
            )

    def record_eval_result(self, run_id: str, gold_id: str, tier: str, extraction_id: str, reused: bool,
                           scores: Iterable[Any]) -> None:  # fmt: skip
        """Which extraction answered a gold item for a tier, and its field scores (one transaction)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO eval_results (run_id, gold_id, tier, extraction_id, reused)"
                " VALUES (?,?,?,?,?)",
                (run_id, gold_id, tier, extraction_id, int(reused)),
            )
            tx.execute("DELETE FROM eval_scores WHERE run_id = ? AND gold_id = ? AND tier = ?",
                       (run_id, gold_id, tier))  # fmt: skip
            tx.executemany(
                "INSERT INTO eval_scores (run_id, gold_id, tier, extraction_id, field, expected_json,"
                " got_json, result, seq) VALUES (?,?,?,?,?,?,?,?,?)",
                [(run_id, gold_id, tier, extraction_id, sc.field, _json_or_none(sc.expected),
                  _json_or_none(sc.got), sc.result, new_id()) for sc in scores],
            )  # fmt: skip

    def integrity_check(self) -> str:
        """``"ok"``, or what is wrong. SQLite: ``PRAGMA integrity_check``. PostgreSQL (which
        checks its own pages): every migration applied and at most one current final extraction
        per key, read through the partial unique index."""
        if self._pg is None:
            with self._lock:
                return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])
        from ._migrations import PG_MIGRATIONS

        applied = {r[0] for r in self._pg.query("SELECT name FROM _migrations", ())}
        missing = [name for name, _ in PG_MIGRATIONS if name not in applied]
        if missing:
            return f"migrations not applied: {', '.join(missing)}"
        return "ok"


_OTHER_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_LIBPQ_KEYWORDS = re.compile(r"(^|\s)(host|hostaddr|dbname|user|password|port|sslmode|service)\s*=")


def _refuse_other_databases(target: str) -> None:
    """A ledger is a SQLite file or a ``postgresql://`` URL: anything else that names a database
    (``mysql://...``, a libpq keyword string ``host=... password=...``) is refused instead of
    becoming a file of that name. The target is not repeated: it may hold a password."""
    if _OTHER_URL.match(target):
        scheme = target.split("://", 1)[0]
        raise LedgerError(f"a ledger is a SQLite file path or a postgresql:// URL, not a {scheme}:// URL")
    if _LIBPQ_KEYWORDS.search(target):
        raise LedgerError("the ledger looks like a libpq connection string (host=... dbname=...): "
                          "give it as a postgresql://user@host/db URL, with the password in ~/.pgpass "
                          "or $PGPASSWORD")  # fmt: skip


def _pipelined(c: Any) -> Any:
    """On PostgreSQL, the statements of one transaction in pipeline mode: sent without waiting
    for each one's answer, until a result is read (``fetchall``) or the block ends; the same
    statements, in the same order, in far fewer round trips. Nothing on SQLite."""
    conn = getattr(c, "_conn", None)
    if conn is None or not hasattr(conn, "pipeline"):
        return nullcontext()
    return conn.pipeline()


def spans_json(result: Result[Any]) -> str | None:
    """``Result.spans`` as the ledger keeps it (``extractions.spans_json``); None when it has none."""
    spans = getattr(result, "spans", None)
    if not spans:
        return None
    return json.dumps({k: [s.to_json() for s in v] for k, v in spans.items()}, ensure_ascii=False)


def _source_row(sha: str, pages: Sequence[Page], threshold: float, text: str | None) -> tuple[Any, ...]:
    """The ``document_sources`` row of a document's pages."""
    read = [p.confidence for p in pages if p.source == "ocr" and p.confidence is not None]
    return (sha, text_source(pages), len(pages), sum(p.source == "ocr" for p in pages),
            round(sum(read) / len(read), 4) if read else None, min(read) if read else None, threshold,
            json.dumps(low_pages(pages, threshold, text)),
            json.dumps([[p.number, p.source, p.confidence] for p in pages]))  # fmt: skip


def _json_or_none(v: Any) -> str | None:
    return None if v is None else json.dumps(v, ensure_ascii=False, default=str)


def _register_tier_keys(extractor: Any) -> None:
    for tier in getattr(extractor, "tiers", []):
        _redact.register(tier.api_key)
        _redact.register_env(tier.api_key_env)


def _follows(attempts: list[Attempt]) -> list[str | None]:
    """For each attempt, what it followed in its tier: None (the first), 'reask' (after a
    validation failure) or 'retry' (after a transient one): the categories of ``_results``."""
    last: dict[tuple[str, int | None], Outcome] = {}  # per tier and chunk (a long document's)
    out: list[str | None] = []
    for a in attempts:
        prev = last.get((a.tier, a.chunk))
        follows = "reask" if prev in VALIDATION_OUTCOMES else "retry" if prev in TRANSIENT_OUTCOMES else None
        out.append(follows)
        last[(a.tier, a.chunk)] = a.outcome
    return out


def _write_chunks(c: Any, ext_id: str, result: Result[Any], att_rows: list[tuple[Any, ...]]) -> None:
    """A long document extracted in chunks (0013_chunks): each attempt's chunk, and the
    extraction's number of chunks and conflicts. Written beside the rows, not in their INSERTs:
    an extraction of a short document (nearly all) pays nothing for it."""
    pairs = zip(result.attempts, att_rows, strict=True)
    chunks = [(a.chunk, row[0]) for a, row in pairs if a.chunk is not None]
    c.executemany("UPDATE attempts SET chunk = ? WHERE id = ?", chunks)
    conflicts = json.dumps([x.to_json() for x in result.conflicts], ensure_ascii=False, default=str)
    c.execute("UPDATE extractions SET n_chunks = ?, conflicts_json = ? WHERE id = ?",
              (len({n for n, _ in chunks}), conflicts, ext_id))  # fmt: skip


def via_of(a: Attempt) -> str:
    """Which way an attempt went: ``live`` or ``batch`` (the provider's Batch API)."""
    return str(getattr(a, "via", "live") or "live")


def live_cost(a: Attempt) -> float | None:
    """What an attempt cost, or would have cost, sent live: a batch attempt's ``live_cost_usd``."""
    return getattr(a, "live_cost_usd", None) if via_of(a) == "batch" else a.cost_usd


def extraction_via(attempts: Iterable[Attempt]) -> str:
    """``live`` or ``batch`` when all of an extraction's attempts went one way, else ``mixed``
    (no attempts: ``live``)."""
    ways = {via_of(a) for a in attempts}
    return ways.pop() if len(ways) == 1 else "mixed" if ways else "live"


def _attempt_row(
    aid: str, ext_id: str, run_id: str | None, a: Attempt, follows: str | None
) -> tuple[Any, ...]:
    return (
        aid, ext_id, run_id, a.tier, a.model, a.number, a.outcome.value,
        a.error,
        json.dumps(a.errors, ensure_ascii=False) if a.errors is not None else None,
        a.usage.prompt_tokens, a.usage.completion_tokens, a.usage.cached_tokens, a.cost_usd,
        a.latency_s, a.started_at, a.finish_reason, a.status_code, a.prompt_hash,
        a.schema_hash, a.output, follows,
    )  # fmt: skip
