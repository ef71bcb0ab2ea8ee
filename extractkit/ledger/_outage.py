"""Riding out a short outage of the shared (PostgreSQL) ledger: a restart, a failover.

``is_transient(exc)`` says whether an error is the database being away (the connection refused,
reset or closed by a restart, "the database system is shutting down", "terminating connection
due to administrator command", the pool finding no live connection in time) as opposed to a
mistake that retrying cannot fix (bad SQL, a violated constraint, a wrong password given at
open). ``Outage`` retries the former with backoff (tenacity) on one clock shared by every call
of a worker -- claims, heartbeats, marks, the ledger's writes, the shared limiter's leases --
and gives up with ``LedgerUnavailable`` once the database has been away for longer than
``limit_s``. It says so twice at most per outage: when it starts and when it ends.

``ResilientLedger`` is a ``RecordingLedger`` whose calls go through an ``Outage``. A write that
failed before its COMMIT was sent rolled back and is simply sent again (``record`` is one
transaction). One whose COMMIT went out and got no answer (``LedgerError.commit_unknown``) may
have been written: before sending it again, the ledger is asked whether the extraction is there
(its first attempt's start time and tier), so a retried ``record`` never writes it twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from .._errors import LedgerUnavailable

log = logging.getLogger("extractkit.ledger")

T = TypeVar("T")
_NAMED = re.compile(r"^(ledger|work queue|shared rate limits:) \S+: ")
OUTAGE_LIMIT_S = 60.0  # default: how long a worker waits for the ledger to come back
# SQLSTATE classes of a server going away: 08 connection exception, 57P0x shutdown / cannot connect now
_TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03")


# a connection refused by a server that is up, for a reason another try will not change (a FATAL
# other than these), or a host name that does not resolve: a mistake in the URL, not an outage
_SERVER_AWAY = ("the database system is starting up", "the database system is shutting down",
                "the database system is in recovery mode", "the database system is not yet accepting",
                "terminating connection", "too many clients", "too many connections")  # fmt: skip


def _refused_for_good(message: str) -> bool:
    if "could not translate host name" in message or "failed to resolve host" in message:
        return True
    return "FATAL:" in message and not any(s in message for s in _SERVER_AWAY)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps: a ``LedgerError`` carries the psycopg error as its
    cause) is the database being unreachable, which a later attempt may get past: psycopg's
    ``OperationalError`` (connection refused, lost, reset, the server shutting down or
    restarting), a SQLSTATE of class 08 or 57P01-57P03, or the pool's ``PoolTimeout``. Never a
    programming, integrity or data error, nor anything that is not a database error."""
    try:
        import psycopg
        from psycopg_pool import PoolTimeout
    except ImportError:  # pragma: no cover - no PostgreSQL support installed: nothing is transient
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, PoolTimeout):
            return True
        if isinstance(e, psycopg.Error):
            state = getattr(e, "sqlstate", None) or ""
            if isinstance(e, psycopg.OperationalError) and not state:
                # a failed connection carries no SQLSTATE: the server's FATAL reason tells a server
                # away (starting up, shutting down) from a wrong password or a missing database
                return not _refused_for_good(str(e))
            # not IntegrityError, ProgrammingError, DataError...: retrying will not help
            return isinstance(e, psycopg.OperationalError) or state.startswith(_TRANSIENT_SQLSTATES)
        e = e.__cause__ or e.__context__
    return False


