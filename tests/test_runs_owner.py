"""A run whose process died (kill -9) is marked interrupted when the ledger is next opened
(issue 12, item 8); a live run, or one owned by another host, is left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from extractkit.ledger import Ledger
from extractkit.ledger._owner import is_gone, process_start, this_process

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc start times")

CHILD = textwrap.dedent(
    """
    import sys, time
    from extractkit.ledger import Ledger
    ledger = Ledger(sys.argv[1])
    print(ledger.start_run("batch"), flush=True)
    time.sleep(600)
    """
)


def _start_child_run(path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    assert run_id, "the child did not start a run"
    return proc, run_id


def _run(ledger: Ledger, run_id: str):
    return ledger.query("SELECT * FROM runs WHERE id = ?", [run_id])[0]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_run_is_interrupted_on_the_next_open_and_a_live_one_stays_running(ledger_target):
    path = ledger_target
    mine = Ledger(path)
    live_run = mine.start_run("library")  # this process: alive
    killed, killed_run = _start_child_run(path)
    alive, alive_run = _start_child_run(path)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
        with Ledger(path) as ledger:
            assert ledger.interrupted == [killed_run]
            row = _run(ledger, killed_run)
            assert row["status"] == "interrupted"
            assert row["ended_at"] is not None and row["ended_at"] >= row["started_at"]
            assert (row["owner_pid"], row["owner_host"]) == (killed.pid, socket.gethostname())
            assert _run(ledger, live_run)["status"] == "running"
            assert _run(ledger, alive_run)["status"] == "running"
            assert _run(ledger, live_run)["ended_at"] is None
        with Ledger(path) as again:
            assert again.interrupted == []  # marked once
    finally:
        for proc in (killed, alive):
            proc.kill()
            proc.wait(timeout=60)
            assert proc.stdout is not None
            proc.stdout.close()
        mine.close()


def _fake_run(ledger: Ledger, pid: int, host: str, start: str | None) -> str:
    run_id = ledger.start_run("batch")
    with ledger.transaction() as conn:
        conn.execute(
            "UPDATE runs SET owner_pid = ?, owner_host = ?, owner_start = ? WHERE id = ?",
            (pid, host, start, run_id),
        )
    return run_id


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def test_runs_of_other_hosts_and_without_an_owner_are_left_alone(ledger_target):
    path = ledger_target
    with Ledger(path) as ledger:
        elsewhere = _fake_run(ledger, _dead_pid(), "another-host.example", None)
        legacy = ledger.start_run("batch")
        with ledger.transaction() as conn:  # as written before runs recorded their owner
            conn.execute(
                "UPDATE runs SET owner_pid = NULL, owner_host = NULL, owner_start = NULL WHERE id = ?",
                (legacy,),
            )
        gone = _fake_run(ledger, _dead_pid(), socket.gethostname(), None)
    with Ledger(path) as ledger:
        assert ledger.interrupted == [gone]
        assert _run(ledger, elsewhere)["status"] == "running"
        assert _run(ledger, legacy)["status"] == "running"


@linux_only
def test_a_reused_pid_is_not_mistaken_for_the_owner(ledger_target):
    pid, _, start = this_process()
    assert start is not None and start.startswith("linux:")
    assert not is_gone(pid, start)
    *prefix, ticks = start.split(":")
    earlier = ":".join([*prefix, str(int(ticks) - 1)])  # same pid, an earlier process
    assert is_gone(pid, earlier)
    boot, ns = prefix[1], prefix[2]
    assert is_gone(pid, f"linux:not-{boot}:{ns}:{ticks}")  # recorded before the last boot
    assert not is_gone(_dead_pid(), f"linux:{boot}:other-{ns}:{ticks}")  # another container
    path = ledger_target
    with Ledger(path) as ledger:
        reused = _fake_run(ledger, pid, socket.gethostname(), earlier)
        live = _fake_run(ledger, pid, socket.gethostname(), start)
    with Ledger(path) as ledger:
        assert ledger.interrupted == [reused]
        assert _run(ledger, live)["status"] == "running"


@linux_only
def test_process_start_of_a_missing_process_is_unknown():
    assert process_start(_dead_pid()) is None
    assert process_start(os.getpid()) == this_process()[2]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_batch_killed_mid_run_is_interrupted_when_the_ledger_is_next_opened(tmp_path):
    from .fakes import FakeLLMServer
    from .test_batch import _slow, _start, _wait_for_ok, cli, write_config

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"d{i:02}.txt").write_text(f"From: Company {i} Ltd\nTotal: {i + 1}.00\n")
    ledger = tmp_path / "l.sqlite3"
    with FakeLLMServer(_slow(0.2)) as server:
        cfg = write_config(tmp_path, server.base_url)
        args = ["extract", str(docs), "--config", str(cfg), "--ledger", str(ledger), "--concurrency", "2"]
        proc = _start(args)
        _wait_for_ok(ledger, 2)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        rerun = cli(*args, "--json")  # opening the ledger marks the killed run
        assert rerun.returncode == 0, rerun.stderr
    with Ledger(ledger) as opened:
        runs = [dict(r) for r in opened.query("SELECT status, ended_at, owner_pid FROM runs ORDER BY id")]
    assert [r["status"] for r in runs] == ["interrupted", "done"]
    assert runs[0]["owner_pid"] == proc.pid and runs[0]["ended_at"] is not None
