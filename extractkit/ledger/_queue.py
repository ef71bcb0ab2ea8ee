"""The shared work queue on PostgreSQL: one job per (document, schema, chain config), claimed with
leases that workers keep alive with heartbeats.

Tables (migration ``0008_work_queue`` of the PostgreSQL ledger, applied with the others under their
advisory lock when a ``Ledger`` or a ``WorkQueue`` opens the database):

- ``work_queue``: a job per document content and chain. ``UNIQUE (document_sha256, schema_hash,
  config_hash)``: the database, not a check in Python, makes a document enqueued twice (or by two
  processes at once, or at two paths) one job. ``source`` is where a worker reads it (a path or a
  URI), ``source_bytes`` the exact path bytes. States: ``waiting`` -> ``claimed`` (``worker_id``,
  ``lease_until``) -> ``done`` | ``failed``; a claimed job whose lease has expired (its worker died
  or lost the database) is claimed again by any worker (``reclaims`` counts it,
  ``reclaimed_from`` names the worker it was taken from), and a worker
  stopped cleanly puts its unfinished jobs back to ``waiting``.
- ``work_workers``: one row per worker process (host, pid, lease, last heartbeat, stopped), for
  ``extractkit status``.

Times are the database's clock (``now()``), never a worker's: workers on machines whose clocks
disagree still agree on when a lease ends. Every statement of the queue is in this module.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .. import _redact
from .._errors import LedgerError
from ._pg import mask, pool_options

RATE_WINDOW_S = 300  # status: a worker's rate is over its documents finished in the last 5 minutes
STATES = ("waiting", "claimed", "done", "failed")

WORK_QUEUE = """
    CREATE TABLE work_queue (
        id BIGSERIAL PRIMARY KEY,
        document_sha256 TEXT NOT NULL,
        schema_hash TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        source TEXT NOT NULL,                   -- where a worker reads it: a path or a URI
        source_bytes BYTEA,                     -- the exact bytes of a local path (os.fsencode)
        doc_type TEXT,
        size BIGINT,
        state TEXT NOT NULL DEFAULT 'waiting'
            CHECK (state IN ('waiting', 'claimed', 'done', 'failed')),
        worker_id TEXT,                         -- the worker holding it, or the last one that did
        lease_until TIMESTAMPTZ,                -- claimed: another worker may take it over after this
        attempts INTEGER NOT NULL DEFAULT 0,    -- claims so far
        reclaims INTEGER NOT NULL DEFAULT 0,    -- of which taken over from a worker whose lease ran out
        reclaimed_from TEXT,
        enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        claimed_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        result_status TEXT,                     -- ok | failed | error
        outcome TEXT,
        error TEXT,
        CONSTRAINT work_queue_one_job UNIQUE (document_sha256, schema_hash, config_hash)
    );
    CREATE INDEX work_queue_waiting ON work_queue (schema_hash, config_hash, id) WHERE state = 'waiting';
    CREATE INDEX work_queue_leases ON work_queue (lease_until) WHERE state = 'claimed';
    CREATE INDEX work_queue_worker ON work_queue (worker_id, finished_at);
    CREATE TABLE work_workers (
        id TEXT PRIMARY KEY,                    -- host:pid:random
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        schema_hash TEXT,
        config_hash TEXT,
        concurrency INTEGER,
        lease_s DOUBLE PRECISION NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),   -- its last heartbeat
        stopped_at TIMESTAMPTZ
    );
