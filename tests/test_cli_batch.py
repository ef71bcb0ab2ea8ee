"""`extractkit extract --via batch`, `extractkit batch status` and `extractkit batch cancel`: the CLI
in a subprocess against the fake Batch API (tests/fakes_batch.py) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer

from .fakes import echo_invoice_responder
from .fakes_batch import FakeBatchServer
from .test_batch import ROOT, cli, lines, write_config


def make_docs(tmp_path: Path, n: int = 3) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(n):
        (docs / f"d{i}.txt").write_text(f"Invoice\nFrom: Acme {i}\nTotal: {10 + i}.00\n")
    return docs


def creates(server: FakeBatchServer) -> list[str]:
    return [b["metadata"]["extractkit_job"] for m, p, b in server.calls if (m, p) == ("POST", "/v1/batches")]


def test_extract_via_batch_then_status_then_a_rerun_sends_nothing(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with FakeBatchServer(echo_invoice_responder, advance_on_poll=3) as server:
        cfg = write_config(tmp_path, server.base_url)
        ledger = str(tmp_path / "l.sqlite3")
        args = ["extract", str(docs), "-c", str(cfg), "--ledger", ledger, "--via", "batch", "--poll", "0"]
        first = cli(*args, "--json", "--out", str(tmp_path / "out.jsonl"))
        assert first.returncode == 0, first.stderr
        summary = json.loads(first.stdout)
        assert (summary["documents"], summary["ok"], summary["failed"]) == (3, 3, 0)
        assert sorted(Path(x["path"]).name for x in lines(tmp_path / "out.jsonl")) == ["d0.txt", "d1.txt", "d2.txt"]
        assert len(creates(server)) == 1 and len(server.requests) == 3  # one wave, one part, 3 lines
        st = cli("batch", "status", "-c", str(cfg), "--ledger", ledger, "--json")
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        (wave,) = doc["waves"]
        assert (wave["wave"], wave["parts"], wave["lines"], wave["completed"], wave["documents"]) == (1, 1, 3, 3, 3)
        (part,) = doc["parts"]
        assert part["status"] == "ingested" and part["model"] == "gpt-4o-mini" and part["tier"]
        assert part["provider_batch_id"] == next(iter(server.batches)) and part["submitted_at"]
        assert doc["open_parts"] == 0
        human = cli("batch", "status", "-c", str(cfg), "--ledger", ledger)
        assert human.returncode == 0 and "ingested" in human.stdout and part["provider_batch_id"] in human.stdout
        again = cli(*args, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["resumed"] == 3 and len(creates(server)) == 1
        # the attempts say which way they went
        rows = subprocess.run([sys.executable, "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
                               "print(c.execute('select via, count(*) from attempts group by via').fetchall())",
                               ledger], capture_output=True, text=True)  # fmt: skip
        assert rows.stdout.strip() == "[('batch', 3)]"


def test_batch_cancel_then_the_next_run_sends_the_rest(tmp_path: Path) -> None:
    """A run killed while its wave waits at the provider; `batch cancel --all` cancels that batch;
    the same command again ingests it (its unrun lines go to the next wave) and finishes."""
    docs = make_docs(tmp_path)
    with FakeBatchServer(echo_invoice_responder, advance_on_poll=0) as server:
        cfg = write_config(tmp_path, server.base_url)
        ledger = str(tmp_path / "l.sqlite3")
        args = ["extract", str(docs), "-c", str(cfg), "--ledger", ledger, "--via", "batch", "--poll", "0.1"]
        env = dict(os.environ, OPENAI_API_KEY="sk-fake", EXTRACTKIT_LEDGER="")
        proc = subprocess.Popen([sys.executable, "-m", "extractkit", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not server.batches and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.batches, "no batch created"
            time.sleep(0.5)  # its submission recorded
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        st = json.loads(cli("batch", "status", "-c", str(cfg), "--ledger", ledger, "--json").stdout)
        assert [p["status"] for p in st["parts"]] == ["validating"] and st["open_parts"] == 1
        usage = cli("batch", "cancel", "-c", str(cfg), "--ledger", ledger)
        assert usage.returncode == 2 and "--wave N or --all" in usage.stderr
        none = cli("batch", "cancel", "-c", str(cfg), "--ledger", ledger, "--wave", "7")
        assert none.returncode == 2 and "wave 7" in none.stderr
        done = cli("batch", "cancel", "-c", str(cfg), "--ledger", ledger, "--all", "--json")
        assert done.returncode == 0, done.stderr
        (row,) = json.loads(done.stdout)["parts"]
        assert (row["wave"], row["was"], row["status"]) == (1, "validating", "cancelling")
        assert server.batch(1).status == "cancelling"
        st = json.loads(cli("batch", "status", "-c", str(cfg), "--ledger", ledger, "--json").stdout)
        assert [p["status"] for p in st["parts"]] == ["cancelling"]
        server.advance_on_poll = 3
        again = cli(*args[:-2], "--poll", "0", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["ok"] == 3
        assert server.batch(1).status == "cancelled" and len(creates(server)) == 2
        assert len(set(creates(server))) == 2 and len(server.requests) == 3  # the cancelled one ran nothing
        st = json.loads(cli("batch", "status", "-c", str(cfg), "--ledger", ledger, "--json").stdout)
        assert [(p["wave"], p["status"]) for p in st["parts"]] == [(1, "ingested"), (2, "ingested")]
        assert [w["unrun"] for w in st["waves"]] == [3, 0]


def test_usage_errors(tmp_path: Path) -> None:
    docs = make_docs(tmp_path, 1)
    cfg = write_config(tmp_path, "http://127.0.0.1:9/v1")
    bad = cli("extract", str(docs), "-c", str(cfg), "--ledger", str(tmp_path / "l.sqlite3"), "--via", "mail")
    assert bad.returncode == 2 and '--via must be "live" or "batch"' in bad.stderr
    assert "Traceback" not in bad.stderr
    empty = cli("batch", "status", "--ledger", str(tmp_path / "none.sqlite3"))
    assert empty.returncode == 2 and "no ledger" in empty.stderr


def test_worker_and_enqueue_refuse_a_batch_tier() -> None:
    from extractkit.cli._batch import refuse_batch_tiers, tier_vias

    chain = SimpleNamespace(tiers=[SimpleNamespace(name="cheap", via="batch"), SimpleNamespace(name="ft")])
    with pytest.raises(typer.Exit) as caught:
        refuse_batch_tiers(chain, "worker")
    assert caught.value.exit_code == 2
    assert tier_vias(chain, None) == {"cheap": "batch", "ft": "live"}
    assert tier_vias(chain, "batch") == {"cheap": "batch", "ft": "batch"}
    refuse_batch_tiers(SimpleNamespace(tiers=[SimpleNamespace(name="ft", via="live")]), "enqueue")


def test_nobody_listening_exits_3_naming_the_url(tmp_path: Path) -> None:
    """As `extract` live: the provider not answering is exit 3 with one `error:` line naming it, the
    run recorded as provider_unreachable (not a traceback, not exit 1)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    docs = make_docs(tmp_path, 1)
    cfg = write_config(tmp_path, f"http://127.0.0.1:{port}/v1")
    ledger = tmp_path / "l.sqlite3"
    got = cli("extract", str(docs), "-c", str(cfg), "--ledger", str(ledger), "--via", "batch", "--poll", "0")
    assert got.returncode == 3, got.stdout + got.stderr
    assert f"127.0.0.1:{port}" in got.stderr and "Traceback" not in got.stderr
    rows = subprocess.run([sys.executable, "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
                           "print(c.execute('select status from runs').fetchall())", str(ledger)],
                          capture_output=True, text=True)  # fmt: skip
    assert rows.stdout.strip() == "[('provider_unreachable',)]"