class Outage:
    """Patience with the database, shared by every call of one worker (thread-safe).

    ``call(fn, ...)`` (in a thread) and ``acall(fn, ...)`` (on the event loop, ``fn`` run in a
    thread) retry ``fn`` while it fails with a transient error, with exponential backoff (0.1 s
    up to ``max_wait_s``), until the outage -- timed from the first failure of any call, until
    any call succeeds -- has lasted ``limit_s``: then ``LedgerUnavailable``. After that, calls
    are tried once each (the worker is stopping; a database back by then still answers).
    ``notify(line)``: told "ledger unreachable, retrying..." once per outage and "ledger back
    after N s" when it ends (default: the ``extractkit.ledger`` logger, at WARNING)."""

    def __init__(self, limit_s: float = OUTAGE_LIMIT_S, *, notify: Callable[[str], None] | None = None,
                 target: str = "the ledger", max_wait_s: float = 2.0) -> None:  # fmt: skip
        if limit_s < 0:
            raise ValueError(f"the outage limit must be >= 0 seconds, got {limit_s}")
        self.limit_s = float(limit_s)
        self.notify = notify or log.warning
        self.target = target
        self.max_wait_s = max_wait_s
        self.since: float | None = None  # time.monotonic() of the first failure of this outage
        self.outages = 0  # outages ridden out so far
        self.gave_up: LedgerUnavailable | None = None
        self.last_error: BaseException | None = None
        self._lock = threading.Lock()

    # -- the clock --------------------------------------------------------------------------------
    def failed(self, exc: BaseException, started: float | None = None) -> None:
        """A transient failure of a call started at ``started`` (``time.monotonic()``; default
        now): starts the outage, timed from then (a call may have waited for a connection first),
        and says so once; raises ``LedgerUnavailable`` once it has lasted longer than the limit."""
        now = time.monotonic()
        say = False
        with self._lock:
            self.last_error = exc
            if self.since is None:
                self.since = min(now, started) if started is not None else now
                say = self.gave_up is None and now - self.since < self.limit_s
            away = now - self.since
            if self.gave_up is None and away < self.limit_s:
                if say:
                    self.notify("ledger unreachable, retrying...")
                return
            if self.gave_up is None:
                self.gave_up = self._unavailable(away, exc)
            err = self.gave_up
        raise err from exc

    def ok(self) -> None:
        """A call succeeded: the outage (if any) is over."""
        if self.since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self.since is None:
                return
            away = time.monotonic() - self.since
            self.since = None
            self.outages += 1
        self.notify(f"ledger back after {away:.0f} s")

    def _unavailable(self, away: float, exc: BaseException) -> LedgerUnavailable:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        cause = _NAMED.sub("", cause, count=1)  # "ledger postgresql://...: " once is enough
        return LedgerUnavailable(
            f"{self.target} was unreachable for {away:.0f} s (outage limit {self.limit_s:g} s; last error: "
            f"{cause})", seconds=away,
        )  # fmt: skip

    @property
    def away_s(self) -> float:
        since = self.since
        return 0.0 if since is None else time.monotonic() - since

    # -- retrying ---------------------------------------------------------------------------------
    def _stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert exc is not None
        self.failed(exc, state.start_time)  # raises LedgerUnavailable past the limit
        return False

    def _retry(self, exc: BaseException) -> bool:
        return self.gave_up is None and is_transient(exc)

    def _options(self) -> dict[str, Any]:
        wait = wait_exponential(multiplier=0.1, max=self.max_wait_s) + wait_random(0, 0.05)
        return {"retry": retry_if_exception(self._retry), "stop": self._stop, "reraise": True, "wait": wait}

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried through a transient outage (blocking: in a thread)."""
        try:
            for attempt in Retrying(**self._options()):
                with attempt:
                    result = fn(*args, **kwargs)
        except LedgerUnavailable:
            raise
        except Exception as exc:
            if self.gave_up is not None and is_transient(exc):
                raise self.gave_up from exc
            raise
        self.ok()
        return result

    async def acall(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a thread, retried through a transient outage; the waits
        between tries are on the event loop."""
        try:
            async for attempt in AsyncRetrying(**self._options()):
                with attempt:
                    result = await asyncio.to_thread(fn, *args, **kwargs)
        except LedgerUnavailable:
            raise
        except Exception as exc:
            if self.gave_up is not None and is_transient(exc):
                raise self.gave_up from exc
            raise
        self.ok()
        return result