"""


@dataclass(frozen=True)
class QueuedDocument:
    """A document to enqueue: its content's sha256 (of its text, the ledger's identity), where
    to read it (``source``: display path or URI; ``source_bytes``: the exact path bytes), its type."""

    sha256: str
    source: str
    source_bytes: bytes | None = None
    doc_type: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    sha256: str
    source: str
    source_bytes: bytes | None
    doc_type: str | None
    attempts: int  # claims so far, this one included
    reclaimed: bool  # taken over from a worker whose lease had expired


@dataclass(frozen=True)
class Finished:
    """How a job ended: ``result_status`` ok | failed | error, the outcome and the error text.
    ``done``: extracted (ok); otherwise the job ends ``failed``."""

    job_id: int
    done: bool
    result_status: str
    outcome: str | None = None
    error: str | None = None


@dataclass
class EnqueueCounts:
    new: int = 0
    waiting: int = 0  # already queued, not yet claimed
    in_flight: int = 0  # already claimed by a worker
    done: int = 0
    failed: int = 0  # failed earlier and left failed (validation failures without retry_failed)
    requeued: int = 0  # failed earlier and queued again

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _pool(url: str) -> Any:
    try:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool
    except ImportError as exc:  # pragma: no cover - the postgres extra is missing
        raise LedgerError("a PostgreSQL work queue needs psycopg: pip install 'extractkit[postgres]'") \
            from exc
    import psycopg

    try:  # one direct connection first: a wrong URL fails at once with the server's reason, where
        # the pool would retry for its whole timeout and then say only that it timed out
        psycopg.connect(url, connect_timeout=10).close()
    except psycopg.Error as exc:
        raise LedgerError(f"cannot open the work queue at {mask(url)}: {_redact.redact(str(exc).strip())}") \
            from None
    kwargs = {"autocommit": True, "row_factory": dict_row}
    pool = ConnectionPool(url, min_size=1, max_size=2, kwargs=kwargs, open=False, name="extractkit-queue",
                          **pool_options())  # fmt: skip
    try:
        pool.open(wait=True, timeout=30)
    except Exception as exc:
        pool.close()
        raise LedgerError(f"cannot open the work queue at {mask(url)}: {exc}") from exc
    return pool


class WorkQueue:
    """The queue on a PostgreSQL database (``url``: ``postgresql://user@host/db``). Thread-safe;
    its methods block (the worker calls them off its event loop). ``install=True`` applies the
    ledger's pending migrations (the queue's tables among them) under their advisory lock, safe
    when many processes start at once."""

    def __init__(self, url: str, *, install: bool = True):
        self.url = url
        self.target = mask(url)
        self._pool = _pool(url)
        if install:
            self.install()

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction on a pooled connection; every psycopg or pool error leaves as a
        ``LedgerError`` caused by it (``_outage.is_transient`` tells a lost server from a bug).
        Every statement of the queue is safe to send again after a lost connection: a claim
        not committed claimed nothing (one committed unanswered is a lease nobody renews: the job
        is claimed again when it runs out, see ``heartbeat``); heartbeats, marks and releases
        set states, not counts."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            text = _redact.redact(" ".join(str(exc).split()) or type(exc).__name__)
            raise LedgerError(f"work queue {self.target}: {text}") from exc

    def install(self) -> None:
        import psycopg

        from ._migrations import migrate_postgres

        try:
            with psycopg.connect(self.url, autocommit=True) as conn:  # tuple rows, as migrations read them
                migrate_postgres(conn)
        except psycopg.Error as exc:
            raise LedgerError(f"work queue {self.target}: {exc}") from exc

    # -- enqueue ------------------------------------------------------------------------------
    def enqueue(
        self, docs: Sequence[QueuedDocument], schema_hash: str, config_hash: str, *,
        requeue_outcomes: Iterable[str] = (), requeue_errors: bool = True,
    ) -> EnqueueCounts:  # fmt: skip
        """Add a job per document not yet queued for this schema and config (one transaction).
        A job that failed earlier is queued again when its outcome is in ``requeue_outcomes``
        (transient ones; validation ones with retry_failed) or, with ``requeue_errors``, when
        its document could not be read. Returns what was new and what was there already."""
        counts = EnqueueCounts()
        if not docs:
            return counts
        unique = list({d.sha256: d for d in reversed(docs)}.values())[::-1]  # first source wins
        requeue = sorted(set(requeue_outcomes))
        with self._tx() as c:
            rows = c.execute(
                "INSERT INTO work_queue (document_sha256, schema_hash, config_hash, source, source_bytes,"
                " doc_type, size) SELECT v.sha, %s, %s, v.source, v.source_bytes, v.doc_type, v.size"
                " FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::text[], %s::bigint[])"
                " AS v(sha, source, source_bytes, doc_type, size)"
                " ON CONFLICT ON CONSTRAINT work_queue_one_job DO NOTHING RETURNING document_sha256",
                (schema_hash, config_hash, [d.sha256 for d in unique], [d.source for d in unique],
                 [d.source_bytes for d in unique], [d.doc_type for d in unique], [d.size for d in unique]),
            ).fetchall()  # fmt: skip
            new = {r["document_sha256"] for r in rows}
            counts.new = len(new)
            old = [d.sha256 for d in unique if d.sha256 not in new]
            if old:
                rows = c.execute(
                    "UPDATE work_queue SET state = 'waiting', worker_id = NULL, lease_until = NULL,"
                    " source = v.source, source_bytes = v.source_bytes, enqueued_at = now()"
                    " FROM (SELECT unnest(%s::text[]) AS sha, unnest(%s::text[]) AS source,"
                    " unnest(%s::bytea[]) AS source_bytes) v"
                    " WHERE document_sha256 = v.sha AND schema_hash = %s AND config_hash = %s"
                    " AND state = 'failed' AND (outcome = ANY(%s) OR (%s AND result_status = 'error'))"
                    " RETURNING document_sha256",
                    ([d.sha256 for d in unique if d.sha256 not in new],
                     [d.source for d in unique if d.sha256 not in new],
                     [d.source_bytes for d in unique if d.sha256 not in new],
                     schema_hash, config_hash, requeue, requeue_errors),
                ).fetchall()  # fmt: skip
                counts.requeued = len(rows)
                requeued = {r["document_sha256"] for r in rows}
                for r in c.execute(
                    "SELECT state, count(*) AS n FROM work_queue WHERE schema_hash = %s AND config_hash = %s"
                    " AND document_sha256 = ANY(%s) GROUP BY state",
                    (schema_hash, config_hash, [s for s in old if s not in requeued]),
                ).fetchall():
                    key = {"claimed": "in_flight"}.get(r["state"], r["state"])
                    setattr(counts, key, getattr(counts, key) + r["n"])
        return counts

    # -- workers ------------------------------------------------------------------------------
    def register(self, worker_id: str, *, lease_s: float, schema_hash: str | None = None,
                 config_hash: str | None = None, concurrency: int | None = None) -> None:  # fmt: skip
        with self._tx() as c:
            c.execute(
                "INSERT INTO work_workers (id, host, pid, schema_hash, config_hash, concurrency, lease_s)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (worker_id, socket.gethostname(), os.getpid(), schema_hash, config_hash, concurrency,
                 lease_s),
            )

    def claim(
        self, worker_id: str, schema_hash: str, config_hash: str, n: int, lease_s: float
    ) -> list[ClaimedJob]:
        """Up to ``n`` jobs of this schema and config for ``worker_id``, leased for ``lease_s``
        seconds: waiting ones first, then those whose lease has expired (their worker is gone).
        ``SKIP LOCKED``: workers claiming at once never wait for nor take each other's rows."""
        with self._tx() as c:
            rows = c.execute(
                "WITH fresh AS (SELECT id, false AS re FROM work_queue WHERE state = 'waiting'"
                "  AND schema_hash = %(s)s AND config_hash = %(c)s ORDER BY id LIMIT %(n)s"
                "  FOR UPDATE SKIP LOCKED),"
                " expired AS (SELECT id, true AS re FROM work_queue WHERE state = 'claimed'"
                "  AND lease_until < now() AND schema_hash = %(s)s AND config_hash = %(c)s"
                "  ORDER BY lease_until LIMIT %(n)s FOR UPDATE SKIP LOCKED),"
                " picked AS (SELECT * FROM expired UNION ALL SELECT * FROM fresh LIMIT %(n)s)"
                " UPDATE work_queue q SET reclaims = q.reclaims + picked.re::int,"
                " reclaimed_from = CASE WHEN picked.re THEN q.worker_id ELSE q.reclaimed_from END,"
                " state = 'claimed', worker_id = %(w)s, lease_until = now() + make_interval(secs => %(l)s),"
                " claimed_at = now(), attempts = q.attempts + 1"
                " FROM picked WHERE q.id = picked.id"
                " RETURNING q.id, q.document_sha256, q.source, q.source_bytes, q.doc_type, q.attempts,"
                " picked.re",
                {"s": schema_hash, "c": config_hash, "n": n, "w": worker_id, "l": lease_s},
            ).fetchall()
        rows.sort(key=lambda r: r["id"])
        return [ClaimedJob(id=r["id"], sha256=r["document_sha256"], source=r["source"],
                           source_bytes=bytes(r["source_bytes"]) if r["source_bytes"] is not None else None,
                           doc_type=r["doc_type"], attempts=r["attempts"], reclaimed=r["re"])
                for r in rows]  # fmt: skip

    def heartbeat(self, worker_id: str, lease_s: float, job_ids: Sequence[int] | None = None) -> int:
        """Extend the lease of every job ``worker_id`` holds (only of ``job_ids`` when given: the
        ones it knows it holds, so a claim whose answer was lost in an outage is not kept alive
        by its heartbeats); returns how many were extended."""
        with self._tx() as c:
            c.execute("UPDATE work_workers SET seen_at = now() WHERE id = %s", (worker_id,))
            if job_ids is None:
                cur = c.execute(
                    "UPDATE work_queue SET lease_until = now() + make_interval(secs => %s)"
                    " WHERE worker_id = %s AND state = 'claimed'",
                    (lease_s, worker_id),
                )
            else:
                cur = c.execute(
                    "UPDATE work_queue SET lease_until = now() + make_interval(secs => %s)"
                    " WHERE worker_id = %s AND state = 'claimed' AND id = ANY(%s)",
                    (lease_s, worker_id, list(job_ids)),
                )
            return cur.rowcount

    def finish(self, worker_id: str, results: Sequence[Finished]) -> int:
        """Mark jobs done or failed (one transaction). Only a job this worker still holds is
        changed: one whose lease expired and that another worker claimed is left to that one.
        Returns how many were marked."""
        if not results:
            return 0
        with self._tx() as c:
            cur = c.execute(
                "UPDATE work_queue q SET"
                " state = CASE WHEN v.done THEN 'done' ELSE 'failed' END,"
                " finished_at = now(), lease_until = NULL, result_status = v.rs, outcome = v.outcome,"
                " error = v.error"
                " FROM unnest(%s::bigint[], %s::boolean[], %s::text[], %s::text[], %s::text[])"
                " AS v(id, done, rs, outcome, error)"
                " WHERE q.id = v.id AND q.worker_id = %s AND q.state = 'claimed'",
                ([r.job_id for r in results], [r.done for r in results],
                 [r.result_status for r in results], [r.outcome for r in results], [r.error for r in results],
                 worker_id),
            )  # fmt: skip
            return cur.rowcount

    def release(self, worker_id: str, job_ids: Sequence[int] | None = None) -> int:
        """Put jobs this worker holds back to ``waiting`` (all of them when ``job_ids`` is None):
        a clean stop leaves nothing for the lease to time out."""
        with self._tx() as c:
            if job_ids is None:
                cur = c.execute(
                    "UPDATE work_queue SET state = 'waiting', lease_until = NULL"
                    " WHERE worker_id = %s AND state = 'claimed'",
                    (worker_id,),
                )
            else:
                cur = c.execute(
                    "UPDATE work_queue SET state = 'waiting', lease_until = NULL"
                    " WHERE worker_id = %s AND state = 'claimed' AND id = ANY(%s)",
                    (worker_id, list(job_ids)),
                )
            return cur.rowcount

    def stop(self, worker_id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE work_workers SET stopped_at = now(), seen_at = now() WHERE id = %s",
                      (worker_id,))  # fmt: skip

    def pending(self, schema_hash: str, config_hash: str) -> tuple[int, int]:
        """(waiting, claimed) jobs of this schema and config: a draining worker stops at (0, 0)."""
        with self._tx() as c:
            row = c.execute(
                "SELECT count(*) FILTER (WHERE state = 'waiting') AS waiting,"
                " count(*) FILTER (WHERE state = 'claimed') AS claimed"
                " FROM work_queue WHERE schema_hash = %s AND config_hash = %s"
                " AND state IN ('waiting', 'claimed')",
                (schema_hash, config_hash),
            ).fetchone()
        return int(row["waiting"]), int(row["claimed"])

    def jobs_of(self, shas: Sequence[str], schema_hash: str, config_hash: str) -> dict[str, str]:
        """The state of the jobs of these documents for this schema and config."""
        with self._tx() as c:
            rows = c.execute(
                "SELECT document_sha256, state FROM work_queue WHERE schema_hash = %s AND config_hash = %s"
                " AND document_sha256 = ANY(%s)",
                (schema_hash, config_hash, list(shas)),
            ).fetchall()
        return {r["document_sha256"]: r["state"] for r in rows}

    # -- status -------------------------------------------------------------------------------
    def status(self, *, window_s: float = RATE_WINDOW_S, all_workers: bool = False) -> dict[str, Any]:
        """Totals by state (``expired``: claimed jobs whose lease has run out, waiting to be
        claimed again), per schema and config, and per worker. A running worker's rate is over
        its documents finished in the last ``window_s``; a stopped or lost one's is frozen at what
        it did over the time it was active (documents / (last heartbeat or stop - start)).
        Workers stopped or silent for longer than ``window_s`` are counted in ``hidden_workers``
        (``stopped``, ``lost``) instead of listed, unless ``all_workers``."""
        with self._tx() as c:
            totals = c.execute(
                "SELECT count(*) FILTER (WHERE state = 'done') AS done,"
                " count(*) FILTER (WHERE state = 'failed') AS failed,"
                " count(*) FILTER (WHERE state = 'waiting') AS waiting,"
                " count(*) FILTER (WHERE state = 'claimed' AND lease_until >= now()) AS in_flight,"
                " count(*) FILTER (WHERE state = 'claimed' AND lease_until < now()) AS expired,"
                " coalesce(sum(reclaims), 0) AS reclaims, count(*) AS jobs FROM work_queue"
            ).fetchone()
            chains = c.execute(
                "SELECT schema_hash, config_hash, count(*) FILTER (WHERE state = 'done') AS done,"
                " count(*) FILTER (WHERE state = 'failed') AS failed,"
                " count(*) FILTER (WHERE state = 'waiting') AS waiting,"
                " count(*) FILTER (WHERE state = 'claimed') AS claimed"
                " FROM work_queue GROUP BY schema_hash, config_hash ORDER BY schema_hash, config_hash"
            ).fetchall()
            workers = c.execute(
                "SELECT w.id, w.host, w.pid, w.concurrency, w.lease_s, w.started_at, w.seen_at, w.stopped_at,"
                " extract(epoch FROM now() - w.seen_at) AS seen_ago_s,"
                " extract(epoch FROM least(now() - w.started_at, make_interval(secs => %(win)s))) AS span_s,"
                " extract(epoch FROM coalesce(w.stopped_at, w.seen_at) - w.started_at) AS active_s,"
                " s.in_flight, s.done, s.failed, s.recent FROM work_workers w CROSS JOIN LATERAL ("
                "  SELECT count(*) FILTER (WHERE q.state = 'claimed') AS in_flight,"
                "  count(*) FILTER (WHERE q.state = 'done') AS done,"
                "  count(*) FILTER (WHERE q.state = 'failed') AS failed,"
                "  count(*) FILTER (WHERE q.state IN ('done', 'failed')"
                "   AND q.finished_at >= now() - make_interval(secs => %(win)s)) AS recent"
                "  FROM work_queue q WHERE q.worker_id = w.id) s"
                " WHERE %(all)s"
                "  OR coalesce(w.stopped_at, w.seen_at) >= now() - make_interval(secs => %(win)s)"
                " ORDER BY w.started_at",
                {"win": window_s, "all": all_workers},
            ).fetchall()
            hidden = c.execute(
                "SELECT count(*) FILTER (WHERE stopped_at IS NOT NULL) AS stopped,"
                " count(*) FILTER (WHERE stopped_at IS NULL) AS lost FROM work_workers"
                " WHERE NOT %(all)s"
                "  AND coalesce(stopped_at, seen_at) < now() - make_interval(secs => %(win)s)",
                {"win": window_s, "all": all_workers},
            ).fetchone()
        out_workers = []
        for w in workers:
            if w["stopped_at"] is not None:
                state = "stopped"
            elif w["seen_ago_s"] > w["lease_s"]:
                state = "lost"  # no heartbeat for longer than its lease: its jobs are reclaimed
            else:
                state = "running"
            if state == "running":
                rate = w["recent"] * 60.0 / max(float(w["span_s"] or 0.0), 1.0)
            else:  # frozen: what it did while it ran, however long ago that was
                rate = (w["done"] + w["failed"]) * 60.0 / max(float(w["active_s"] or 0.0), 1.0)
            out_workers.append({
                "id": w["id"], "host": w["host"], "pid": w["pid"], "state": state,
                "concurrency": w["concurrency"], "in_flight": w["in_flight"], "done": w["done"],
                "failed": w["failed"], "per_minute": round(rate, 1),
                "active_s": round(float(w["active_s"] or 0.0), 1),
                "last_seen_s": round(float(w["seen_ago_s"]), 1),
            })  # fmt: skip
        return {
            "totals": {k: int(v) for k, v in totals.items()},
            "chains": [dict(r) for r in chains],
            "workers": out_workers,
            "hidden_workers": {k: int(v) for k, v in hidden.items()},
            "rate_window_s": window_s,
        }

    def failures(self, *, limit: int = 100) -> tuple[int, list[dict[str, Any]]]:
        """(how many jobs ended failed, the ``limit`` most recent of them): each with its
        document's source, sha256, chain, the result's status and outcome and the reason the
        worker recorded (the error ``extract`` prints), newest first."""
        with self._tx() as c:
            total = c.execute("SELECT count(*) AS n FROM work_queue WHERE state = 'failed'").fetchone()["n"]
            rows = c.execute(
                "SELECT source, document_sha256, schema_hash, config_hash, result_status, outcome, error,"
                " worker_id, finished_at FROM work_queue WHERE state = 'failed'"
                " ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT %s",
                (limit,),
            ).fetchall()
        return int(total), [dict(r) for r in rows]
