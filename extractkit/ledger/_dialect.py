"""The one place where the ledger's two SQL dialects differ.

The ledger's SQL is written once, in SQLite's style: qmark (``?``) or named (``:name``)
parameters, SQLite's type names in DDL. On SQLite it runs as written. On PostgreSQL
``Dialect.translate`` rewrites each statement once (cached) before psycopg sees it:

==============================  ==========================================================
SQLite (as written)              PostgreSQL
==============================  ==========================================================
``?`` / ``:name``                ``%s`` / ``%(name)s`` (a literal ``%`` becomes ``%%``)
``a IS b`` / ``a IS NOT b``      ``a IS NOT DISTINCT FROM b`` / ``a IS DISTINCT FROM b``
                                 (``IS NULL``, ``IS TRUE`` ... are left alone)
scalar ``MIN(a, b)``/``MAX``     ``LEAST(a, b)`` / ``GREATEST(a, b)`` (aggregates untouched)
``INSERT OR IGNORE INTO``        ``INSERT INTO ... ON CONFLICT DO NOTHING``
``INSERT OR REPLACE INTO t``     ``INSERT INTO t ... ON CONFLICT (t's primary key) DO UPDATE``
                                 every other listed column (the key comes from the catalog)
``julianday('now')``             the same number computed from ``now()``
DDL: ``REAL``, ``BLOB``          ``DOUBLE PRECISION``, ``BYTEA`` (``Dialect.ddl``)
==============================  ==========================================================

Text inside quotes and comments is never rewritten. What cannot be rewritten mechanically is a
method of ``Dialect`` that returns the SQL fragment for its engine: ``day(expr)`` (a UTC calendar
day, ``YYYY-MM-DD``, from epoch seconds), ``as_int(expr)`` (a comparison as 0/1: SQLite's
booleans are integers, PostgreSQL's are not), ``least``/``greatest``, ``null_safe_eq``,
``insert_ignore``, ``now()``. Take the dialect from ``ledger.dialect`` (``SQLITE`` or ``POSTGRES``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SQLITE_NAME = "sqlite"
POSTGRES_NAME = "postgresql"


@dataclass(frozen=True)
class Dialect:
    name: str  # "sqlite" | "postgresql"

    @property
    def is_postgres(self) -> bool:
        return self.name == POSTGRES_NAME

    # -- fragments -----------------------------------------------------------------------------
    def least(self, *exprs: str) -> str:
        return f"{'LEAST' if self.is_postgres else 'MIN'}({', '.join(exprs)})"

    def greatest(self, *exprs: str) -> str:
        return f"{'GREATEST' if self.is_postgres else 'MAX'}({', '.join(exprs)})"

    def null_safe_eq(self, a: str, b: str) -> str:
        return f"{a} IS NOT DISTINCT FROM {b}" if self.is_postgres else f"{a} IS {b}"

    def day(self, epoch_seconds: str) -> str:
        """A UTC calendar day ``YYYY-MM-DD`` (text) from a column of epoch seconds."""
        if self.is_postgres:
            return f"to_char(to_timestamp({epoch_seconds}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        return f"date({epoch_seconds}, 'unixepoch')"

    def as_int(self, condition: str) -> str:
        """A condition as an integer 0/1 (NULL stays NULL), e.g. inside ``SUM(...)``."""
        return f"(({condition})::int)" if self.is_postgres else f"({condition})"

    def now(self) -> str:
        """Now, in epoch seconds (a float)."""
        return "EXTRACT(EPOCH FROM clock_timestamp())::double precision" if self.is_postgres else (
            "((julianday('now') - 2440587.5) * 86400.0)")  # fmt: skip

    def insert_ignore(self, insert_sql: str) -> str:
        """``INSERT INTO ...`` that does nothing when a unique key already holds the row."""
        return f"{insert_sql} ON CONFLICT DO NOTHING"

    # -- whole statements -----------------------------------------------------------------------
    def translate(self, sql: str, primary_key: Callable[[str], Sequence[str]] | None = None) -> str:
        """``sql`` as this engine runs it (see the module docstring); SQLite: unchanged.
        ``primary_key(table)`` names a table's key, for ``INSERT OR REPLACE``."""
        if not self.is_postgres:
            return sql
        return to_postgres(sql, primary_key)

    def ddl(self, sql: str) -> str:
        """A migration's DDL as this engine writes it; SQLite: unchanged."""
        if not self.is_postgres:
            return sql
        return ddl_to_postgres(sql)


SQLITE = Dialect(SQLITE_NAME)
POSTGRES = Dialect(POSTGRES_NAME)

# -- the rewriting, outside quotes and comments --------------------------------------------------

_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.S)


