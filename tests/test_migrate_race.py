"""Opening one fresh ledger from many processes or threads at once (issue 12, item 5)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

from extractkit.ledger import MIGRATIONS, Ledger

N_PROCESSES = 8
N_LEDGERS = 20


def _open_each(paths: list[str], barrier: threading.Barrier, results: multiprocessing.Queue) -> None:
    """One opener: for every path, wait for all the others, then open (and close) the ledger."""
    failures = []
    for path in paths:
        barrier.wait(timeout=300)
        try:
            with Ledger(path) as ledger:
                ledger.start_run("batch")
        except Exception as exc:  # every failure is reported, none may happen
            failures.append(f"{Path(path).name}: {type(exc).__name__}: {exc}")
    results.put(failures)


def _check_migrated_once(paths: list[str]) -> None:
    for path in paths:
        conn = sqlite3.connect(path)
        try:
            names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
            n_runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()
        assert names == [name for name, _ in MIGRATIONS]
        assert n_runs == N_PROCESSES
        assert mode == "wal"


def test_eight_processes_open_twenty_fresh_ledgers_at_once(tmp_path):
    paths = [str(tmp_path / f"ledger{i:02d}.sqlite3") for i in range(N_LEDGERS)]
    ctx = multiprocessing.get_context("spawn")  # no fork of a multi-threaded test process
    barrier = ctx.Barrier(N_PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_each, args=(paths, barrier, results)) for _ in range(N_PROCESSES)]
    for p in procs:
        p.start()
    failures = [f for _ in procs for f in results.get(timeout=600)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert failures == [], f"{len(failures)} of {N_PROCESSES * N_LEDGERS} opens failed: {failures[:5]}"
    _check_migrated_once(paths)


def test_eight_threads_open_one_fresh_ledger_at_once(tmp_path):
    paths = [str(tmp_path / f"ledger{i:02d}.sqlite3") for i in range(N_LEDGERS)]
    barrier = threading.Barrier(N_PROCESSES)
    out: list[list[str]] = []

    class Sink:
        def put(self, failures: list[str]) -> None:
            out.append(failures)

    threads = [
        threading.Thread(target=_open_each, args=(paths, barrier, Sink())) for _ in range(N_PROCESSES)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    failures = [f for fs in out for f in fs]
    assert len(out) == N_PROCESSES
    assert failures == [], f"{len(failures)} of {N_PROCESSES * N_LEDGERS} opens failed: {failures[:5]}"
    _check_migrated_once(paths)


def test_an_up_to_date_ledger_opens_without_the_write_lock(tmp_path):
    """Opening a migrated ledger reads, it does not wait for a writer (a long batch transaction)."""
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        with Ledger(path) as ledger:
            assert ledger.applied == []
    finally:
        writer.execute("ROLLBACK")
        writer.close()
