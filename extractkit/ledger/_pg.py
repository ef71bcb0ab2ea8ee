"""The PostgreSQL engine of the ledger: psycopg 3 over a ``psycopg_pool.ConnectionPool``.

``Ledger("postgresql://user@host/db")`` opens one of these. Statements arrive in the ledger's one
dialect (SQLite's, ``?`` parameters) and are translated once each (``_dialect.to_postgres``);
every parameter passes the secret redaction first, as on SQLite (``_ledger.clean_params``); rows
come back as ``Row`` (``row["col"]`` and ``row[0]``, like ``sqlite3.Row``); every psycopg error
leaves as a ``LedgerError`` whose text names the ledger with its password masked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .. import _redact
from .._errors import LedgerError
from ._dialect import to_postgres

if TYPE_CHECKING:
    import psycopg

URL_SCHEMES = ("postgresql://", "postgres://")
INSTALL_HINT = "pip install 'extractkit[postgres]'"
CONNECT_TIMEOUT_S = 10
POOL_MAX = 8  # connections per process: the writer thread, the event loop's reads, a report
POOL_TIMEOUT_S = 5  # how long a call waits for a pooled connection before PoolTimeout: a server
# back within it goes unnoticed; a worker's ``Outage`` retries after it (``_outage.py``)

# psycopg and its pool log every connection lost and every reconnection attempt: a worker reports a
# database outage itself, in two lines (``_outage.Outage``), so their records never reach a terminal
# through Python's last-resort handler (an application that configures logging still sees them)
logging.getLogger("psycopg").addHandler(logging.NullHandler())


def pool_options() -> dict[str, Any]:
    """What both pools (the ledger's, the work queue's) share: each connection is checked before it
    is handed out, so one a restarted server has closed is replaced, not used; and a call waits at
    most ``POOL_TIMEOUT_S`` for one."""
    from psycopg_pool import ConnectionPool

    return {"check": ConnectionPool.check_connection, "timeout": POOL_TIMEOUT_S}


def is_url(target: object) -> bool:
    """A ``postgresql://`` (or ``postgres://``) URL, as opposed to a SQLite file path."""
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def mask(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: printable."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class Row:
    """One result row: ``row["col"]``, ``row[0]``, ``keys()``, iteration over values, ``dict(row)``
    -- what ``sqlite3.Row`` offers, so code reading rows runs on both engines."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values and self._index == other._index
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    desc = cursor.description or []
    index = {d.name: i for i, d in enumerate(desc)}
    return lambda values: Row(values, index)


def _import() -> Any:
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise LedgerError(
            f"a postgresql:// ledger needs psycopg 3 and psycopg-pool: {INSTALL_HINT} ({exc})"
        ) from exc
    return psycopg


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Each connection: ``numeric`` (SUM of integers, AVG) read as int or float, not Decimal, so
    numbers read the same as on SQLite."""
    from psycopg.adapt import Loader

    class NumericLoader(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            try:
                return int(text)
            except ValueError:
                return float(text)

    conn.adapters.register_loader("numeric", NumericLoader)


class PgTx:
    """The handle ``Ledger.transaction()`` yields on PostgreSQL: ``execute`` and ``executemany``
    as on a ``sqlite3.Connection`` (SQLite-style SQL, redacted parameters), returning a cursor
    with ``fetchone`` / ``fetchall``."""

    def __init__(self, engine: PgEngine, conn: psycopg.Connection[Any]) -> None:
        self._engine = engine
        self._conn = conn

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        from ._ledger import clean_params

        return self._conn.execute(self._engine.translate(sql), clean_params(parameters))  # type: ignore[arg-type]

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> Any:
        from ._ledger import clean_params

        cur = self._conn.cursor()
        cur.executemany(self._engine.translate(sql), [clean_params(p) for p in seq_of_parameters])  # type: ignore[arg-type]
        return cur

    def lock(self, key: str) -> None:
        """Serialise with every other transaction that locks ``key``, until this one ends."""
        self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))


class PgEngine:
    """A pool of connections to one PostgreSQL database, migrated on open."""

    def __init__(self, url: str) -> None:
        psycopg = _import()
        from psycopg_pool import ConnectionPool

        from ._migrations import migrate_postgres

        self.url = url
        self.target = mask(url)
        self._secret = _password(url)
        if self._secret:
            _redact.register(self._secret)  # never printed, logged or stored, even in an error
        self._keys: dict[str, tuple[str, ...]] = {}
        self._keys_lock = threading.Lock()
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                self.applied = migrate_postgres(conn)
        except psycopg.Error as exc:
            raise self.error(exc, "cannot open ledger") from None
        self.pool = ConnectionPool(
            url, min_size=1, max_size=POOL_MAX, open=True, configure=_configure, name="extractkit-ledger",
            kwargs={"autocommit": True, "row_factory": _row_factory, "connect_timeout": CONNECT_TIMEOUT_S},
            **pool_options(),
        )  # fmt: skip

    def error(self, exc: BaseException, what: str = "ledger", *, committing: bool = False) -> LedgerError:
        """A ``LedgerError`` naming the ledger (password masked). ``committing``: ``exc`` ended the
        connection while the COMMIT was on its way, so the transaction may or may not have been
        written (``.commit_unknown``; ``_outage.ResilientLedger`` looks before writing again)."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, "***")
        err = LedgerError(f"{what} {self.target}: {_redact.redact(text)}")
        err.commit_unknown = committing  # type: ignore[attr-defined]
        return err

    def close(self) -> None:
        self.pool.close()

    def translate(self, sql: str) -> str:
        return to_postgres(sql, self.primary_key)

    def primary_key(self, table: str) -> tuple[str, ...]:
        """A table's primary key columns (from the catalog, once per table): ``INSERT OR REPLACE``."""
        with self._keys_lock:
            if table in self._keys:
                return self._keys[table]
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary"
                " ORDER BY array_position(i.indkey, a.attnum)", (table,),
            ).fetchall()  # fmt: skip
        key = tuple(r[0] for r in rows)
        if not key:
            raise LedgerError(f"INSERT OR REPLACE INTO {table}: no primary key on {self.target}")
        with self._keys_lock:
            self._keys[table] = key
        return key

    @contextmanager
    def transaction(self) -> Iterator[PgTx]:
        import psycopg

        committing = False
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield PgTx(self, conn)
                committing = True  # the body is done: what fails now is the COMMIT
        except psycopg.OperationalError as exc:
            raise self.error(exc, committing=committing) from exc
        except psycopg.Error as exc:
            raise self.error(exc) from exc
        except _pool_errors() as exc:
            raise self.error(exc) from exc

    def query(self, sql: str, params: Any) -> list[Row]:
        import psycopg

        from ._ledger import clean_params

        try:
            translated = self.translate(sql)
            with self.pool.connection() as conn:
                return conn.execute(translated, clean_params(params)).fetchall()  # type: ignore[no-any-return]
        except psycopg.Error as exc:
            raise self.error(exc) from exc
        except _pool_errors() as exc:
            raise self.error(exc) from exc


def _pool_errors() -> tuple[type[BaseException], ...]:
    from psycopg_pool import PoolTimeout, TooManyRequests

    return (PoolTimeout, TooManyRequests)