# Was this extraction written by a COMMIT whose answer was lost? Its first attempt is told apart by
# its start time and tier (set by the chain before the write, never by the ledger)
_WRITTEN = (
    "SELECT e.id FROM extractions e JOIN attempts a ON a.extraction_id = e.id"
    " WHERE e.document_sha256 = ? AND e.schema_hash = ? AND e.config_hash = ? AND a.number = ?"
    " AND a.tier = ? AND a.started_at = ? ORDER BY e.id DESC LIMIT 1"
)


class ResilientLedger:
    """A ``RecordingLedger`` (the worker's) whose calls ride out a database outage (``Outage``);
    anything else is the wrapped ledger's. See the module docstring for why a retried ``record``
    never writes an extraction twice."""

    def __init__(self, ledger: Any, outage: Outage) -> None:
        self._ledger = ledger
        self.outage = outage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def start_run(self, kind: str, config: dict[str, Any] | None = None,
                  config_hash: str | None = None, schema_hash: str | None = None) -> str:  # fmt: skip
        return self.outage.call(self._ledger.start_run, kind, config, config_hash, schema_hash)

    def finish_run(self, run_id: str, status: str, **counts: int) -> None:
        self.outage.call(self._ledger.finish_run, run_id, status, **counts)

    def record_error(self, **kwargs: Any) -> str:
        return self.outage.call(self._ledger.record_error, **kwargs)

    def add_document_paths(self, seen: Iterable[tuple[str, str, bytes, str | None]]) -> None:
        rows = list(seen)
        self.outage.call(self._ledger.add_document_paths, rows)

    def add_source_files(self, seen: Iterable[tuple[str, str]]) -> None:
        rows = list(seen)
        self.outage.call(self._ledger.add_source_files, rows)

    def find_final_by_file(self, file_sha256: str, schema_hash: str, config_hash: str) -> Any:
        return self.outage.call(self._ledger.find_final_by_file, file_sha256, schema_hash, config_hash)

    def find_final(self, document_sha256: str, schema_hash: str, config_hash: str, *,
                   forced_tier: str | None = None) -> Any:  # fmt: skip
        return self.outage.call(self._ledger.find_final, document_sha256, schema_hash, config_hash,
                                forced_tier=forced_tier)  # fmt: skip

    async def arecord(self, extractor: Any, result: Any, **kwargs: Any) -> str:
        """``record`` on the ledger's writer thread, sent again through an outage; a COMMIT that
        went unanswered is looked up before anything is sent again."""
        unknown = False
        started = time.monotonic()

        def lookup_or_none() -> str | None:
            return self.written(extractor, result, kwargs.get("config_hash")) if unknown else None

        while True:
            try:
                if unknown:  # only then is there anything to look up (a call that touches no
                    # database must not tell the outage clock the database is back)
                    found = await self.outage.acall(lookup_or_none)
                    if found is not None:
                        return found
                ext_id: str = await self._ledger.arecord(extractor, result, **kwargs)
            except LedgerUnavailable:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                unknown = unknown or bool(getattr(exc, "commit_unknown", False))
                self.outage.failed(exc, started)  # raises past the limit
                await asyncio.sleep(min(self.outage.max_wait_s, 0.1 + self.outage.away_s / 4))
                continue
            self.outage.ok()
            return ext_id

    def written(self, extractor: Any, result: Any, config_hash: str | None = None) -> str | None:
        """The id of the extraction ``result`` if the ledger already holds it, else None."""
        attempts = list(getattr(result, "attempts", ()) or ())
        first = attempts[0] if attempts else None
        if first is None or not getattr(first, "started_at", None):
            return None  # nothing to tell it apart by: sending it again supersedes, never duplicates
        rows = self._ledger.query(_WRITTEN, (result.document_sha256, result.schema_hash,
                                             config_hash or extractor.config_hash, first.number,
                                             first.tier, first.started_at))  # fmt: skip
        return str(rows[0][0]) if rows else None
