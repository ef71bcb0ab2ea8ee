"""A worker rides out a short PostgreSQL outage and stops cleanly after a long one (issue 17,
audit finding 1): a private PostgreSQL cluster per test (restarting the session's shared one
would break the tests running beside it), a worker subprocess against the slow fake provider,
the server restarted or stopped under it. And the classifier deciding what is retried."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extractkit.ledger._pg import POOL_TIMEOUT_S

from . import pg
from .fakes import FakeLLMServer
from .test_workers import cli, current_extractions, project, slow, start, totals, wait_for

NOISE = ("Traceback", "psycopg", "discarding", "error connecting", "work queue:", "WARNING")


@pytest.fixture
def private_pg(monkeypatch) -> Iterator[pg.Cluster]:
    """A PostgreSQL cluster of this test's own, which it may stop and restart."""
    monkeypatch.delenv(pg.URL_ENV, raising=False)
    cluster = pg.start()
    if isinstance(cluster, str):
        if os.environ.get(pg.REQUIRE_ENV):
            pytest.fail(f"{pg.REQUIRE_ENV} is set but {cluster}")
        pytest.skip(cluster)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def progress(url: str, worker: subprocess.Popen, done: int, what: str) -> None:
    """Wait until ``done`` documents are done, failing at once if the worker has exited."""

    def check() -> bool:
        if worker.poll() is not None:
            out, err = worker.communicate()
            raise AssertionError(f"the worker exited {worker.returncode} before {what}: {err}")
        return totals(url)["done"] >= done

    wait_for(check, what=what)


def no_noise(stderr: str) -> None:
    for word in NOISE:
        assert word not in stderr, stderr


def test_a_worker_rides_out_a_server_restart(here, private_pg):
    """`pg_ctl -m fast restart` mid-run (every connection is closed, the server refuses new ones
    for a moment), then the server stopped for longer than a call waits for a connection
    (``POOL_TIMEOUT_S``): the worker says so in two lines, goes on, and exits 0; every document
    is done once, with one current extraction, and none was paid twice."""
    url = private_pg.new_database()
    n = 40
    with FakeLLMServer(slow(0.4)) as server:
        cfg, docs = project(here, server.base_url, n)
        queued = cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", url)
        assert queued.returncode == 0, queued.stderr
        w = start(here, "worker", "-c", str(cfg), "--ledger", url, "--concurrency", "4", "--lease", "5",
                  "--json")  # fmt: skip
        progress(url, w, 4, "the first documents")
        private_pg.ctl("restart", "-m", "fast")
        progress(url, w, 12, "documents after the restart")
        private_pg.ctl("stop", "-m", "fast")
        time.sleep(POOL_TIMEOUT_S + 2)  # claims, marks and writes fail meanwhile
        private_pg.ctl("start")
        assert w.poll() is None, w.communicate()
        stdout, stderr = w.communicate(timeout=180)
        paid = len(server.requests)
    assert w.returncode == 0, stderr
    no_noise(stderr)
    # a restart alone may pass unnoticed (the pool checks each connection before handing it out)
    assert 1 <= stderr.count("ledger unreachable, retrying...") == stderr.count("ledger back after") <= 3
    summary = json.loads(stdout)
    t = totals(url)
    assert (t["done"], t["waiting"], t["in_flight"], t["expired"], t["failed"]) == (n, 0, 0, 0, 0)
    extracted = current_extractions(url)
    assert len(extracted) == n and len({sha for sha, _ in extracted}) == n
    assert {s for _, s in extracted} == {"ok"}
    assert n <= paid <= n + 4  # at most the documents in flight at the restart sent again
    assert summary["batch"]["ok"] + summary["batch"]["resumed"] == n


