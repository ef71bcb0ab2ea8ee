from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Annotated

import pytest
import respx
from pydantic import BaseModel

from extractkit import Grounded

from .fakes import BASE_URL

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "invoice2data"


class Invoice(BaseModel):
    issuer: Annotated[str, Grounded()]
    total: Annotated[float, Grounded()]
    date: dt.date | None = None


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def mock_api():
    # using="httpx" intercepts both the default httpx transport and openai's aiohttp one;
    # assert_all_mocked blocks any request that no route answers: nothing reaches a network.
    with respx.mock(base_url=BASE_URL, using="httpx", assert_all_called=False) as router:
        yield router


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replaces the retry sleep; returns the delays that were asked for."""
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr("extractkit._retry.sleep", fake_sleep)
    return delays


@pytest.fixture
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    return CORPUS


def db_rows(path: str | Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of one query over a plain SQLite connection, closed at once (Python 3.13 warns about
    connections left to the garbage collector)."""
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as con:
        return con.execute(sql, params).fetchall()


@pytest.fixture(scope="session")
def pg_cluster():
    """A real PostgreSQL server for the session (tests/pg.py); skips without one, fails in CI."""
    import os

    from . import pg

    cluster = pg.start()
    if isinstance(cluster, str):
        if os.environ.get(pg.REQUIRE_ENV):
            pytest.fail(f"{pg.REQUIRE_ENV} is set but {cluster}")
        pytest.skip(cluster)
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """``postgresql://...`` of a fresh, empty database on the session's server."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_target(request, tmp_path) -> str:
    """A fresh ledger on each engine in turn: a SQLite file path, then a ``postgresql://`` URL (a
    fresh database; skipped without a server, failed in CI). ``Ledger(ledger_target)``."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    return str(request.getfixturevalue("pg_url"))
