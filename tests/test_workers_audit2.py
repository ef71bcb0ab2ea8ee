"""The second hostile-user audit of issue 17 (shared PostgreSQL ledger, workers): an outage is said
once and timed on one clock, a worker started while the database is down waits for it, a wrong
password or a missing database is not an outage, a queued relative path is found from another
directory, a URL's query password keeps the ": reason" after it, messages written to a file are
one line each, and a worker stopped by a signal says "stopped", not "done"."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from typing import Any

import pytest

from .fakes import FakeLLMServer, echo_invoice_responder
from .test_workers import cli, env, here, project, start, totals, wait_for  # noqa: F401
from .test_workers_outage import private_pg  # noqa: F401


def test_one_outage_is_said_once_while_a_write_keeps_failing():
    """A write failing through an outage: "unreachable" once and "back" once, when the write gets
    through (a retry that touched no database must not say the ledger is back)."""
    import psycopg

    from extractkit.ledger import Outage, ResilientLedger

    class Flaky:
        calls = 0

        async def arecord(self, extractor: Any, result: Any, **kwargs: Any) -> str:
            Flaky.calls += 1
            if Flaky.calls <= 4:
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return "ext-1"

    said: list[str] = []
    ledger = ResilientLedger(Flaky(), Outage(30, notify=said.append, max_wait_s=0.01))
    assert asyncio.run(ledger.arecord(object(), object())) == "ext-1"
    assert Flaky.calls == 5
    assert len(said) == 2, said
    assert said[0] == "ledger unreachable, retrying..." and said[1].startswith("ledger back after")


def test_a_wrong_password_a_missing_database_or_host_is_no_outage(pg_url):
    """Connection errors carry no SQLSTATE: the server's FATAL reason decides. A database that is
    starting up is away (retried); a missing database, an unknown role or host is a mistake."""
    import psycopg

    from extractkit.ledger import is_transient

    base = pg_url.rsplit("/", 1)[0]
    mistakes = [base + "/no_such_database_here", base.replace("postgres@", "no_such_role@") + "/postgres",
                "postgresql://postgres@no-such-host.invalid/x"]  # fmt: skip
    for url in mistakes:
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(url, connect_timeout=5)
        assert not is_transient(caught.value), caught.value
    starting = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5 failed: FATAL:  the database system '
        "is starting up"
    )
    assert is_transient(starting)


def test_a_worker_started_while_the_database_is_down_waits_for_it(here, private_pg):  # noqa: F811
    """Workers rebooted with their database: the worker waits (within --outage-limit), saying so
    once, instead of exiting 2 ("usage or config"), then does the work."""
    url = private_pg.new_database()
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 3)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", url).returncode == 0
        private_pg.ctl("stop", "-m", "fast")
        seen: list[str] = []
        try:
            w = start(here, "worker", "-c", str(cfg), "--ledger", url, "--outage-limit", "120")
            assert w.stderr is not None
            for line in w.stderr:  # until it says it waits (or exits: the old behaviour)
                seen.append(line)
                if "ledger unreachable, retrying" in line:
                    break
            assert w.poll() is None, "".join(seen)
        finally:
            private_pg.ctl("start")
        _, errs = w.communicate(timeout=180)
        assert w.returncode == 0, "".join(seen) + errs
    assert totals(url)["done"] == 3


def test_a_worker_gives_up_on_a_database_that_stays_down_with_exit_1(here, private_pg):  # noqa: F811
    url = private_pg.new_database()
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 1)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", url).returncode == 0
        private_pg.ctl("stop", "-m", "fast")
        try:
            done = cli(here, "worker", "-c", str(cfg), "--ledger", url, "--outage-limit", "2", timeout=120)
        finally:
            private_pg.ctl("start")
    assert done.returncode == 1, done.stderr
    assert "was unreachable for" in done.stderr and "outage limit 2 s" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_relative_path_queued_here_is_found_by_a_worker_elsewhere(here, pg_url):  # noqa: F811
    """`enqueue docs/` records where the documents are, not how they were typed; `extract` on the
    shared ledger still prints them as given."""
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, _ = project(here, server.base_url, 3)
        assert cli(here, "enqueue", "docs", "-c", str(cfg), "--ledger", pg_url).returncode == 0
        elsewhere = here / "elsewhere"
        elsewhere.mkdir()
        done = cli(elsewhere, "worker", "-c", str(cfg), "--ledger", pg_url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert totals(pg_url)["done"] == 3
        (here / "docs" / "new.txt").write_text("From: Company N\nTotal: 9.25\n")
        ex = cli(here, "extract", "docs", "-c", str(cfg), "--ledger", pg_url, "--out", "out.jsonl")
        assert ex.returncode == 0, ex.stderr
    paths = sorted(json.loads(line)["path"] for line in (here / "out.jsonl").read_text().splitlines())
    assert paths == ["docs/d000.txt", "docs/d001.txt", "docs/d002.txt", "docs/new.txt"]


def test_a_query_password_mask_keeps_the_reason_after_it():
    from extractkit._redact import redact

    shown = redact("cannot open ledger postgresql://me@h:5/ek?password=S3cr:et: permission denied")
    assert shown == "cannot open ledger postgresql://me@h:5/ek?password=***: permission denied"
    assert redact("postgresql://me@h/ek?password=pw&sslmode=require") == "postgresql://me@h/ek?password=***&sslmode=require"


def test_a_message_written_to_a_file_is_one_line(here):  # noqa: F811
    """Not a terminal (a pipe, a file): a long line (a document's path and why it was not
    extracted) is not wrapped at 80 columns."""
    docs = here / "docs"
    docs.mkdir()
    empty = docs / ("a-document-with-a-rather-long-name-" * 3 + ".txt")
    empty.write_text("")
    cfg = here / "c.toml"
    cfg.write_text('schema = "tests.conftest:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
                   'base_url = "http://127.0.0.1:9/v1"\n')  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "extractkit", "extract", str(docs), "-c", str(cfg),
                           "--ledger", str(here / "l.sqlite3")],
                          cwd=here, env=env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert any(str(empty) in line and "empty" in line for line in lines), done.stdout + done.stderr


def test_a_worker_stopped_by_a_signal_says_stopped_not_done(here, pg_url):  # noqa: F811
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 2)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        w = start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--wait")
        wait_for(lambda: totals(pg_url)["done"] == 2, what="the documents")
        w.send_signal(signal.SIGTERM)
        out, errs = w.communicate(timeout=60)
    assert w.returncode == 0, errs
    assert "(stopped)" in out and "(done)" not in out, out
