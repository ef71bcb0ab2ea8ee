"""Batch API waves in the ledger (issue 18): which document is in which wave, and each provider batch.

A *wave* is one round of requests of one chain (schema and config hashes) sent through the
provider's Batch API: wave 1 is every pending document's first attempt at the first tier; a
document needing a re-ask, a retry or the next tier goes to a later wave. One wave is sent as one
or more *parts* (``batch_jobs``: one input file, one model, one provider batch each); one document
in one wave is one *item* (``batch_items``: one request line, its ``custom_id`` the item's id).

The database enforces what must never happen twice, on both engines:

- a wave part is built once: ``UNIQUE (schema_hash, config_hash, wave, part)`` (a second driver
  building the same part gets ``None`` from ``create_batch_job`` and adopts the first one's);
- an input file or a provider batch belongs to one part: ``UNIQUE (input_file_id)``,
  ``UNIQUE (provider_batch_id)``;
- a document is in flight once per chain: the partial unique index ``batch_items_open`` over the
  items ``pending`` or ``sent`` (``add_batch_items`` skips the documents already in flight);
- a document is once in a wave: ``UNIQUE (schema_hash, config_hash, document_sha256, wave)``.

An item is never added to a wave already built (a part of it exists): its wave is raised to the
first unbuilt one, in the same statement, so a wave's parts are made of the items pending when it
was built and a late item cannot be stranded in a built wave.

States. Jobs: ``building`` (row and items written, no input file yet) -> ``uploaded`` (input file
id) -> the provider's status (``validating`` ... ``completed`` | ``failed`` | ``expired`` |
``cancelling`` | ``cancelled``) -> ``ingested`` (every line read back). Items: ``pending`` (waiting
for its wave) -> ``sent`` (in a part) -> ``answered`` (its answer ingested: the next item or the
final extraction written in the same transaction) or ``unrun`` (the batch ended without running
it: a pending copy goes to a later wave, no attempt recorded). An item never sent can also end
``cancelled`` (``cancel_unsent``: `extractkit batch cancel` dropped its wave before it was
submitted; the document is free for a live run or a later wave) or ``superseded``
(``supersede_final_items``: the document was made final another way before its item was sent).
Those two keep their rows (and the attempts they carried); their wave is never reused for the
chain, so the same document can be enqueued again later. A part the provider lost (HTTP 404) or
given up with `extractkit batch cancel --abandon` goes ``abandoned`` (``abandon_batch_jobs``),
never polled nor ingested again, and its items still ``sent`` go ``abandoned``: their documents
are free (a late answer for them is ignored).

Every method here is one transaction (``finish_batch_items``: one per chunk), so a process killed
anywhere leaves the rows saying where it stopped and the same command continues from there.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._pages import Page
from .._results import Attempt, Outcome, Result, Usage

BATCH_WAVES = """
        CREATE TABLE batch_jobs (               -- one provider batch = one input file of one wave
            id TEXT PRIMARY KEY,                -- new_id(), sent as metadata {"extractkit_job": id}
            schema_hash TEXT NOT NULL,
            config_hash TEXT NOT NULL,          -- the chain
            wave INTEGER NOT NULL,              -- 1, 2, ... per chain, never reused
            part INTEGER NOT NULL,              -- 0.. the wave's files (one model each, line/byte limits)
            tier TEXT NOT NULL,
            model TEXT NOT NULL,
            endpoint TEXT NOT NULL,             -- endpoint_identity(base_url)
            run_id TEXT,                        -- the run that built it
            status TEXT NOT NULL,               -- building | uploaded | <provider status> | ingested
            input_file_id TEXT,
            provider_batch_id TEXT,
            output_file_id TEXT,
            error_file_id TEXT,
            n_lines INTEGER NOT NULL,
            n_bytes INTEGER NOT NULL DEFAULT 0,
            n_completed INTEGER NOT NULL DEFAULT 0,
            n_failed INTEGER NOT NULL DEFAULT 0,
            errors_json TEXT,                   -- a failed batch's errors.data (redacted)
            created_at REAL NOT NULL,
            submitted_at REAL,
            ended_at REAL,
            ingested_at REAL,
            updated_at REAL NOT NULL,
            UNIQUE (schema_hash, config_hash, wave, part),
            UNIQUE (input_file_id),
            UNIQUE (provider_batch_id)
        );
        CREATE INDEX batch_jobs_open ON batch_jobs(schema_hash, config_hash, status)
            WHERE status != 'ingested';
        CREATE TABLE batch_items (              -- one document in one wave = one request line
            id TEXT PRIMARY KEY,                -- new_id(), the line's custom_id
            document_sha256 TEXT NOT NULL,
            schema_hash TEXT NOT NULL,
            config_hash TEXT NOT NULL,
            wave INTEGER NOT NULL,
            tier TEXT NOT NULL,
            job_id TEXT REFERENCES batch_jobs(id),  -- NULL while pending
            state TEXT NOT NULL,                -- pending | sent | answered | unrun
            run_id TEXT,                        -- the run that enqueued it
            source TEXT,                        -- where to read the document again (path or URL)
            source_bytes BLOB,                  -- the exact path bytes (os.fsencode), when a local file
            path TEXT,
            size INTEGER,
            doc_type TEXT,
            tier_state_json TEXT NOT NULL,      -- the driver's state at this tier ('{}' once answered)
            attempts_json TEXT NOT NULL,        -- the document's attempts so far, every tier
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (schema_hash, config_hash, document_sha256, wave)
        );
        CREATE UNIQUE INDEX batch_items_open ON batch_items(schema_hash, config_hash, document_sha256)
            WHERE state IN ('pending', 'sent');
        CREATE INDEX batch_items_job ON batch_items(job_id, state);
        CREATE INDEX batch_items_pending ON batch_items(schema_hash, config_hash, state, wave);
