"""Shared rate limits: one row per key (a model at a base URL) in the PostgreSQL ledger.

The row holds the state of a generic cell rate algorithm (GCRA) on the database's clock:
``tat`` (the "theoretical arrival time", seconds since the epoch) is the instant up to which the
limit's budget has been handed out. A process leases a slice of it in one statement: the slice
starts at ``greatest(tat, now, paused_until)`` and is ``amount`` seconds of the limit long (a
request costs ``max(60 / rpm, tokens * 60 / tpm)`` seconds), and ``tat`` moves past it. The
process spends the slice itself, pacing its requests inside it, so there is one round trip per
slice, not per request; slices of different processes never overlap, so N processes together
stay under the limit. A slice is a stretch of time: the budget of a process that dies with it
unspent is gone when its stretch has passed, and nobody waits for it after that. A process
returns the unspent future part of a slice (``adjust`` with a negative amount: ``tat`` moves
back, never before now) and charges usage above its estimate (a positive amount).

A 429 answer sets ``paused_until`` (now + Retry-After) and pushes ``tat`` on by the extension of
the pause, and ``pg_notify`` tells every listening process at once (channel ``CHANNEL``, a JSON
payload); the others shift what they have not sent yet by the same amount. The clock is always
``clock_timestamp()``: the machines' clocks never meet.

The table is migration ``0009_shared_limits`` (UNLOGGED on PostgreSQL: pacing state, not history).
All SQL of the shared limiter is here; ``extractkit.batch`` drives it (``SharedLimiter``), off the
event loop. Statements use psycopg's parameters directly: they run on PostgreSQL only.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import _redact
from .._errors import ConfigError, LedgerError, MissingDependencyError
from ._pg import mask

CHANNEL = "extractkit_limits"

# migration 0009_shared_limits, on both engines (SQLite's ledger paces one process and leaves the
# table empty; both lists name the same migrations). Written in SQLite's style; on PostgreSQL the
# table is UNLOGGED: pacing state, not history (a crash empties it, and the next lease starts afresh)
SHARED_LIMITS = """
        CREATE TABLE IF NOT EXISTS shared_limits (
            key TEXT PRIMARY KEY,
            tat REAL NOT NULL,
            paused_until REAL NOT NULL DEFAULT 0,
            last_delta REAL NOT NULL DEFAULT 0,
            rpm REAL,
            tpm REAL,
            leases INTEGER NOT NULL DEFAULT 0,
            pauses INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
"""
SHARED_LIMITS_PG = SHARED_LIMITS.replace("CREATE TABLE", "CREATE UNLOGGED TABLE", 1)

_NOW = "(SELECT extract(epoch FROM clock_timestamp())::float8 AS now)"

# lease ``amount`` seconds of the limit after applying ``adjust`` (returned budget < 0, usage
# above the estimate > 0); the slice starts at ``start`` on the database clock ``now``
RESERVE = f"""
INSERT INTO shared_limits AS s (key, tat, rpm, tpm, leases, updated_at)
SELECT %(key)s, c.now + %(amount)s, %(rpm)s, %(tpm)s, 1, c.now FROM {_NOW} c
ON CONFLICT (key) DO UPDATE SET
    tat = greatest(s.tat + %(adjust)s, excluded.updated_at, s.paused_until) + %(amount)s,
    rpm = excluded.rpm, tpm = excluded.tpm, leases = s.leases + 1, updated_at = excluded.updated_at
RETURNING s.tat - %(amount)s AS start, s.updated_at AS now, s.paused_until AS paused_until
"""

# give back (adjust < 0) or charge (adjust > 0) without leasing: never moves tat before now
ADJUST = f"""
UPDATE shared_limits AS s SET tat = greatest(s.tat + %(adjust)s, c.now), updated_at = c.now
FROM {_NOW} c WHERE s.key = %(key)s
"""

_EXTENSION = "greatest(0, excluded.updated_at + %(seconds)s - greatest(s.paused_until, excluded.updated_at))"

# a 429: pause every process for ``seconds``; ``last_delta`` is how much later than before the
# pause now ends (what everyone shifts by), computed from the old values (SET sees them)
_PAUSE_ROW = f"""
INSERT INTO shared_limits AS s (key, tat, paused_until, last_delta, pauses, updated_at)
SELECT %(key)s, c.now + %(seconds)s, c.now + %(seconds)s, %(seconds)s, 1, c.now FROM {_NOW} c
ON CONFLICT (key) DO UPDATE SET
    last_delta = {_EXTENSION},
    tat = greatest(s.tat, excluded.updated_at) + {_EXTENSION},
    paused_until = greatest(s.paused_until, excluded.updated_at + %(seconds)s),
    pauses = s.pauses + 1, updated_at = excluded.updated_at
RETURNING s.key, s.paused_until AS until, s.last_delta AS delta, s.updated_at AS now
"""
PAUSE = f"""
WITH p AS ({_PAUSE_ROW})
SELECT p.until, p.delta, p.now,
       pg_notify('{CHANNEL}', json_build_object('key', p.key, 'until', p.until, 'delta', p.delta,
                                                'now', p.now, 'origin', %(origin)s::text)::text)
FROM p
"""

STATE = """
SELECT key, tat, paused_until, rpm, tpm, leases, pauses, updated_at,
       extract(epoch FROM clock_timestamp())::float8 AS now
FROM shared_limits WHERE key = %(key)s
"""


@dataclass(frozen=True)
class Grant:
    """A leased slice: it starts at ``start`` (database clock, seconds since the epoch), read at
    ``now``; ``paused_until`` is the key's pause (0: none)."""

    start: float
    now: float
    paused_until: float


@dataclass(frozen=True)
class Pause:
    """A 429 recorded: everyone waits until ``until``, ``delta`` seconds longer than before."""

    key: str
    until: float
    delta: float
    now: float
    origin: str = ""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the postgres extra is part of dev
        raise MissingDependencyError(
            "a PostgreSQL ledger needs psycopg: pip install 'extractkit[postgres]'"
        ) from exc
    return psycopg


class LimitStore:
    """The shared limits of one PostgreSQL database: ``reserve``, ``adjust``, ``pause``, ``state``
    (blocking calls: run them in a worker thread) and ``listen`` (a thread of its own).

    ``conninfo`` is a ``postgresql://`` URL (``limit_store(ledger)``: the ledger's own database,
    already migrated; a URL alone is migrated at first use, as ``Ledger`` does). One connection,
    opened at first use, in autocommit with ``synchronous_commit`` off (the state is worth less
    than a flush per lease), serves every call of this process; a broken connection is reopened
    once per call.
    """

    def __init__(self, conninfo: str, *, ensure_table: bool = True):
        if not conninfo.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"shared rate limits need a postgresql:// URL, got {mask(conninfo)!r}")
        self.conninfo = conninfo
        self.ensure_table = ensure_table
        self._conn: Any = None
        self._lock = threading.Lock()
        self._ready = False

    # -- connection ------------------------------------------------------------------------------
    def _connect(self) -> Any:
        psycopg = _psycopg()
        conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10)
        conn.execute("SET synchronous_commit TO off")
        if self.ensure_table and not self._ready:  # a database given by URL: migrated as Ledger does
            from ._migrations import migrate_postgres

            migrate_postgres(conn)
            self._ready = True
        return conn

    def _run(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        psycopg = _psycopg()
        params["key"] = _redact.redact_param(params["key"])  # a model name is text we did not write
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    cur = self._conn.execute(sql, params)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError as exc:
                    self._close_conn()
                    if attempt == 2:
                        raise LedgerError(f"shared rate limits: the database did not answer: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close_conn()

    # -- the operations --------------------------------------------------------------------------
    def reserve(self, key: str, amount: float, *, adjust: float = 0.0, rpm: float | None = None,
                tpm: float | None = None) -> Grant:  # fmt: skip
        """Lease ``amount`` seconds of ``key``'s limit (after applying ``adjust``)."""
        rows = self._run(RESERVE, {"key": key, "amount": float(amount), "adjust": float(adjust),
                                   "rpm": rpm, "tpm": tpm})  # fmt: skip
        start, now, paused = rows[0]
        return Grant(float(start), float(now), float(paused))

    def adjust(self, key: str, seconds: float) -> None:
        """Give back (``seconds`` < 0: unspent budget) or charge (> 0: usage above the estimate)."""
        if seconds:
            self._run(ADJUST, {"key": key, "adjust": float(seconds)})

    def pause(self, key: str, seconds: float, *, origin: str = "") -> Pause:
        """A 429 on ``key``: pause it for ``seconds`` and tell every listener."""
        rows = self._run(PAUSE, {"key": key, "seconds": float(seconds), "origin": origin})
        until, delta, now, _ = rows[0]
        return Pause(key, float(until), float(delta), float(now), origin)

    def state(self, key: str) -> dict[str, Any] | None:
        """The row of ``key`` with the database's ``now`` (None: never leased)."""
        rows = self._run(STATE, {"key": key})
        if not rows:
            return None
        names = ("key", "tat", "paused_until", "rpm", "tpm", "leases", "pauses", "updated_at", "now")
        return dict(zip(names, rows[0], strict=True))

    def listen(self, on_pause: Callable[[Pause, float], None]) -> Listener:
        """Start a thread that calls ``on_pause(pause, received_at)`` (``time.monotonic()``) for
        every 429 any process records; ``.stop()`` ends it."""
        return Listener(self.conninfo, on_pause)


class Listener:
    """LISTEN on ``CHANNEL`` in a daemon thread with a connection of its own. A lost connection is
    reopened (pauses announced meanwhile are still applied at the next lease: they are in the row)."""

    def __init__(self, conninfo: str, on_pause: Callable[[Pause, float], None]):
        self.conninfo = conninfo
        self.on_pause = on_pause
        self._stop = threading.Event()
        self.listening = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="extractkit-limits-listen", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        psycopg = _psycopg()
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.25):
                            received = time.monotonic()
                            try:
                                data = json.loads(note.payload)
                                pause = Pause(str(data["key"]), float(data["until"]), float(data["delta"]),
                                              float(data["now"]), str(data.get("origin") or ""))  # fmt: skip
                            except (ValueError, KeyError, TypeError):
                                continue
                            self.on_pause(pause, received)
            except psycopg.Error:
                self.listening.clear()
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)


def limit_store(ledger: Any) -> LimitStore:
    """The shared limits of a PostgreSQL ``Ledger``'s database (its own connection: a lease never
    waits behind the ledger's writes for a pooled one)."""
    pg = getattr(ledger, "_pg", None)
    if pg is None:
        raise ConfigError(
            "shared rate limits need a PostgreSQL ledger (postgresql://...), not "
            f"{getattr(ledger, 'target', ledger)}: a SQLite ledger paces one process (RateLimiter)"
        )
    return LimitStore(pg.url, ensure_table=False)
