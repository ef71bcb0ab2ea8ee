"""`extractkit extract` end to end: a real HTTP server on 127.0.0.1, the CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from extractkit import DocumentError
from extractkit.batch import load

from .conftest import db_rows
from .fakes import FakeLLMServer, echo_invoice_responder

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp: Path, base_url: str, extra: str = "", tier_extra: str = "") -> Path:
    cfg = tmp / "extractkit.toml"
    cfg.write_text(
        f'schema = "tests.conftest:Invoice"\n{extra}\n'
        f'[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\nbase_url = "{base_url}"\n'
        f"{'' if 'max_reasks' in tier_extra or 'retries' in tier_extra else 'max_reasks = 0'}\n{tier_extra}\n"
    )
    return cfg


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPENAI_API_KEY="sk-fake", EXTRACTKIT_LEDGER="")
    return subprocess.run([sys.executable, "-m", "extractkit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def make_bad_inputs(docs: Path) -> None:
    import pypdf

    (docs / "empty.txt").write_text("")
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02PK\x03\x04" * 10)
    (docs / "latin1.txt").write_bytes("From: Café Ltd\nTotal: 5".encode("latin-1"))
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj <<< garbage")
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    with (docs / "scan.pdf").open("wb") as f:
        writer.write(f)
    (docs / "loop.txt").symlink_to(docs / "loop.txt")
    (docs / "long.txt").write_text("From: Long Co\nTotal: 5\n" + "lorem ipsum " * 3000)
    (docs / "photo.gif").write_bytes(b"\x89PNG....")


def test_batch_with_bad_inputs_then_resume(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("From: ACME Tools Ltd\nTotal: 1,249.50\n")
    (docs / "b.md").write_text("# Invoice\nFrom: Beta GmbH\nTotal: 10.00\n")
    (docs / "sub" / "c.html").write_text(
        "<html><body><p>From: Gamma SA</p><script>x()</script><p>Total: 7.5</p></body></html>"
    )
    (docs / "nothing.txt").write_text("no fields in here")
    make_bad_inputs(docs)
    out, ledger = tmp_path / "out.jsonl", tmp_path / "ledger.sqlite3"
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = write_config(tmp_path, server.base_url, tier_extra='context_window = 2048\nlong_documents = "refuse"')
        args = ["extract", str(docs), "--config", str(cfg), "--out", str(out), "--ledger", str(ledger)]
        first = cli(*args, "--json")
        assert first.returncode == 1, first.stderr  # some documents failed
        summary = json.loads(first.stdout)
        requests_after_first = len(server.requests)
        rows = {Path(r["path"]).name: r for r in lines(out)}
        # every supported file appears exactly once; the .gif is skipped and counted
        assert len(lines(out)) == len(rows) == 11 and summary["skipped"] == 1
        assert {n: rows[n]["status"] for n in ("a.txt", "b.md", "c.html")} == dict.fromkeys(
            ("a.txt", "b.md", "c.html"), "ok")  # fmt: skip
        assert rows["c.html"]["value"] == {"issuer": "Gamma SA", "total": 7.5, "date": None}
        assert rows["nothing.txt"]["status"] == "failed" and rows["nothing.txt"]["outcome"] == "ungrounded"
        expected_errors = {"empty.txt": "empty", "binary.txt": "binary", "latin1.txt": "invalid_utf8",
                           "corrupt.pdf": "corrupt_pdf", "scan.pdf": "no_text", "loop.txt": "symlink_loop"}  # fmt: skip
        for name, kind in expected_errors.items():
            assert (rows[name]["status"], rows[name]["outcome"]) == ("error", kind), rows[name]
            assert rows[name]["error"].startswith(str(docs / name))
        assert rows["long.txt"]["outcome"] == "context_overflow"
        assert requests_after_first == 4  # a, b, c, nothing: nothing else was sent

        # the ledger has every document, each error in plain words
        assert db_rows(ledger, "SELECT COUNT(*) FROM extractions")[0][0] == 11
        assert db_rows(ledger, "SELECT status FROM runs")[0][0] == "done"

        # a rerun of the finished batch makes no requests and writes the same documents once
        second = cli(*args, "--json")
        assert second.returncode == 1
        assert len(server.requests) == requests_after_first
        assert json.loads(second.stdout)["resumed"] == 5  # 4 extracted + the context overflow
        assert sorted(r["path"] for r in lines(out)) == sorted(r["path"] for r in rows.values())

        # --force sends again
        cli(*args, "--force", "--json")
        assert len(server.requests) == 2 * requests_after_first


def test_summary_table_and_exit_code_zero(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("From: ACME Tools Ltd\nTotal: 1,249.50\n")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = write_config(tmp_path, server.base_url)
        proc = cli("extract", str(docs), "--config", str(cfg), "--ledger", str(tmp_path / "l.db"))
    assert proc.returncode == 0, proc.stderr
    assert "wins by tier: zero_shot 1" in proc.stdout
    rep = cli("report", "--ledger", str(tmp_path / "l.db"), "--json")
    data = json.loads(rep.stdout)
    assert data["totals"]["ok"] == 1 and data["tiers"][0]["resolved"] == 1


@pytest.mark.parametrize(("toml_extra", "tier_extra", "message"), [
    ("", "max_reasks = -1", "tiers.0.max_reasks"),
    ("", 'mode = "yaml"', "tiers.0.mode"),
    ("", "bogus = 1", "tiers.0.bogus"),
    ("[batch]\nconcurrency = 0", "", "batch.concurrency"),
])  # fmt: skip
def test_broken_config_fails_before_any_request(tmp_path, toml_extra, tier_extra, message):
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = write_config(tmp_path, server.base_url, toml_extra, tier_extra)
        proc = cli("extract", str(tmp_path), "--config", str(cfg), "--ledger", str(tmp_path / "l.db"))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert server.requests == []


def test_missing_api_key_names_both_ways(tmp_path):
    # not a loopback address: a server on this machine needs no key (issue 14)
    cfg = write_config(tmp_path, "http://fake-llm.test/v1")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    proc = subprocess.run([sys.executable, "-m", "extractkit", "extract", str(tmp_path), "--config", str(cfg)],
                          cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "OPENAI_API_KEY" in proc.stderr and "api_key" in proc.stderr


def test_unreadable_file_is_a_document_error(tmp_path, monkeypatch):
    path = tmp_path / "secret.txt"
    path.write_text("x")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # tests run as root: chmod would not stop us
    with pytest.raises(DocumentError) as info:
        load(path, "txt")
    assert info.value.kind == "unreadable" and "permission denied" in str(info.value)


def test_corpus_pdfs_have_text(corpus):
    for pdf in sorted(corpus.glob("*.pdf")):
        assert len(load(pdf, "pdf").text) > 50


def _slow(delay: float):
    def responder(body):
        time.sleep(delay)
        return echo_invoice_responder(body)

    return responder


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OPENAI_API_KEY="sk-fake")
    return subprocess.Popen([sys.executable, "-m", "extractkit", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for_ok(ledger: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger.exists():
            try:
                done = db_rows(ledger, "SELECT COUNT(*) FROM extractions WHERE status='ok'")[0][0]
                if done >= n:
                    return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} documents done in {timeout} s")


def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"d{i:02}.txt").write_text(f"From: Company {i} Ltd\nTotal: {i + 1}.00\n")
    out, ledger = tmp_path / "out.jsonl", tmp_path / "l.sqlite3"
    with FakeLLMServer(_slow(0.05)) as server:
        cfg = write_config(tmp_path, server.base_url)
        args = ["extract", str(docs), "--config", str(cfg), "--out", str(out), "--ledger", str(ledger),
                "--concurrency", "4", "--json"]  # fmt: skip
        proc = _start(args)
        _wait_for_ok(ledger, 10)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        done_before = db_rows(ledger, "SELECT COUNT(*) FROM extractions WHERE status='ok'")[0][0]
        rerun = cli(*args)
        assert rerun.returncode == 0, rerun.stderr
    rows = lines(out)
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in docs.iterdir())
    assert sum(r["resumed"] for r in rows) == done_before
    assert db_rows(ledger, "PRAGMA integrity_check")[0][0] == "ok"
    assert db_rows(ledger, "SELECT COUNT(DISTINCT document_sha256) FROM extractions WHERE status='ok'")[0][0] == 40
    # nothing finished before the kill was sent again (at most the 4 in flight were)
    assert len(server.requests) <= 40 + 4


def test_ctrl_c_stops_cleanly_and_marks_the_run(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"d{i:02}.txt").write_text(f"From: Company {i} Ltd\nTotal: {i + 1}.00\n")
    ledger = tmp_path / "l.sqlite3"
    with FakeLLMServer(_slow(0.2)) as server:
        cfg = write_config(tmp_path, server.base_url)
        proc = _start(["extract", str(docs), "--config", str(cfg), "--ledger", str(ledger),
                       "--concurrency", "2", "--json"])  # fmt: skip
        _wait_for_ok(ledger, 3)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert db_rows(ledger, "SELECT status FROM runs")[0][0] == "interrupted"
    assert db_rows(ledger, "SELECT COUNT(*) FROM extractions")[0][0] >= 3