"""

# Which way each attempt went, what a batch attempt would have cost live, and which way an
# extraction's attempts went (live | batch | mixed). Rows written before are live.
ATTEMPT_VIA = """
        ALTER TABLE attempts ADD COLUMN via TEXT NOT NULL DEFAULT 'live';
        ALTER TABLE attempts ADD COLUMN live_cost_usd REAL;
        ALTER TABLE extractions ADD COLUMN via TEXT NOT NULL DEFAULT 'live';
        ALTER TABLE extractions ADD COLUMN live_cost_usd REAL;
"""

# what ``Ledger._write_extraction`` wrote (prompt/schema hashes, served models, when), kept once committed
Wrote = tuple[list[str], dict[tuple[str, str, str, str], float], float]
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})  # the provider's final statuses
CHUNK = 500  # items finished per transaction (finish_batch_items)
STALE_BUILDING_S = 3600.0  # a part still 'building' after this long was left by a dead process

# -- value objects ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewBatchItem:
    """A document to send in a wave (``add_batch_items``, or the next step of an answered one).

    ``tier_state_json``: the driver's state at ``tier`` (``TierState.to_json()``); ``attempts``:
    the document's attempts so far, every tier (the final ``Result`` is made of them). ``source``
    (and ``source_bytes``, the exact path bytes) say where to read the document again: the ledger
    keeps no text in an item beyond ``tier_state_json``."""

    document_sha256: str
    schema_hash: str
    config_hash: str
    wave: int
    tier: str
    tier_state_json: str
    attempts: tuple[Attempt, ...] = ()
    run_id: str | None = None
    source: str | None = None
    source_bytes: bytes | None = None
    path: str | None = None
    size: int | None = None
    doc_type: str | None = None


@dataclass(frozen=True)
class BatchItem:
    """An item as stored (``pending_batch_items``, ``job_items``): its id is the line's custom_id."""

    id: str
    document_sha256: str
    schema_hash: str
    config_hash: str
    wave: int
    tier: str
    state: str  # pending | sent | answered | unrun
    job_id: str | None
    tier_state_json: str
    attempts: tuple[Attempt, ...]
    run_id: str | None
    source: str | None
    source_bytes: bytes | None
    path: str | None
    size: int | None
    doc_type: str | None
    created_at: float
    updated_at: float

    def next(self, *, wave: int, tier: str | None = None, tier_state_json: str | None = None,
             attempts: Sequence[Attempt] | None = None) -> NewBatchItem:  # fmt: skip
        """The same document in a later wave (at ``tier``, with this state and attempts, else its own)."""
        return NewBatchItem(
            document_sha256=self.document_sha256, schema_hash=self.schema_hash, config_hash=self.config_hash,
            wave=wave, tier=tier or self.tier,
            tier_state_json=self.tier_state_json if tier_state_json is None else tier_state_json,
            attempts=self.attempts if attempts is None else tuple(attempts), run_id=self.run_id,
            source=self.source, source_bytes=self.source_bytes, path=self.path, size=self.size,
            doc_type=self.doc_type,
        )  # fmt: skip


@dataclass(frozen=True)
class NewBatchJob:
    """A wave part to build (``create_batch_job``)."""

    schema_hash: str
    config_hash: str
    wave: int
    part: int
    tier: str
    model: str
    endpoint: str
    run_id: str | None = None


@dataclass(frozen=True)
class BatchJob:
    """A wave part as stored: one input file, one provider batch."""

    id: str
    schema_hash: str
    config_hash: str
    wave: int
    part: int
    tier: str
    model: str
    endpoint: str
    run_id: str | None
    status: str
    input_file_id: str | None
    provider_batch_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    n_lines: int
    n_bytes: int
    n_completed: int
    n_failed: int
    errors: list[Any] | None
    created_at: float
    submitted_at: float | None
    ended_at: float | None
    ingested_at: float | None
    updated_at: float

    @property
    def terminal(self) -> bool:
        """The provider is done with it (completed, failed, expired, cancelled)."""
        return self.status in TERMINAL


