"""What `extractkit worker` and `status` tell a user (the hostile-user audit of issue 17): the reason
each document failed and a command that lists them all, the chains that wait, rates that describe
a stopped worker, exit codes a supervisor can read, a summary after a second Ctrl-C, tables whole
in 80 columns, one mask for a URL's password."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .fakes import FakeLLMServer, echo_invoice_responder
from .test_workers import cli, env, here, project, slow, start, status, totals, wait_for  # noqa: F401


def narrow_cli(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in an 80-column terminal."""
    return subprocess.run([sys.executable, "-m", "extractkit", *args], cwd=cwd, env=env() | {"COLUMNS": "80"},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def unfounded(docs: Path, n: int) -> None:
    """``n`` documents without an issuer: the toy model answers 'unknown', which grounding rejects."""
    for i in range(n):
        (docs / f"x{i:03d}.txt").write_text(f"Nothing to see {i}\nTotal: {i}.50\n")


def test_worker_prints_why_each_document_failed_and_status_failed_lists_them_all(here, pg_url):  # noqa: F811
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 2)
        unfounded(docs, 23)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        done = narrow_cli(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--concurrency", "8")
        assert done.returncode == 1, done.stderr
        lines = [x for x in done.stdout.splitlines() if "not extracted:" in x]
        assert len(lines) == 20
        assert all("ungrounded" in x and "'unknown' not found in the document" in x for x in lines), lines
        assert "... and 3 more: extractkit status --failed" in done.stdout
        assert "…" not in done.stdout  # the table is whole in 80 columns (no `docum…`, `$0.00…`)
    listed = narrow_cli(here, "status", "--ledger", pg_url, "--failed")
    assert listed.returncode == 0, listed.stderr
    assert "23 failed documents:" in listed.stdout
    failed_lines = [x for x in listed.stdout.splitlines() if "/x0" in x]
    assert len(failed_lines) == 23 and all("ungrounded" in x for x in failed_lines), listed.stdout
    as_json = cli(here, "status", "--ledger", pg_url, "--failed", "--json", "--limit", "5")
    f = json.loads(as_json.stdout)["failed"]
    assert f["total"] == 23 and len(f["documents"]) == 5
    d = f["documents"][0]
    assert d["status"] == "failed" and d["outcome"] == "ungrounded" and "not found in the document" in d["error"]
    assert d["source"].startswith(str(docs)) and len(d["sha256"]) == 64


def test_a_worker_of_another_chain_names_the_chains_and_status_shows_one_line_each(here, pg_url):  # noqa: F811
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 2)
        queued = cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url)
        assert queued.returncode == 0, queued.stderr
        chain = status(here, pg_url)["chains"][0]
        queued_chain = f"{chain['schema_hash'][:16]}/{chain['config_hash'][:16]}"
        other = here / "other.toml"
        other.write_text(cfg.read_text().replace("gpt-4o-mini", "gpt-4o"))
        wrong = cli(here, "worker", "-c", str(other), "--ledger", pg_url)
        assert wrong.returncode == 2, wrong.stderr
        assert f"2 for {queued_chain}" in " ".join(wrong.stderr.split()), wrong.stderr
        assert len(server.requests) == 0
    human = narrow_cli(here, "status", "--ledger", pg_url)
    assert human.returncode == 0, human.stderr
    assert f"chain {queued_chain}: done 0  in flight 0  failed 0  waiting 2" in human.stdout, human.stdout


