"""One ledger, two engines (issue 17, item 1): SQLite by path, PostgreSQL by URL; the dialect
translation; migrations safe under many processes; one current final extraction per key, enforced
by the database; the target chosen by --ledger, $EXTRACTKIT_LEDGER or [ledger] url."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from extractkit import LedgerError
from extractkit.ledger import MIGRATIONS, PG_MIGRATIONS, POSTGRES, SQLITE, Ledger, mask
from extractkit.ledger._dialect import ddl_to_postgres, to_postgres
from extractkit.ledger._migrations import VALUE_SPANS_MIGRATION
from extractkit.ledger._waves import ATTEMPT_VIA

N_PROCESSES = 8


# -- the dialect -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sqlite", "postgres"), [
    ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
    ("SELECT * FROM t WHERE a = :run AND b = :run", "SELECT * FROM t WHERE a = %(run)s AND b = %(run)s"),
    ("SELECT x::int FROM t WHERE a = ?", "SELECT x::int FROM t WHERE a = %s"),
    ("SELECT 1 FROM t WHERE p LIKE 'a%' AND q = ?", "SELECT 1 FROM t WHERE p LIKE 'a%%' AND q = %s"),
    ("SELECT '?' , ':x' FROM t -- what? :y", "SELECT '?' , ':x' FROM t -- what? :y"),
    ("WHERE a IS ? AND b IS NOT ? AND c IS NULL AND d IS NOT NULL AND e IS t.f",
     "WHERE a IS NOT DISTINCT FROM %s AND b IS DISTINCT FROM %s AND c IS NULL AND d IS NOT NULL"
     " AND e IS NOT DISTINCT FROM t.f"),
    ("SET a = MIN(a, excluded.a), b = MAX(b, MIN(c, d)), n = MAX(id)",
     "SET a = LEAST(a, excluded.a), b = GREATEST(b, LEAST(c, d)), n = MAX(id)"),
    ("INSERT OR IGNORE INTO schemas (hash, name) VALUES (?, ?)",
     "INSERT INTO schemas (hash, name) VALUES (%s, %s) ON CONFLICT DO NOTHING"),
    ("SELECT julianday('now')", "SELECT (EXTRACT(EPOCH FROM now()) / 86400.0 + 2440587.5)"),
])  # fmt: skip
def test_sql_is_written_once_and_translated_for_postgres(sqlite, postgres):
    assert to_postgres(sqlite) == postgres
    assert SQLITE.translate(sqlite) == sqlite


def test_insert_or_replace_becomes_an_upsert_on_the_tables_key():
    sql = "INSERT OR REPLACE INTO eval_items (run_id, gold_id, path) VALUES (?,?,?)"
    assert to_postgres(sql, lambda table: ["run_id", "gold_id"]) == (
        "INSERT INTO eval_items (run_id, gold_id, path) VALUES (%s,%s,%s)"
        " ON CONFLICT (run_id, gold_id) DO UPDATE SET path = EXCLUDED.path"
    )


def test_ddl_types_and_fragments():
    assert ddl_to_postgres("a REAL NOT NULL, b BLOB, c TEXT -- REAL") == (
        "a DOUBLE PRECISION NOT NULL, b BYTEA, c TEXT -- REAL"
    )
    assert (SQLITE.least("a", "b"), POSTGRES.least("a", "b")) == ("MIN(a, b)", "LEAST(a, b)")
    assert SQLITE.day("t") == "date(t, 'unixepoch')" and "to_char" in POSTGRES.day("t")
    assert POSTGRES.as_int("x = 1") == "((x = 1)::int)"


def test_every_sqlite_migration_from_0006_is_in_the_postgres_list_in_order():
    pg = [name for name, _ in PG_MIGRATIONS]
    assert pg[0] == "0001_initial"
    later = [name for name, _ in MIGRATIONS if name >= "0006"]
    assert pg[1:] == later and later[0] == "0006_current_unique"


# -- opening ---------------------------------------------------------------------------------------

def test_a_postgres_ledger_names_its_engine_and_masks_its_password(pg_url):
    with Ledger(pg_url) as ledger:
        assert (ledger.engine, ledger.target) == ("postgresql", pg_url)
        assert ledger.applied == [name for name, _ in PG_MIGRATIONS]
        assert ledger.integrity_check() == "ok"
    with Ledger(pg_url) as again:
        assert again.applied == []
    assert mask("postgresql://u:s3cretpassword@h:5/db") == "postgresql://u:***@h:5/db"


def test_an_unreachable_postgres_is_a_ledger_error_without_the_password():
    url = "postgresql://nobody:hunter2-not-shown@127.0.0.1:1/x"
    with pytest.raises(LedgerError) as caught:
        Ledger(url)
    text = str(caught.value)
    assert "hunter2" not in text and "postgresql://nobody:***@127.0.0.1:1/x" in text
    assert "Connection refused" in text or "connection" in text.lower()


def test_without_psycopg_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    with pytest.raises(LedgerError, match=r"pip install 'extractkit\[postgres\]'"):
        Ledger("postgresql://u@127.0.0.1:1/x")


def _open_and_start(url: str, barrier: threading.Barrier, results: multiprocessing.Queue) -> None:
    barrier.wait(timeout=300)
    try:
        with Ledger(url) as ledger:
            results.put(("ok", ledger.applied, ledger.start_run("batch")))
    except Exception as exc:
        results.put(("failed", f"{type(exc).__name__}: {exc}", None))


def test_eight_processes_open_one_fresh_postgres_ledger_at_once(pg_url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_and_start, args=(pg_url, barrier, results)) for _ in range(N_PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [o for o in outcomes if o[0] != "ok"] == []
    applied = [name for o in outcomes for name in o[1]]
    assert sorted(applied) == sorted(name for name, _ in PG_MIGRATIONS)  # each once, by one of them
    with Ledger(pg_url) as ledger:
        names = [r[0] for r in ledger.query("SELECT name FROM _migrations ORDER BY name")]
        assert names == [name for name, _ in PG_MIGRATIONS]
        assert ledger.query("SELECT COUNT(*) FROM runs")[0][0] == N_PROCESSES


# -- one current final extraction per key ---------------------------------------------------------

def _record_same_document(target: str, barrier: threading.Barrier, results: multiprocessing.Queue,
                          times: int) -> None:  # fmt: skip
    from .ledger_fixtures import COSTS, chain, result

    ex = chain()
    try:
        with Ledger(target) as ledger:
            barrier.wait(timeout=300)
            for i in range(times):
                ledger.record(ex, result(ex, "few" if i % 2 else "zero", "abc", COSTS), text="doc")
                ledger.record(ex, result(ex, "zero", "abc", COSTS), text="doc", forced_tier="zero_shot",
                              config_hash="tier-hash")  # fmt: skip
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def _current_invariants(ledger: Ledger, n_written: int) -> None:
    rows = ledger.query(
        "SELECT forced_tier, COUNT(*) AS n, SUM(CASE WHEN superseded_by IS NULL THEN 1 ELSE 0 END) AS cur"
        " FROM extractions GROUP BY forced_tier ORDER BY forced_tier"
    )
    assert [(r["forced_tier"], r["n"], r["cur"]) for r in rows] in (
        [(None, n_written, 1), ("zero_shot", n_written, 1)],
        [("zero_shot", n_written, 1), (None, n_written, 1)],
    )
    stale = ledger.query(
        "SELECT COUNT(*) FROM attempts a JOIN extractions e ON e.id = a.extraction_id"
        " WHERE e.superseded_by IS NOT NULL AND a.current != 0"
    )[0][0]
    assert stale == 0
    current = ledger.query(
        "SELECT COUNT(*) FROM attempts a JOIN extractions e ON e.id = a.extraction_id"
        " WHERE e.superseded_by IS NULL AND e.forced_tier IS NULL AND a.current = 1"
    )[0][0]
    assert current >= 1
    assert ledger.integrity_check() == "ok"


def test_processes_recording_one_document_leave_exactly_one_current_extraction(ledger_target):
    Ledger(ledger_target).close()  # migrated first: this test is about the writes
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    times = 6
    procs = [ctx.Process(target=_record_same_document, args=(ledger_target, barrier, results, times))
             for _ in range(4)]  # fmt: skip
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * 4
    with Ledger(ledger_target) as ledger:
        _current_invariants(ledger, 4 * times)


def test_the_database_refuses_a_second_current_extraction(ledger_target):
    from .ledger_fixtures import COSTS, chain, result

    ex = chain()
    with Ledger(ledger_target) as ledger:
        first = ledger.record(ex, result(ex, "zero", "abc", COSTS))
        with pytest.raises(Exception, match="(?i)unique"), ledger.transaction() as tx:
            tx.execute(
                "INSERT INTO extractions (id, document_sha256, schema_hash, config_hash, status, created_at)"
                " SELECT 'x' || id, document_sha256, schema_hash, config_hash, 'failed', created_at"
                " FROM extractions WHERE id = ?", (first,),
            )  # fmt: skip
        # a superseded copy, or an unreadable document, is no second current one
        with ledger.transaction() as tx:
            tx.execute(
                "INSERT INTO extractions (id, document_sha256, schema_hash, config_hash, status, created_at,"
                " superseded_by) SELECT 'y' || id, document_sha256, schema_hash, config_hash, 'ok', created_at,"
                " id FROM extractions WHERE id = ?", (first,),
            )  # fmt: skip
            tx.execute(
                "INSERT INTO extractions (id, document_sha256, schema_hash, config_hash, status, created_at)"
                " SELECT 'z' || id, document_sha256, schema_hash, config_hash, 'error', created_at"
                " FROM extractions WHERE id = ?", (first,),
            )  # fmt: skip


def test_0006_puts_right_an_older_ledger_with_two_current_rows(tmp_path, monkeypatch):
    from .ledger_fixtures import COSTS, chain, result

    path = tmp_path / "old.sqlite3"
    monkeypatch.setattr("extractkit.ledger._migrations.MIGRATIONS", MIGRATIONS[:5])
    ex = chain()
    with Ledger(path) as old:
        old.conn.executescript(ATTEMPT_VIA + VALUE_SPANS_MIGRATION[1])  # the columns today's record writes
        # (0011, 0014), dropped below
        first = old.record(ex, result(ex, "few", "abc", COSTS))
        second = old.record(ex, result(ex, "zero", "abc", COSTS))
        with old.transaction() as tx:  # as a check-then-act race could leave it
            tx.execute("UPDATE extractions SET superseded_by = NULL WHERE id = ?", (first,))
            tx.execute("UPDATE attempts SET current = 1 WHERE extraction_id = ?", (first,))
        for table in ("attempts", "extractions"):
            for column in ("via", "live_cost_usd"):
                old.conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        old.conn.execute("ALTER TABLE extractions DROP COLUMN spans_json")
    monkeypatch.undo()
    with Ledger(path) as ledger:
        assert ledger.applied[:2] == ["0006_current_unique", "0007_rollups"]  # later migrations follow
        rows = ledger.query("SELECT id, superseded_by FROM extractions ORDER BY id")
        assert [tuple(r) for r in rows] == [(first, second), (second, None)]
        assert ledger.query("SELECT COUNT(*) FROM attempts WHERE extraction_id = ? AND current = 1",
                            [first])[0][0] == 0  # fmt: skip


# -- choosing the ledger ---------------------------------------------------------------------------

def _config(tmp_path: Path, ledger_section: str) -> Path:
    cfg = tmp_path / "cfg" / "extractkit.toml"
    cfg.parent.mkdir(exist_ok=True)
    cfg.write_text('schema = "tests.conftest:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
                   + ledger_section)  # fmt: skip
    return cfg


def test_ledger_url_in_the_config_the_environment_or_the_option_selects_postgres(tmp_path, monkeypatch):
    from extractkit._config import load_config
    from extractkit.cli._ledger_opt import ledger_choice

    url = "postgresql://u@db.example/ledger"
    monkeypatch.delenv("EXTRACTKIT_LEDGER", raising=False)
    cfg = load_config(_config(tmp_path, f'[ledger]\nurl = "{url}"\n'))
    assert ledger_choice(None, cfg).path == url  # as written: never relative to the config's folder
    assert ledger_choice(url + "2", cfg).path == url + "2"
    monkeypatch.setenv("EXTRACTKIT_LEDGER", url + "3")
    assert ledger_choice(None, cfg).path == url + "3"
    monkeypatch.delenv("EXTRACTKIT_LEDGER")
    on_disk = load_config(_config(tmp_path, '[ledger]\npath = "l.sqlite3"\n'))
    assert ledger_choice(None, on_disk).path == tmp_path / "cfg" / "l.sqlite3"


@pytest.mark.parametrize("section", [
    '[ledger]\nurl = "ledger.sqlite3"\n',
    '[ledger]\nurl = "postgresql://u@h/db"\npath = "l.sqlite3"\n',
])  # fmt: skip
def test_a_ledger_url_that_is_no_postgres_url_or_comes_with_a_path_is_refused(tmp_path, section):
    from extractkit import ConfigError
    from extractkit._config import load_config

    with pytest.raises(ConfigError, match=r"\[ledger\]"):
        load_config(_config(tmp_path, section))


def test_extract_on_a_postgres_ledger_end_to_end(tmp_path, pg_url, monkeypatch):
    from .fakes import FakeLLMServer, echo_invoice_responder
    from .test_batch import cli

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"d{i}.txt").write_text(f"From: Company {i} Ltd\nTotal: {i + 1}.00\n")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = _config(tmp_path, "")
        cfg.write_text(cfg.read_text().replace('model = "gpt-4o-mini"\n',
                                               f'model = "gpt-4o-mini"\nbase_url = "{server.base_url}"\n'))
        done = cli("extract", str(docs), "--config", str(cfg), "--ledger", pg_url)
        assert done.returncode == 0, done.stderr
        assert f"ledger: {pg_url}" in done.stdout
        env = dict(os.environ, OPENAI_API_KEY="sk-fake", EXTRACTKIT_LEDGER=pg_url)
        again = subprocess.run([sys.executable, "-m", "extractkit", "extract", str(docs), "--config", str(cfg)],
                               env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == 5  # the second run resumed all five from PostgreSQL
        dry = cli("extract", str(docs), "--config", str(cfg), "--ledger", pg_url, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert len(server.requests) == 5
    with Ledger(pg_url) as ledger:
        assert ledger.query("SELECT COUNT(*) FROM extractions WHERE status = 'ok'")[0][0] == 5
        assert [r["status"] for r in ledger.query("SELECT status FROM runs ORDER BY id")] == ["done", "done"]


def test_an_unreachable_postgres_ledger_in_the_cli_is_one_line_exit_2_without_the_password(tmp_path):
    from .test_batch import cli

    done = cli("report", "--ledger", "postgresql://nobody:pw-never-printed@127.0.0.1:1/x")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and "pw-never-printed" not in done.stderr + done.stdout
    assert "postgresql://nobody:***@127.0.0.1:1/x" in done.stderr


def test_a_psycopg_error_that_escapes_the_ledger_is_still_one_line_exit_2(monkeypatch):
    import psycopg
    from typer.testing import CliRunner

    from extractkit.cli._app import app

    def broken(*args, **kwargs):
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("extractkit.cli._ledger_opt.open_ledger", broken)
    done = CliRunner().invoke(app, ["report", "--ledger", "postgresql://u@127.0.0.1:1/x"])
    assert done.exit_code == 2, done.output
    assert "server closed the connection" in done.output and "Traceback" not in done.output


def test_a_url_that_went_through_path_is_refused_not_made_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LedgerError, match="postgresql:// URL that went through Path"):
        Ledger(Path("postgresql://u@127.0.0.1:1/x"))
    assert list(tmp_path.iterdir()) == []