@dataclass(frozen=True)
class ItemOutcome:
    """What an answered item leads to (``finish_batch_items``): the same document in a later wave
    (``next_item``), or its final ``result``, recorded as ``Ledger.record`` records one with the
    keyword arguments ``record`` (text, run_id, path, size, doc_type, config_hash, forced_tier).
    Exactly one of ``next_item`` and ``result``."""

    item_id: str
    next_item: NewBatchItem | None = None
    result: Result[Any] | None = None
    record: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WaveRow:
    """One wave of one chain (``wave_summary``, ``extractkit batch status``)."""

    schema_hash: str
    config_hash: str
    wave: int
    tiers: tuple[str, ...]  # of its items
    parts: int  # batch jobs built
    open_parts: int  # not yet ingested
    lines: int  # request lines in its parts
    completed: int  # as the provider counted them
    failed: int
    documents: int  # items (one per document)
    pending: int
    sent: int
    answered: int
    unrun: int
    created_at: float | None  # its first part
    ended_at: float | None  # its last part, once every part ended
    cancelled: int = 0  # items dropped unsent by `batch cancel` (their documents freed)
    superseded: int = 0  # items dropped unsent: their document was made final another way
    abandoned: int = 0  # items of parts abandoned (lost at the provider): sent, never answered, freed


# -- attempts as JSON (an item carries the document's attempts between waves) -----------------------

_ATTEMPT_FIELDS = {f.name for f in dataclasses.fields(Attempt)}