def test_a_worker_stops_with_exit_1_after_its_outage_limit_and_loses_nothing(here, private_pg):
    """The server stopped for longer than --outage-limit: the worker stops with exit 1 and one
    clear line (how long, where its documents are); once the server is back, a new worker
    finishes everything: every document done, one current extraction each."""
    url = private_pg.new_database()
    n = 20
    with FakeLLMServer(slow(0.4)) as server:
        cfg, docs = project(here, server.base_url, n)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", url).returncode == 0
        w = start(here, "worker", "-c", str(cfg), "--ledger", url, "--concurrency", "2", "--lease", "3",
                  "--outage-limit", "2")  # fmt: skip
        progress(url, w, 2, "the first documents")
        private_pg.ctl("stop", "-m", "fast")
        try:
            _, stderr = w.communicate(timeout=120)
        finally:
            private_pg.ctl("start")
        assert w.returncode == 1, stderr
        no_noise(stderr)
        assert stderr.count("ledger unreachable, retrying...") <= 1  # none when the limit is past at once
        line = re.search(r"error: the ledger postgresql://\S+ was unreachable for (\d+) s \(outage limit 2 s; "
                         r"last error: .*\)\. Worker stopped: (.*); everything recorded is kept",
                         " ".join(stderr.split()))  # fmt: skip
        assert line, stderr
        assert int(line[1]) >= 2
        assert re.fullmatch(r"(\d+ documents? it held put back in the queue; )?\d+ documents? it held go back "
                            r"to the queue when their lease runs out \(3 s\)", line[2]), stderr
        t = totals(url)
        assert t["done"] + t["waiting"] + t["in_flight"] + t["expired"] == n and t["failed"] == 0
        assert t["done"] < n
        # the documents left claimed are taken over once their lease has run out
        again = cli(here, "worker", "-c", str(cfg), "--ledger", url, "--concurrency", "4", "--lease", "3",
                    "--json", timeout=180)  # fmt: skip
        assert again.returncode == 0, again.stderr
        paid = len(server.requests)
    t = totals(url)
    assert (t["done"], t["waiting"], t["in_flight"], t["expired"]) == (n, 0, 0, 0)
    extracted = current_extractions(url)
    assert len(extracted) == n and len({sha for sha, _ in extracted}) == n
    assert n <= paid <= n + 2  # at most the requests in flight when the worker gave up


def test_the_retry_classifier(private_pg):
    """Retried: the server away (refused, shutting down, closed by an administrator, the pool
    out of time), also when wrapped in a LedgerError. Not retried: SQL or constraint errors."""
    import psycopg
    from psycopg import errors
    from psycopg_pool import PoolTimeout

    from extractkit import LedgerError
    from extractkit.ledger import Ledger, is_transient

    def wrapped(exc: BaseException) -> LedgerError:
        try:
            raise LedgerError(f"ledger x: {exc}") from exc
        except LedgerError as err:
            return err

    refused = None
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/x", connect_timeout=2)
    except psycopg.OperationalError as exc:
        refused = exc
    assert refused is not None
    transient = [refused, errors.AdminShutdown("terminating connection due to administrator command"),
                 errors.CannotConnectNow("the database system is shutting down"), PoolTimeout("no connection"),
                 psycopg.OperationalError("server closed the connection unexpectedly")]  # fmt: skip
    for exc in transient:
        assert is_transient(exc), exc
        assert is_transient(wrapped(exc)), exc
    url = private_pg.new_database()
    with Ledger(url) as ledger:
        permanent: list[BaseException] = []
        for sql in ("SELEC 1", "SELECT * FROM no_such_table", "SELECT 1/0",
                    "INSERT INTO runs (id) VALUES (NULL)"):  # fmt: skip
            with pytest.raises(LedgerError) as caught:
                ledger.query(sql)
            permanent.append(caught.value)
    permanent += [errors.UniqueViolation("duplicate key"), psycopg.ProgrammingError("bad"), ValueError("x"),
                  LedgerError("no cause")]  # fmt: skip
    for exc in permanent:
        assert not is_transient(exc), exc