def shift_worker_times(url: str, seconds: int) -> None:
    """Move every worker's and job's timestamps ``seconds`` into the past (as if that long ago)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        ago = f"interval '{int(seconds)} seconds'"
        conn.execute(f"UPDATE work_workers SET started_at = started_at - {ago}, seen_at = seen_at - {ago},"
                     f" stopped_at = stopped_at - {ago}")  # fmt: skip
        conn.execute(f"UPDATE work_queue SET finished_at = finished_at - {ago}, claimed_at = claimed_at - {ago},"
                     f" enqueued_at = enqueued_at - {ago}")  # fmt: skip


def test_a_stopped_workers_rate_stays_what_it_was_and_old_workers_are_summarised(here, pg_url):  # noqa: F811
    with FakeLLMServer(slow(0.05)) as server:
        cfg, docs = project(here, server.base_url, 30)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        assert cli(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--concurrency", "2").returncode == 0
    # pretend it ran 2 minutes ago: its rate is the same (on the old code it fell with time)
    shift_worker_times(pg_url, 120)
    w = status(here, pg_url)["workers"][0]
    assert w["state"] == "stopped" and w["done"] == 30
    assert w["active_s"] > 0
    assert w["per_minute"] == pytest.approx(30 * 60 / max(w["active_s"], 1.0), rel=0.05)
    before = w["per_minute"]
    shift_worker_times(pg_url, 3600)  # an hour ago: summarised in one line, listed with --all
    s = status(here, pg_url)
    assert s["workers"] == [] and s["hidden_workers"] == {"stopped": 1, "lost": 0}
    human = narrow_cli(here, "status", "--ledger", pg_url)
    assert "and 1 stopped worker not seen for more than 5 minutes (--all lists them)" in human.stdout
    every = json.loads(cli(here, "status", "--ledger", pg_url, "--all", "--json").stdout)
    assert [x["per_minute"] for x in every["workers"]] == [before]


def started(p: subprocess.Popen) -> None:
    """Wait until the worker has printed its first line (its signal handlers are in place)."""
    assert p.stderr is not None
    line = p.stderr.readline()
    assert line.startswith("worker "), line
    time.sleep(0.5)


def test_sigterm_is_a_normal_stop_of_a_waiting_worker_and_sigint_is_130(here, pg_url):  # noqa: F811
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 2)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        w = start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--wait")
        started(w)
        wait_for(lambda: totals(pg_url)["done"] == 2, what="the documents")
        w.send_signal(signal.SIGTERM)
        out, errs = w.communicate(timeout=60)
        assert w.returncode == 0, errs  # systemd's stop is not a failure
        assert "worker" in out  # the summary
        w = start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--wait")
        started(w)
        w.send_signal(signal.SIGINT)
        _, errs = w.communicate(timeout=60)
        assert w.returncode == 130, errs
    helped = cli(here, "worker", "--help")
    assert "130" in helped.stdout and "SIGTERM" in helped.stdout


def test_after_a_second_ctrl_c_the_worker_still_prints_what_it_finished(here, pg_url):  # noqa: F811
    with FakeLLMServer(slow(1.5)) as server:
        cfg, docs = project(here, server.base_url, 40)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        w = start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--concurrency", "2", "--lease", "600")
        started(w)
        wait_for(lambda: totals(pg_url)["done"] >= 2, what="two documents done")
        w.send_signal(signal.SIGINT)
        time.sleep(0.3)
        w.send_signal(signal.SIGINT)
        out, errs = w.communicate(timeout=60)
        assert w.returncode == 130, errs
        assert "put back in the queue" in errs
    done = totals(pg_url)["done"]
    table = [x.split() for x in out.splitlines() if x.strip() and x.split()[0].isdigit()]
    assert table, out  # the summary table: its row of numbers
    assert int(table[0][0]) >= 2 and int(table[0][1]) == done  # documents, ok


@pytest.mark.parametrize("value", ["mysql://app:S3cretPW1@db.internal/ek",
                                   "host=127.0.0.1 user=app password=S3cretPW1 dbname=ek"])
def test_status_refuses_another_databases_url_as_the_ledger_does_without_printing_it(here, value):  # noqa: F811
    done = cli(here, "status", "--ledger", value)
    assert done.returncode == 2
    assert "S3cretPW1" not in done.stderr + done.stdout
    # not taken for a SQLite file whose name it repeats: the ledger's own refusal
    assert "not a mysql:// URL" in done.stderr or "libpq connection string" in done.stderr, done.stderr


def test_a_password_in_a_urls_query_is_masked_like_one_in_its_user_info():
    from extractkit import _redact
    from extractkit.ledger import mask

    url = "postgresql://app@db.internal:5432/ek?password=S3cretPW1&sslmode=require"
    shown = _redact.redact(mask(url))
    assert "S3cretPW1" not in shown and "password=***&sslmode=require" in shown
    assert _redact.redact(mask("postgresql://app:S3cretPW1@db/ek")) == "postgresql://app:***@db/ek"
    # other signed-URL secrets and keys keep their marker
    assert _redact.redact("https://b.s3.amazonaws.com/a?X-Amz-Signature=abcdef123456") \
        .endswith("X-Amz-Signature=[REDACTED]")


@pytest.mark.parametrize("command", ["enqueue", "worker", "status", "extract"])
def test_help_reflows_in_80_columns(here, command):  # noqa: F811
    done = narrow_cli(here, command, "--help")
    assert done.returncode == 0, done.stderr
    assert max(len(x) for x in done.stdout.splitlines()) <= 80
    # the description (above the option panels): each paragraph filled to the width, no line cut
    # short where the docstring's source broke it
    prose = done.stdout.split("╭")[0].strip("\n").split("\n")
    paragraphs: list[list[str]] = [[]]
    for line in prose:
        if line.strip():
            paragraphs[-1].append(line.rstrip())
        else:
            paragraphs.append([])
    assert any("Exit codes:" in " ".join(p) for p in paragraphs)
    for p in paragraphs:
        for line, following in zip(p, p[1:], strict=False):  # the next word did not fit on this line
            assert len(line) + 1 + len(following.split()[0]) > 79, (line, done.stdout)
    top = narrow_cli(here, "--help")
    assert "<bool>" not in top.stdout, top.stdout


def test_extract_force_on_a_shared_ledger_says_why_and_what_to_do(here, pg_url):  # noqa: F811
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 1)
        done = cli(here, "extract", str(docs), "-c", str(cfg), "--ledger", pg_url, "--force")
        assert done.returncode == 2
        assert "change the chain" in " ".join(done.stderr.split())
        assert len(server.requests) == 0