def attempt_to_dict(a: Attempt) -> dict[str, Any]:
    """An ``Attempt`` as plain JSON data (every field, whatever fields ``Attempt`` has)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(a):
        v = getattr(a, f.name)
        if isinstance(v, Usage):
            v = dataclasses.asdict(v)
        elif isinstance(v, enum.Enum):
            v = v.value
        out[f.name] = v
    return out


def attempt_from_dict(d: Mapping[str, Any]) -> Attempt:
    """``attempt_to_dict`` back; keys ``Attempt`` does not know are left out."""
    kw = {k: v for k, v in d.items() if k in _ATTEMPT_FIELDS}
    kw["outcome"] = Outcome(kw["outcome"])
    if isinstance(kw.get("usage"), Mapping):
        kw["usage"] = Usage(**kw["usage"])
    return Attempt(**kw)


def attempts_to_json(attempts: Iterable[Attempt]) -> str:
    return json.dumps([attempt_to_dict(a) for a in attempts], ensure_ascii=False, default=str)


def attempts_from_json(text: str | None) -> tuple[Attempt, ...]:
    return tuple(attempt_from_dict(d) for d in json.loads(text or "[]"))


def _count(counts: Any, name: str) -> int | None:
    if counts is None:
        return None
    v = counts.get(name) if isinstance(counts, Mapping) else getattr(counts, name, None)
    return None if v is None else int(v)


# -- SQL ----------------------------------------------------------------------------------------------

_ITEM_COLUMNS = ("id, document_sha256, schema_hash, config_hash, wave, tier, state, job_id,"
                 " tier_state_json, attempts_json, run_id, source, source_bytes, path, size, doc_type,"
                 " created_at, updated_at")  # fmt: skip
_JOB_COLUMNS = ("id, schema_hash, config_hash, wave, part, tier, model, endpoint, run_id, status,"
                " input_file_id, provider_batch_id, output_file_id, error_file_id, n_lines, n_bytes,"
                " n_completed, n_failed, errors_json, created_at, submitted_at, ended_at, ingested_at,"
                " updated_at")  # fmt: skip
# items that left their wave unsent: ``cancelled`` (`batch cancel` dropped their wave before it was
# submitted: the wave number is used up for the chain) and ``superseded`` (the document was made
# final another way: the wave number is used up for that document). Either way the same document
# enqueued again goes to a later wave and cannot meet its own row in UNIQUE (chain, document, wave).
CLOSED_UNSENT = ("cancelled", "superseded")
# parts never polled nor ingested again: read back (``ingested``), or given up (``abandoned``: the
# provider lost the batch, HTTP 404, or `batch cancel --abandon`; a later answer is ignored)
CLOSED_JOBS = "('ingested', 'abandoned')"
# the first wave not built yet of a chain (nor cancelled): an item's wave is raised to it (scalar
# MAX is GREATEST on PostgreSQL; the aggregates are left alone)
_FIRST_UNBUILT = (
    "MAX(COALESCE((SELECT MAX(j.wave) FROM batch_jobs j WHERE j.schema_hash = ? AND j.config_hash = ?), 0),"
    " COALESCE((SELECT MAX(x.wave) FROM batch_items x WHERE x.schema_hash = ? AND x.config_hash = ?"
    " AND x.state = 'cancelled'), 0)) + 1"
)
# ... and past the waves where this document's item was superseded
_AFTER_SUPERSEDED = (
    "COALESCE((SELECT MAX(y.wave) FROM batch_items y WHERE y.schema_hash = ? AND y.config_hash = ?"
    " AND y.document_sha256 = ? AND y.state = 'superseded'), 0) + 1"
)
_ITEM_VALUES = (
    f"(?,?,?,?, MAX(?, {_FIRST_UNBUILT}, {_AFTER_SUPERSEDED}), ?, NULL, 'pending', ?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_ITEMS = (
    "INSERT INTO batch_items (id, document_sha256, schema_hash, config_hash, wave, tier, job_id, state,"
    " run_id, source, source_bytes, path, size, doc_type, tier_state_json, attempts_json, created_at,"
    " updated_at) VALUES "
)
_INSERT_ITEM = _INSERT_ITEMS + _ITEM_VALUES
ADD_ROWS = 200  # rows per multi-row INSERT of add_batch_items (23 parameters each)


def _insert_items_if_free(n: int) -> str:
    """One INSERT of ``n`` items that skips those in flight already (``batch_items_open``)."""
    return _INSERT_ITEMS + ", ".join([_ITEM_VALUES] * n) + " ON CONFLICT DO NOTHING"


def _item_params(item_id: str, it: NewBatchItem, now: float) -> tuple[Any, ...]:
    chain = (it.schema_hash, it.config_hash)
    return (item_id, it.document_sha256, *chain, it.wave, *chain, *chain, *chain, it.document_sha256,
            it.tier, it.run_id, it.source, it.source_bytes, it.path, it.size, it.doc_type, it.tier_state_json,
            attempts_to_json(it.attempts), now, now)  # fmt: skip


def _item(r: Any) -> BatchItem:
    raw = r["source_bytes"]
    return BatchItem(
        id=r["id"], document_sha256=r["document_sha256"], schema_hash=r["schema_hash"],
        config_hash=r["config_hash"], wave=int(r["wave"]), tier=r["tier"], state=r["state"],
        job_id=r["job_id"],
        tier_state_json=r["tier_state_json"], attempts=attempts_from_json(r["attempts_json"]),
        run_id=r["run_id"], source=r["source"], source_bytes=None if raw is None else bytes(raw),
        path=r["path"], size=r["size"], doc_type=r["doc_type"], created_at=r["created_at"],
        updated_at=r["updated_at"],
    )  # fmt: skip


def _job(r: Any) -> BatchJob:
    errors = json.loads(r["errors_json"]) if r["errors_json"] else None
    return BatchJob(
        id=r["id"], schema_hash=r["schema_hash"], config_hash=r["config_hash"], wave=int(r["wave"]),
        part=int(r["part"]), tier=r["tier"], model=r["model"], endpoint=r["endpoint"], run_id=r["run_id"],
        status=r["status"], input_file_id=r["input_file_id"], provider_batch_id=r["provider_batch_id"],
        output_file_id=r["output_file_id"], error_file_id=r["error_file_id"], n_lines=int(r["n_lines"]),
        n_bytes=int(r["n_bytes"] or 0), n_completed=int(r["n_completed"] or 0),
        n_failed=int(r["n_failed"] or 0),
        errors=errors, created_at=r["created_at"], submitted_at=r["submitted_at"], ended_at=r["ended_at"],
        ingested_at=r["ingested_at"], updated_at=r["updated_at"],
    )  # fmt: skip


def _chain_filter(schema_hash: str | None, config_hash: str | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if schema_hash is not None:
        clauses.append("schema_hash = ?")
        params.append(schema_hash)
    if config_hash is not None:
        clauses.append("config_hash = ?")
        params.append(config_hash)
    return " AND ".join(clauses) or "1 = 1", params


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class LedgerWaves:
    """The wave state of the Batch API driver (mixed into ``Ledger``): typed methods, each one
    transaction; nothing else in the package writes these tables."""

    if TYPE_CHECKING:

        def _read(self, sql: str, params: Any = ()) -> list[Any]: ...

        def transaction(self) -> AbstractContextManager[Any]: ...

        def _write_extraction(
            self, c: Any, extractor: Any, result: Result[Any], *, text: str | None = None,
            run_id: str | None = None, path: str | None = None, size: int | None = None,
            doc_type: str | None = None, config_hash: str | None = None, forced_tier: str | None = None,
            pages: Sequence[Page] = (),
        ) -> tuple[str, Wrote]: ...  # fmt: skip

        def _wrote(self, wrote: Wrote) -> None: ...

    # -- waves and items ---------------------------------------------------------------------------
    def next_wave(self, schema_hash: str, config_hash: str) -> int:
        """The first wave of this chain that has no part built yet, after any wave whose items
        were cancelled unsent (1 for a new chain)."""
        rows = self._read(f"SELECT {_FIRST_UNBUILT}", (schema_hash, config_hash, schema_hash, config_hash))
        return int(rows[0][0])

    def add_batch_items(self, items: Iterable[NewBatchItem]) -> int:
        """Enqueue documents (state ``pending``); returns how many were added. A document already
        in flight for its chain (pending or sent) is skipped, whoever enqueued it: the database
        refuses a second open item. An item's wave is raised to the chain's first unbuilt wave."""
        from ._ledger import new_id

        items = list(items)
        if not items:
            return 0
        now = time.time()
        added = 0
        with self.transaction() as c:  # one multi-row INSERT per ADD_ROWS items, the same on both engines
            for chunk in _chunks(items, ADD_ROWS):
                params = [p for it in chunk for p in _item_params(new_id(), it, now)]
                added += c.execute(_insert_items_if_free(len(chunk)), params).rowcount
        return added

    def in_flight(self, schema_hash: str, config_hash: str) -> set[str]:
        """The documents (sha256) of this chain pending or sent in a wave."""
        rows = self._read(
            "SELECT document_sha256 FROM batch_items WHERE schema_hash = ? AND config_hash = ?"
            " AND state IN ('pending', 'sent')", (schema_hash, config_hash),
        )  # fmt: skip
        return {str(r[0]) for r in rows}

    def pending_batch_items(self, schema_hash: str, config_hash: str, tier: str | None = None,
                            limit: int | None = None) -> list[BatchItem]:  # fmt: skip
        """The items of this chain waiting for a wave (of one ``tier``), oldest wave first."""
        sql = (f"SELECT {_ITEM_COLUMNS} FROM batch_items WHERE schema_hash = ? AND config_hash = ?"
               " AND state = 'pending'")  # fmt: skip
        params: list[Any] = [schema_hash, config_hash]
        if tier is not None:
            sql += " AND tier = ?"
            params.append(tier)
        sql += " ORDER BY wave, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_item(r) for r in self._read(sql, params)]

    def job_items(self, job_id: str, state: str | None = "sent") -> list[BatchItem]:
        """The items of one part (in ``state``; None: all), in id order."""
        sql = f"SELECT {_ITEM_COLUMNS} FROM batch_items WHERE job_id = ?"
        params: list[Any] = [job_id]
        if state is not None:
            sql += " AND state = ?"
            params.append(state)
        return [_item(r) for r in self._read(sql + " ORDER BY id", params)]

    # -- parts -------------------------------------------------------------------------------------
    def create_batch_job(self, job: NewBatchJob, item_ids: Iterable[str]) -> BatchJob | None:
        """Build one wave part: the job row (``building``) and its items ``sent``, in one
        transaction. None when the part exists already (``UNIQUE (schema, config, wave, part)``:
        another driver built it; adopt it, never build it again) or when none of ``item_ids`` is
        still pending. Items no longer pending are left out: ``n_lines`` counts those taken, and
        the input file is made of ``job_items(job.id)``."""
        from ._ledger import new_id

        ids = sorted(set(item_ids))
        job_id = new_id()
        now = time.time()
        with self.transaction() as c:
            c.lock(f"waves|{job.schema_hash}|{job.config_hash}")
            made = c.execute(
                "INSERT INTO batch_jobs (id, schema_hash, config_hash, wave, part, tier, model, endpoint,"
                " run_id, status, n_lines, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?, 'building', 0, ?, ?) ON CONFLICT DO NOTHING",
                (job_id, job.schema_hash, job.config_hash, job.wave, job.part, job.tier, job.model,
                 job.endpoint, job.run_id, now, now),
            ).rowcount  # fmt: skip
            if not made:
                return None
            for chunk in _chunks(ids, CHUNK):
                c.execute(
                    f"UPDATE batch_items SET state = 'sent', job_id = ?, updated_at = ?"
                    f" WHERE id IN ({', '.join('?' * len(chunk))}) AND state = 'pending'"
                    " AND schema_hash = ? AND config_hash = ?",
                    (job_id, now, *chunk, job.schema_hash, job.config_hash),
                )
            n = int(c.execute("SELECT COUNT(*) FROM batch_items WHERE job_id = ?", (job_id,)).fetchone()[0])
            if n == 0:
                c.execute("DELETE FROM batch_jobs WHERE id = ?", (job_id,))
                return None
            c.execute("UPDATE batch_jobs SET n_lines = ? WHERE id = ?", (n, job_id))
            row = c.execute(f"SELECT {_JOB_COLUMNS} FROM batch_jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row)

    def batch_job_uploaded(self, job_id: str, input_file_id: str, n_bytes: int) -> bool:
        """The part's input file is uploaded: ``uploaded``. False when the part is no longer
        ``building`` (dropped as stale by another process: do not create its batch)."""
        with self.transaction() as c:
            return bool(c.execute(
                "UPDATE batch_jobs SET status = 'uploaded', input_file_id = ?, n_bytes = ?, updated_at = ?"
                " WHERE id = ? AND status = 'building'", (input_file_id, n_bytes, time.time(), job_id),
            ).rowcount)  # fmt: skip

    def batch_job_submitted(self, job_id: str, provider_batch_id: str, status: str = "validating") -> bool:
        """The provider batch is created. False when the part has one already (or no input file)."""
        now = time.time()
        with self.transaction() as c:
            return bool(c.execute(
                "UPDATE batch_jobs SET provider_batch_id = ?, status = ?, submitted_at = ?, updated_at = ?"
                " WHERE id = ? AND provider_batch_id IS NULL AND status = 'uploaded'",
                (provider_batch_id, status, now, now, job_id),
            ).rowcount)  # fmt: skip

    def batch_job_polled(self, job_id: str, status: str, counts: Any = None,
                         output_file_id: str | None = None, error_file_id: str | None = None,
                         errors: Any = None) -> bool:  # fmt: skip
        """What the provider said on a poll: its status, ``counts`` (``request_counts``: a mapping
        or an object with ``completed`` and ``failed``), the output and error file ids, a failed
        batch's ``errors``. A terminal status sets ``ended_at``. A part already ingested is left
        as it is (False)."""
        now = time.time()
        ended = now if status in TERMINAL else None
        errors_json = None if errors is None else json.dumps(errors, ensure_ascii=False, default=str)
        with self.transaction() as c:
            return bool(c.execute(
                "UPDATE batch_jobs SET status = ?, n_completed = COALESCE(?, n_completed),"
                " n_failed = COALESCE(?, n_failed), output_file_id = COALESCE(?, output_file_id),"
                " error_file_id = COALESCE(?, error_file_id), errors_json = COALESCE(?, errors_json),"
                " ended_at = COALESCE(ended_at, ?), updated_at = ? WHERE id = ?"
                " AND status NOT IN ('ingested', 'abandoned')",
                (status, _count(counts, "completed"), _count(counts, "failed"), output_file_id, error_file_id,
                 errors_json, ended, now, job_id),
            ).rowcount)  # fmt: skip

    def batch_job_ingested(self, job_id: str) -> bool:
        """Every line of the part is read back (``ingested``); False if it already was."""
        now = time.time()
        with self.transaction() as c:
            return bool(c.execute(
                "UPDATE batch_jobs SET status = 'ingested', ingested_at = ?, updated_at = ?"
                " WHERE id = ? AND status NOT IN ('ingested', 'abandoned')", (now, now, job_id),
            ).rowcount)  # fmt: skip

    def open_batch_jobs(
        self, schema_hash: str | None = None, config_hash: str | None = None
    ) -> list[BatchJob]:
        """The parts not yet ingested (of one chain), by wave and part."""
        where, params = _chain_filter(schema_hash, config_hash)
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM batch_jobs WHERE status NOT IN {CLOSED_JOBS}"
                          f" AND {where} ORDER BY wave, part, id", params)  # fmt: skip
        return [_job(r) for r in rows]

    def batch_jobs(self, limit: int | None = None, schema_hash: str | None = None,
                   config_hash: str | None = None) -> list[BatchJob]:  # fmt: skip
        """The parts (of one chain), newest first (at most ``limit``)."""
        where, params = _chain_filter(schema_hash, config_hash)
        sql = f"SELECT {_JOB_COLUMNS} FROM batch_jobs WHERE {where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_job(r) for r in self._read(sql, params)]

    def batch_job(self, job_id: str) -> BatchJob | None:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM batch_jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def drop_building_jobs(
        self, schema_hash: str, config_hash: str, *, stale_s: float = STALE_BUILDING_S
    ) -> int:
        """Parts left ``building`` (no input file recorded) by a run that is no longer running, or
        for longer than ``stale_s``: their items go back to ``pending`` and the part row goes (its
        number is built again). Returns how many parts were dropped. A part being built right now
        by a running process is left alone."""
        now = time.time()
        with self.transaction() as c:
            c.lock(f"waves|{schema_hash}|{config_hash}")
            rows = c.execute(
                "SELECT id FROM batch_jobs WHERE schema_hash = ? AND config_hash = ? AND status = 'building'"
                " AND input_file_id IS NULL AND (run_id IS NULL OR updated_at < ? OR run_id NOT IN"
                " (SELECT id FROM runs WHERE status = 'running'))",
                (schema_hash, config_hash, now - stale_s),
            ).fetchall()  # fmt: skip
            ids = [r[0] for r in rows]
            for job_id in ids:
                c.execute("UPDATE batch_items SET state = 'pending', job_id = NULL, updated_at = ?"
                          " WHERE job_id = ? AND state = 'sent'", (now, job_id))  # fmt: skip
                c.execute("UPDATE batch_items SET job_id = NULL WHERE job_id = ?", (job_id,))
                c.execute("DELETE FROM batch_jobs WHERE id = ? AND status = 'building'", (job_id,))
        return len(ids)

    def cancel_unsent(self, schema_hash: str, config_hash: str, wave: int | None = None) -> tuple[int, int]:
        """`extractkit batch cancel` for what was never submitted: the chain's parts still
        ``building`` (no input file recorded: e.g. the provider answered 404 on its files
        endpoint) are deleted, and their items and the items ``pending`` for a wave go
        ``cancelled`` (their rows and attempts kept), in ``wave`` or in every wave. Their
        documents are no longer in flight: a live run or a later batch run takes them. A part
        being built right now by a running driver is dropped too; that driver then finds it gone
        and creates no batch for it (``batch_job_uploaded`` is False). Returns (parts dropped,
        documents freed)."""
        now = time.time()
        in_wave, params = ("", []) if wave is None else (" AND wave = ?", [int(wave)])
        with self.transaction() as c:
            c.lock(f"waves|{schema_hash}|{config_hash}")
            rows = c.execute(
                "SELECT id FROM batch_jobs WHERE schema_hash = ? AND config_hash = ? AND status = 'building'"
                f" AND input_file_id IS NULL{in_wave}", (schema_hash, config_hash, *params),
            ).fetchall()  # fmt: skip
            jobs = [r[0] for r in rows]
            freed = 0
            for job_id in jobs:
                freed += c.execute(
                    "UPDATE batch_items SET state = 'cancelled', job_id = NULL, updated_at = ?"
                    " WHERE job_id = ? AND state = 'sent'", (now, job_id),
                ).rowcount  # fmt: skip
                c.execute("UPDATE batch_items SET job_id = NULL WHERE job_id = ?", (job_id,))
                c.execute("DELETE FROM batch_jobs WHERE id = ?", (job_id,))
            freed += c.execute(
                "UPDATE batch_items SET state = 'cancelled', updated_at = ? WHERE schema_hash = ?"
                f" AND config_hash = ? AND state = 'pending'{in_wave}",
                (now, schema_hash, config_hash, *params),
            ).rowcount  # fmt: skip
        return len(jobs), freed

    def abandon_batch_jobs(self, schema_hash: str, config_hash: str, *, wave: int | None = None,
                           job_ids: Sequence[str] | None = None) -> tuple[int, int]:  # fmt: skip
        """Give up parts of the chain that are not read back, whatever the provider says (it
        lost the batch, or its output cannot be read): in ``wave``, or those of ``job_ids``, or
        every one. Each goes ``abandoned`` (never polled nor ingested again), and its items still
        ``sent`` (no answer recorded) go ``abandoned`` too, their rows and attempts kept: their
        documents are no longer in flight (a live run or a later wave takes them; the provider may
        have billed the lines it ran). An item already answered is left as it is; a later answer
        for an abandoned item is ignored (``finish_batch_items`` takes only pending or sent ones).
        Returns (parts abandoned, documents freed)."""
        now = time.time()
        where, params = "", list[Any]()
        if wave is not None:
            where, params = " AND wave = ?", [int(wave)]
        if job_ids is not None:
            if not job_ids:
                return 0, 0
            where += f" AND id IN ({', '.join('?' * len(job_ids))})"
            params += list(job_ids)
        with self.transaction() as c:
            c.lock(f"waves|{schema_hash}|{config_hash}")
            rows = c.execute(
                "SELECT id FROM batch_jobs WHERE schema_hash = ? AND config_hash = ?"
                f" AND status NOT IN {CLOSED_JOBS}{where} ORDER BY id", (schema_hash, config_hash, *params),
            ).fetchall()  # fmt: skip
            jobs = [r[0] for r in rows]
            freed = 0
            for job_id in jobs:
                c.execute("UPDATE batch_jobs SET status = 'abandoned', ended_at = COALESCE(ended_at, ?),"
                          " updated_at = ? WHERE id = ?", (now, now, job_id))  # fmt: skip
                freed += c.execute(
                    "UPDATE batch_items SET state = 'abandoned', updated_at = ?"
                    " WHERE job_id = ? AND state = 'sent'",
                    (now, job_id),
                ).rowcount  # fmt: skip
        return len(jobs), freed

    def supersede_final_items(
        self, schema_hash: str, config_hash: str, item_ids: Sequence[str], retry_outcomes: Iterable[str] = ()
    ) -> list[str]:
        """Pending items whose document was made final another way (a live run, the library, a
        worker) after the item was enqueued: ``superseded`` (never sent, not paid twice). A final
        result counts unless it failed with one of ``retry_outcomes`` (a transient failure: the
        item is that document's retry). Returns the documents (sha256) of the items superseded,
        in item order. One transaction."""
        retry = sorted(set(retry_outcomes))
        not_retried = f" AND e.outcome NOT IN ({', '.join('?' * len(retry))})" if retry else ""
        final = (
            "EXISTS (SELECT 1 FROM extractions e WHERE e.document_sha256 = batch_items.document_sha256"
            " AND e.schema_hash = batch_items.schema_hash AND e.config_hash = batch_items.config_hash"
            " AND e.forced_tier IS NULL AND e.created_at >= batch_items.created_at AND (e.status = 'ok'"
            f" OR (e.status = 'failed'{not_retried})))"
        )
        out: list[str] = []
        now = time.time()
        with self.transaction() as c:
            for chunk in _chunks(sorted(set(item_ids)), CHUNK):
                marks = ", ".join("?" * len(chunk))
                where = (f"id IN ({marks}) AND state = 'pending' AND schema_hash = ? AND config_hash = ?"
                         f" AND {final}")  # fmt: skip
                params = (*chunk, schema_hash, config_hash, *retry)
                rows = c.execute(f"SELECT id, document_sha256 FROM batch_items WHERE {where} ORDER BY id",
                                 params).fetchall()  # fmt: skip
                if rows:
                    c.execute(f"UPDATE batch_items SET state = 'superseded', updated_at = ? WHERE {where}",
                              (now, *params))  # fmt: skip
                    out.extend(str(r[1]) for r in rows)
        return out

    def unrun_batch_items(self, job_id: str, next_wave: int) -> int:
        """The part's items still ``sent`` after its lines were read (cancelled, or missing from
        both files): each goes ``unrun`` and a pending copy (same tier, state and attempts: no
        attempt is recorded) joins ``next_wave`` (or the first unbuilt wave after it). Returns
        how many."""
        from ._ledger import new_id

        now = time.time()
        with self.transaction() as c:
            rows = c.execute(f"SELECT {_ITEM_COLUMNS} FROM batch_items WHERE job_id = ? AND state = 'sent'"
                             " ORDER BY id", (job_id,)).fetchall()  # fmt: skip
            for r in rows:
                c.execute("UPDATE batch_items SET state = 'unrun', updated_at = ? WHERE id = ?",
                          (now, r["id"]))  # fmt: skip
                it = _item(r).next(wave=next_wave)
                c.execute(_INSERT_ITEM, _item_params(new_id(), it, now))
        return len(rows)

    def finish_batch_items(self, extractor: Any, outcomes: Sequence[ItemOutcome]) -> int:
        """Ingest answered items: each goes ``answered`` (its tier state cleared), and in the same
        transaction its ``next_item`` is enqueued or its final ``result`` recorded, exactly as
        ``Ledger.record`` records one (the same code). One transaction per chunk of ``CHUNK``
        items: a process killed between two never loses nor doubles a document. An item no longer
        pending or sent was ingested already: skipped. Returns how many items were finished now."""
        from ._ledger import new_id

        for o in outcomes:
            if (o.next_item is None) == (o.result is None):
                raise ValueError(f"item {o.item_id}: an outcome needs exactly one of next_item and result")
        ordered = sorted(outcomes, key=lambda o: o.item_id)  # rows locked in one order by every writer
        finished = 0
        for chunk in _chunks(ordered, CHUNK):
            done = []
            with self.transaction() as c:
                now = time.time()
                n = 0
                for o in chunk:
                    took = c.execute(
                        "UPDATE batch_items SET state = 'answered', tier_state_json = '{}', updated_at = ?"
                        " WHERE id = ? AND state IN ('pending', 'sent')", (now, o.item_id),
                    ).rowcount  # fmt: skip
                    if not took:
                        continue
                    n += 1
                    if o.next_item is not None:
                        c.execute(_INSERT_ITEM, _item_params(new_id(), o.next_item, now))
                    else:
                        assert o.result is not None
                        _, wrote = self._write_extraction(c, extractor, o.result, **dict(o.record))
                        done.append(wrote)
            for wrote in done:  # once committed
                self._wrote(wrote)
            finished += n
        return finished

    # -- status ---------------------------------------------------------------------------------------
    def wave_summary(self, schema_hash: str | None = None, config_hash: str | None = None) -> list[WaveRow]:
        """One row per chain and wave (parts, lines, provider counts, items by state), by chain
        and wave."""
        where, params = _chain_filter(schema_hash, config_hash)
        jobs = self._read(
            "SELECT schema_hash, config_hash, wave, COUNT(*) AS parts,"
            f" SUM(CASE WHEN status NOT IN {CLOSED_JOBS} THEN 1 ELSE 0 END) AS open_parts,"
            " SUM(n_lines) AS lines, SUM(n_completed) AS completed, SUM(n_failed) AS failed,"
            " MIN(created_at) AS created_at, MAX(ended_at) AS ended_at,"
            " SUM(CASE WHEN ended_at IS NULL THEN 1 ELSE 0 END) AS running"
            f" FROM batch_jobs WHERE {where} GROUP BY schema_hash, config_hash, wave", params,
        )  # fmt: skip
        items = self._read(
            "SELECT schema_hash, config_hash, wave, tier, state, COUNT(*) AS n"
            f" FROM batch_items WHERE {where} GROUP BY schema_hash, config_hash, wave, tier, state", params,
        )  # fmt: skip
        keys = {(r["schema_hash"], r["config_hash"], int(r["wave"])) for r in [*jobs, *items]}
        by_job = {(r["schema_hash"], r["config_hash"], int(r["wave"])): r for r in jobs}
        out = []
        for key in sorted(keys):
            j = by_job.get(key)
            mine = [r for r in items if (r["schema_hash"], r["config_hash"], int(r["wave"])) == key]
            states = {s: sum(int(r["n"]) for r in mine if r["state"] == s)
                      for s in ("pending", "sent", "answered", "unrun", *CLOSED_UNSENT,
                                "abandoned")}  # fmt: skip
            out.append(WaveRow(
                schema_hash=key[0], config_hash=key[1], wave=key[2],
                tiers=tuple(sorted({r["tier"] for r in mine})),
                parts=int(j["parts"]) if j else 0, open_parts=int(j["open_parts"] or 0) if j else 0,
                lines=int(j["lines"] or 0) if j else 0, completed=int(j["completed"] or 0) if j else 0,
                failed=int(j["failed"] or 0) if j else 0, documents=sum(states.values()), **states,
                created_at=j["created_at"] if j else None,
                ended_at=j["ended_at"] if j and not j["running"] else None,
            ))  # fmt: skip
        return out