def test_a_tier_that_says_via_batch_needs_no_flag_and_the_queue_refuses_it(tmp_path: Path) -> None:
    docs = make_docs(tmp_path, 2)
    with FakeBatchServer(echo_invoice_responder, advance_on_poll=3) as server:
        cfg = write_config(tmp_path, server.base_url, extra="[batch]\npoll_s = 0", tier_extra='via = "batch"')
        ledger = str(tmp_path / "l.sqlite3")
        got = cli("extract", str(docs), "-c", str(cfg), "--ledger", ledger, "--json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["ok"] == 2 and len(creates(server)) == 1
        live = cli("extract", str(docs), "-c", str(cfg), "--ledger", ledger, "--via", "live", "--json")
        assert live.returncode == 0 and json.loads(live.stdout)["resumed"] == 2  # the tier's own via wins
        assert len(creates(server)) == 1
    for command in (["worker", "-c", str(cfg)], ["enqueue", str(docs), "-c", str(cfg)]):
        refused = cli(*command, "--ledger", "postgresql://nobody@127.0.0.1:9/none")
        assert refused.returncode == 2 and 'via = "batch"' in refused.stderr and "--via batch" in refused.stderr


def test_a_live_run_leaves_documents_in_flight_in_a_wave_alone(tmp_path: Path) -> None:
    """A batch run killed while its wave waits at the provider, then the same command without
    `--via batch`: the documents in flight are not sent live (they would be paid and recorded
    twice); `--via batch` then finishes them, one extraction each (the second audit of issue 18)."""
    docs = make_docs(tmp_path)
    with FakeBatchServer(echo_invoice_responder, advance_on_poll=0) as server:
        cfg = write_config(tmp_path, server.base_url)
        ledger = str(tmp_path / "l.sqlite3")
        args = ["extract", str(docs), "-c", str(cfg), "--ledger", ledger]
        env = dict(os.environ, OPENAI_API_KEY="sk-fake", EXTRACTKIT_LEDGER="")
        proc = subprocess.Popen([sys.executable, "-m", "extractkit", *args, "--via", "batch", "--poll", "0.1"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not server.batches and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.batches, "no batch created"
            time.sleep(0.5)  # its submission recorded
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        live = cli(*args)
        assert live.returncode == 1, live.stderr
        shown = live.stdout + live.stderr
        assert live.stderr.count("in_batch") == 3 and "in flight in a Batch API wave" in shown, shown
        assert not [c for c in server.calls if c[1].endswith("/chat/completions")]  # nothing sent live
        server.advance_on_poll = 3
        again = cli(*args, "--via", "batch", "--poll", "0", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["ok"] == 3
    rows = subprocess.run([sys.executable, "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
                           "print(c.execute('select count(*), count(distinct document_sha256) from extractions"
                           " where status = \\'ok\\'').fetchall())", ledger],
                          capture_output=True, text=True)  # fmt: skip
    assert rows.stdout.strip() == "[(3, 3)]", rows.stdout + rows.stderr


def test_dry_run_via_batch_prices_batch_tiers_at_the_batch_price(tmp_path: Path) -> None:
    """`--dry-run --via batch` estimates what the waves would cost: the batch price (half the live
    one for gpt-4o-mini), not the live price (the second audit of issue 18)."""
    docs = make_docs(tmp_path)
    cfg = write_config(tmp_path, "http://127.0.0.1:9/v1")
    ledger = str(tmp_path / "l.sqlite3")

    def worst(*via: str) -> float:
        done = cli("extract", str(docs), "-c", str(cfg), "--ledger", ledger, "--dry-run", "--json", *via)
        assert done.returncode == 0, done.stderr
        return float(json.loads(done.stdout)["worst_case_usd"])

    live, batch = worst(), worst("--via", "batch")
    assert live > 0 and batch == pytest.approx(live / 2, rel=1e-6)