def test_outage_retries_then_gives_up_on_one_clock():
    """``Outage``: a transient failure is retried and said once; a permanent one is raised at
    once; past the limit LedgerUnavailable (a RunError: exit 1), and later calls are tried once."""
    import psycopg

    from extractkit import LedgerError, RunError
    from extractkit._errors import LedgerUnavailable
    from extractkit.ledger import Outage

    said: list[str] = []
    outage = Outage(30, notify=said.append, max_wait_s=0.05)
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise LedgerError("ledger x: gone") from psycopg.OperationalError("connection refused")
        return "ok"

    assert outage.call(flaky) == "ok" and calls["n"] == 3
    assert said[0] == "ledger unreachable, retrying..." and said[1].startswith("ledger back after")
    assert len(said) == 2

    def broken() -> None:
        calls["n"] += 1
        raise LedgerError("ledger x: syntax error") from psycopg.errors.SyntaxError("syntax error")

    calls["n"] = 0
    with pytest.raises(LedgerError, match="syntax"):
        outage.call(broken)
    assert calls["n"] == 1 and len(said) == 2

    def down() -> None:
        calls["n"] += 1
        raise LedgerError("ledger x: refused") from psycopg.OperationalError("connection refused")

    short = Outage(0.3, notify=said.append, max_wait_s=0.05, target="the ledger L")
    calls["n"] = 0
    t0 = time.monotonic()
    with pytest.raises(LedgerUnavailable, match=r"the ledger L was unreachable for 0 s \(outage limit 0.3 s; last error: refused\)$") as e:
        short.call(down)
    assert isinstance(e.value, RunError) and calls["n"] > 1 and time.monotonic() - t0 < 30
    calls["n"] = 0
    with pytest.raises(LedgerUnavailable):
        short.call(down)
    assert calls["n"] == 1  # given up: tried once


def _timed(ex, doc: str):
    """A result of the ledger fixtures whose attempts have start times, as the chain's have."""
    import dataclasses

    from .ledger_fixtures import COSTS, result

    res = result(ex, "few", doc, COSTS)
    attempts = [dataclasses.replace(a, started_at=1_700_000_000.125 + i) for i, a in enumerate(res.attempts)]
    return dataclasses.replace(res, attempts=attempts)


def test_a_write_whose_commit_went_unanswered_is_not_written_twice(pg_url):
    """``ResilientLedger.arecord``: a write that failed before its COMMIT is sent again (written
    once); one whose COMMIT was sent and got no answer (``commit_unknown``) is looked up first,
    and found, is not written again: one extraction, its attempts once."""
    import asyncio

    import psycopg

    from extractkit import LedgerError
    from extractkit.ledger import Ledger, Outage, ResilientLedger

    from .ledger_fixtures import chain

    ex = chain()
    with Ledger(pg_url) as ledger:
        calls: list[str] = []

        class Flaky:
            def __getattr__(self, name: str):
                return getattr(ledger, name)

            async def arecord(self, extractor, result, **kwargs):
                calls.append(result.document_sha256)
                first = calls.count(result.document_sha256) == 1
                lost = psycopg.OperationalError("server closed the connection unexpectedly")
                if first and result.document_sha256.endswith("ab"):  # committed, answer lost
                    await ledger.arecord(extractor, result, **kwargs)
                    err = LedgerError("ledger x: server closed the connection unexpectedly")
                    err.commit_unknown = True  # type: ignore[attr-defined]
                    raise err from lost
                if first:  # failed before its COMMIT: nothing written
                    raise LedgerError("ledger x: terminating connection") from lost
                return await ledger.arecord(extractor, result, **kwargs)

        said: list[str] = []
        resilient = ResilientLedger(Flaky(), Outage(30, notify=said.append))
        for doc in ("ab", "cd"):
            ext_id = asyncio.run(resilient.arecord(ex, _timed(ex, doc), text=f"doc {doc}"))
            sha = f"{doc:0>64}"[-64:]
            rows = ledger.query("SELECT id FROM extractions WHERE document_sha256 = ?", (sha,))
            assert [r[0] for r in rows] == [ext_id], doc
            assert ledger.query("SELECT COUNT(*) FROM attempts a JOIN extractions e ON e.id = a.extraction_id"
                                " WHERE e.document_sha256 = ?", (sha,))[0][0] == 3  # fmt: skip
        assert calls.count(f"{'ab':0>64}") == 1 and calls.count(f"{'cd':0>64}") == 2
        assert said.count("ledger unreachable, retrying...") == 2