def _split(sql: str) -> list[tuple[bool, str]]:
    """(is_code, text) pieces: quoted strings, quoted names and comments are not code."""
    out: list[tuple[bool, str]] = []
    pos = 0
    for m in _TOKEN.finditer(sql):
        if m.start() > pos:
            out.append((True, sql[pos : m.start()]))
        out.append((False, m.group()))
        pos = m.end()
    if pos < len(sql):
        out.append((True, sql[pos:]))
    return out


def _code_map(sql: str, fn: Callable[[str], str]) -> str:
    return "".join(fn(text) if code else text for code, text in _split(sql))


_IS = re.compile(
    r"\bIS(\s+NOT)?\s+(?!(?:NULL|TRUE|FALSE|UNKNOWN|DISTINCT|NOT)\b)(?=[?:\w(])", re.I
)
_PARAM = re.compile(r"(?<![:\w])\?|(?<![:\w]):([A-Za-z_]\w*)")
_JULIANDAY_NOW = re.compile(r"julianday\(\s*'now'\s*\)", re.I)
_SCALAR = re.compile(r"\b(MIN|MAX)\s*\(", re.I)
_INSERT_OR = re.compile(r"^\s*INSERT\s+OR\s+(IGNORE|REPLACE)\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.I)


def _is(text: str) -> str:
    return _IS.sub(lambda m: "IS DISTINCT FROM " if m.group(1) else "IS NOT DISTINCT FROM ", text)


def _param(m: re.Match[str]) -> str:
    if m.group() == "?":
        return "%s"
    return f"%({m.group(1)})s"


def _scalar_min_max(sql: str) -> str:
    """``MIN(a, b)`` -> ``LEAST(a, b)`` (a comma at the top level of the call); aggregates stay."""
    out, pos = [], 0
    for m in _SCALAR.finditer(sql):
        if m.start() < pos:
            continue
        depth, i, comma = 1, m.end(), False
        while i < len(sql) and depth:
            ch = sql[i]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "," and depth == 1:
                comma = True
            i += 1
        if comma:
            out.append(sql[pos : m.start()])
            out.append("LEAST(" if m.group(1).upper() == "MIN" else "GREATEST(")
            pos = m.end()
    out.append(sql[pos:])
    return "".join(out)


def _julianday(text: str) -> str:
    return _JULIANDAY_NOW.sub("(EXTRACT(EPOCH FROM now()) / 86400.0 + 2440587.5)", text)


@functools.lru_cache(maxsize=2048)
def _to_postgres_cached(sql: str, replace_key: tuple[str, ...] | None) -> str:
    head = ""
    tail = ""
    m = _INSERT_OR.match(sql)
    if m:
        kind, table, cols = m.group(1).upper(), m.group(2), [c.strip() for c in m.group(3).split(",")]
        head = f"INSERT INTO {table} ({m.group(3)})"
        sql = sql[m.end() :]
        if kind == "IGNORE":
            tail = " ON CONFLICT DO NOTHING"
        else:
            assert replace_key is not None
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in replace_key)
            action = f"DO UPDATE SET {sets}" if sets else "DO NOTHING"
            tail = f" ON CONFLICT ({', '.join(replace_key)}) {action}"
    sql = _julianday(head + sql).replace("%", "%%")  # psycopg reads % everywhere, quotes included
    sql = _code_map(sql, lambda t: _PARAM.sub(_param, _scalar_min_max(_is(t))))
    if tail:
        body = sql.rstrip().rstrip(";")
        returning = re.search(r"\bRETURNING\b", body, re.I)
        if returning:
            body = body[: returning.start()] + tail.strip() + " " + body[returning.start() :]
        else:
            body += tail
        sql = body
    return sql


def insert_or_replace_table(sql: str) -> str | None:
    """The table of an ``INSERT OR REPLACE INTO t (...)`` statement, else None."""
    m = _INSERT_OR.match(sql)
    return m.group(2) if m and m.group(1).upper() == "REPLACE" else None


def to_postgres(sql: str, primary_key: Callable[[str], Sequence[str]] | None = None) -> str:
    table = insert_or_replace_table(sql)
    key: tuple[str, ...] | None = None
    if table is not None:
        if primary_key is None:
            raise ValueError(f"INSERT OR REPLACE INTO {table} needs the table's primary key")
        key = tuple(primary_key(table))
    return _to_postgres_cached(sql, key)


_DDL_TYPES = re.compile(r"\b(REAL|BLOB)\b", re.I)


def ddl_to_postgres(sql: str) -> str:
    """A migration (SQLite DDL) for PostgreSQL: type names; its statements as ``to_postgres``
    (no parameters, so ``%`` stays as written)."""

    def types(text: str) -> str:
        return _DDL_TYPES.sub(lambda m: "DOUBLE PRECISION" if m.group(1).upper() == "REAL" else "BYTEA", text)

    return _code_map(_julianday(sql), lambda t: _scalar_min_max(_is(types(t))))
