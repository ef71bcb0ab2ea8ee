"""Many workers on one PostgreSQL ledger (issue 17, section 2): `extractkit enqueue`, `worker`,
`status` as subprocesses against a real PostgreSQL and the fake LLM server of tests/fakes.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .fakes import FakeLLMServer, echo_invoice_responder

ROOT = Path(__file__).resolve().parents[1]


def slow(delay: float) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any], dict[str, str]]]:
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        time.sleep(delay)
        return echo_invoice_responder(body)

    return answer


def env() -> dict[str, str]:
    return dict(os.environ, OPENAI_API_KEY="sk-fake", EXTRACTKIT_LEDGER="", PYTHONPATH=str(ROOT))


def cli(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "extractkit", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "extractkit", *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def project(tmp: Path, base_url: str, n: int) -> tuple[Path, Path]:
    cfg = tmp / "extractkit.toml"
    cfg.write_text(
        'schema = "tests.conftest:Invoice"\n'
        f'[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\nbase_url = "{base_url}"\nmax_reasks = 0\n'
    )
    docs = tmp / "docs"
    docs.mkdir()
    for i in range(n):
        (docs / f"d{i:03d}.txt").write_text(f"From: Company {i}\nTotal: {i}.25\n")
    return cfg, docs


def totals(url: str) -> dict[str, int]:
    """The queue's totals, read in this process (quicker than the CLI, for polling)."""
    from extractkit.ledger import WorkQueue

    with WorkQueue(url, install=False) as q:
        return q.status()["totals"]


def status(cwd: Path, url: str) -> dict[str, Any]:
    done = cli(cwd, "status", "--ledger", url, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def current_extractions(url: str) -> list[tuple[str, str]]:
    """(document sha256, status) of every current final extraction in the ledger."""
    from extractkit.ledger import Ledger

    with Ledger(url) as ledger:
        rows = ledger.query("SELECT document_sha256, status FROM extractions WHERE superseded_by IS NULL"
                            " AND status IN ('ok', 'failed')")  # fmt: skip
    return [(r[0], r[1]) for r in rows]


def wait_for(check: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_two_worker_processes_finish_every_document_exactly_once(here, pg_url):
    with FakeLLMServer(slow(0.1)) as server:
        cfg, docs = project(here, server.base_url, 40)
        queued = cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url)
        assert queued.returncode == 0, queued.stderr
        assert "40 new documents queued" in queued.stdout
        workers = [start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--concurrency", "4", "--json")
                   for _ in range(2)]  # fmt: skip
        outs = [w.communicate(timeout=120) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], [e for _, e in outs]
        summaries = [json.loads(o) for o, _ in outs]
        assert sum(s["batch"]["ok"] for s in summaries) == 40
        assert len(server.requests) == 40  # none paid twice
    extracted = current_extractions(pg_url)
    assert len(extracted) == 40 and len({sha for sha, _ in extracted}) == 40
    s = status(here, pg_url)
    assert (s["totals"]["done"], s["totals"]["waiting"], s["totals"]["in_flight"]) == (40, 0, 0)
    assert sorted(w["done"] for w in s["workers"]) == sorted(x["batch"]["ok"] for x in summaries)


def test_enqueue_twice_makes_no_duplicate_jobs(here, pg_url):
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 3)
        (docs / "copy.txt").write_text((docs / "d000.txt").read_text())  # the same content at another path
        first = cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url, "--json")
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout) | {"unreadable": []} == {
            "new": 3, "waiting": 0, "in_flight": 0, "done": 0, "failed": 0, "requeued": 0, "documents": 4,
            "skipped": 0, "unreadable": []}  # fmt: skip
        again = cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url)
        assert again.returncode == 0, again.stderr
        assert "0 new documents queued; 3 already waiting" in again.stdout
        assert status(here, pg_url)["totals"]["jobs"] == 3
        assert cli(here, "worker", "-c", str(cfg), "--ledger", pg_url).returncode == 0
        done = cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url, "--json")
        assert json.loads(done.stdout)["done"] == 3
        assert len(server.requests) == 3


def test_a_killed_worker_has_its_documents_reclaimed_after_the_lease(here, pg_url):
    """SIGKILL mid-run: nothing is put back, nothing marked; after the 2 s lease another worker
    claims the dead one's documents; every document ends done with one current extraction."""
    with FakeLLMServer(slow(0.5)) as server:
        cfg, docs = project(here, server.base_url, 40)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        victim = start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--concurrency", "4", "--lease", "2")
        wait_for(lambda: totals(pg_url)["done"] >= 2, what="the first documents")
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
        held = totals(pg_url)
        assert held["in_flight"] + held["expired"] > 0  # the dead worker's claims are still there
        t0 = time.monotonic()
        rescuer = cli(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--concurrency", "4", "--lease", "2",
                      "--json")  # fmt: skip
        assert rescuer.returncode == 0, rescuer.stderr
        summary = json.loads(rescuer.stdout)
        assert summary["reclaimed"] > 0
        assert time.monotonic() - t0 < 60
        paid = len(server.requests)
    s = status(here, pg_url)
    assert (s["totals"]["done"], s["totals"]["waiting"], s["totals"]["in_flight"], s["totals"]["expired"]) == (
        40, 0, 0, 0)
    assert s["totals"]["reclaims"] == summary["reclaimed"]
    extracted = current_extractions(pg_url)
    assert len(extracted) == 40 and len({sha for sha, _ in extracted}) == 40
    assert 40 <= paid <= 40 + 8  # at most the documents in flight or buffered at the kill paid twice
    states = {w["state"] for w in s["workers"]}
    assert states == {"lost", "stopped"} or states == {"stopped"}


def test_sigterm_finishes_what_is_in_flight_and_puts_back_the_rest(here, pg_url):
    """The first SIGTERM: no new claim, the documents in flight finish (paid for, kept), the ones
    claimed but not started go back to waiting at once (no 600 s lease to wait out)."""
    with FakeLLMServer(slow(1.0)) as server:
        cfg, docs = project(here, server.base_url, 40)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        w = start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--concurrency", "4", "--lease", "600")
        wait_for(lambda: len(server.requests) >= 2, what="requests in flight")
        w.send_signal(signal.SIGTERM)
        _, stderr = w.communicate(timeout=60)
        assert w.returncode == 130, stderr
        assert "the documents in flight finish" in stderr and "put back in the queue" in stderr
        paid = len(server.requests)
    t = status(here, pg_url)["totals"]
    assert (t["in_flight"], t["expired"], t["done"] + t["waiting"]) == (0, 0, 40)
    assert t["done"] == paid >= 2  # every request paid for became a done document
    assert t["waiting"] > 0


def test_a_second_signal_stops_at_once(here, pg_url):
    with FakeLLMServer(slow(5.0)) as server:
        cfg, docs = project(here, server.base_url, 8)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        w = start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--concurrency", "4", "--lease", "600")
        wait_for(lambda: len(server.requests) >= 2, what="requests in flight")
        w.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        w.send_signal(signal.SIGTERM)
        _, stderr = w.communicate(timeout=60)
        assert w.returncode == 130, stderr
    t = totals(pg_url)
    assert (t["in_flight"], t["done"], t["waiting"]) == (0, 0, 8)  # all put back, the slow ones too


def test_a_worker_drains_and_exits_and_wait_picks_up_later_documents(here, pg_url):
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 2)
        empty = cli(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--json")
        assert empty.returncode == 0, empty.stderr
        assert json.loads(empty.stdout)["batch"]["documents"] == 0
        w = start(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--wait", "--json")
        time.sleep(1.5)
        assert w.poll() is None  # still waiting on an empty queue
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        wait_for(lambda: totals(pg_url)["done"] == 2, what="the later documents")
        w.send_signal(signal.SIGTERM)
        w.communicate(timeout=60)
        assert w.returncode == 0  # SIGTERM is a --wait worker's normal stop
        assert len(server.requests) == 2
    assert [x["state"] for x in status(here, pg_url)["workers"]] == ["stopped", "stopped"]


def test_errors_per_document_do_not_stop_a_worker(here, pg_url):
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if "Company 1\n" in json.dumps(body["messages"]).replace("\\n", "\n"):
            return 400, {"error": {"message": "bad request", "type": "invalid_request_error"}}, {}
        return echo_invoice_responder(body)

    with FakeLLMServer(answer) as server:
        cfg, docs = project(here, server.base_url, 6)
        assert cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url).returncode == 0
        (docs / "d002.txt").unlink()  # gone before a worker reads it
        (docs / "d003.txt").write_text("From: Someone Else\nTotal: 1.00\n")  # changed since it was queued
        done = cli(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--json")
        assert done.returncode == 1, done.stderr
        b = json.loads(done.stdout)["batch"]
        assert (b["ok"], b["failed"], b["errors"]) == (3, 1, 2)
    t = status(here, pg_url)["totals"]
    assert (t["done"], t["failed"], t["waiting"]) == (3, 3, 0)


def test_a_sqlite_ledger_gets_a_clear_error(here):
    cfg, docs = project(here, "http://127.0.0.1:9/v1", 1)
    for args in (["enqueue", str(docs), "-c", str(cfg)], ["worker", "-c", str(cfg)], ["status"]):
        done = cli(here, *args, "--ledger", str(here / "ledger.sqlite3"))
        assert done.returncode == 2, done.stderr
        assert "a shared work queue needs a PostgreSQL ledger" in done.stderr
        assert "ledger.sqlite3 (--ledger) is a SQLite file" in " ".join(done.stderr.split())
    assert not (here / "ledger.sqlite3").exists()


def test_a_result_recorded_but_not_marked_is_not_paid_again(here, pg_url):
    """The crash window: a worker recorded an extraction and died before marking its job. The
    next worker reclaims the job and finds the result in the ledger (find_final): no request."""
    import asyncio

    from extractkit import Extractor, ZeroShot
    from extractkit.batch import Worker, aenqueue, load
    from extractkit.ledger import Ledger, WorkQueue

    from .conftest import Invoice

    doc = here / "a.txt"
    doc.write_text("From: ACME\nTotal: 5.00\n")
    with FakeLLMServer(echo_invoice_responder) as server, WorkQueue(pg_url) as queue:
        ledger = Ledger(pg_url)

        async def main() -> Any:
            ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=server.base_url, max_reasks=0)])
            async with ex:
                await aenqueue(ex, queue, [doc])
                (job,) = queue.claim("dead", ex.schema_hash, ex.config_hash, 1, lease_s=1)
                await ex.aextract_in_run(load(doc, "txt").text, ledger=ledger, run_id=None, limiter=None,
                                         path=str(doc), size=doc.stat().st_size, doc_type="txt")  # fmt: skip
                assert len(server.requests) == 1  # recorded; the job is still claimed by "dead"
                await asyncio.sleep(1.2)  # its lease runs out
                return await Worker(ex, ledger, queue, lease_s=5).run()

        try:
            summary = asyncio.run(main())
        finally:
            ledger.close()
        assert len(server.requests) == 1  # not paid again
        assert (summary.reclaimed, summary.batch.resumed, summary.batch.ok) == (1, 1, 1)
        assert queue.status()["totals"]["done"] == 1


def test_two_enqueues_at_once_from_threads_count_each_document_once(pg_url, tmp_path):
    """Through the library function: two enqueues of the same folder at once, one job each."""
    import asyncio

    from extractkit import Extractor, ZeroShot
    from extractkit.batch import aenqueue
    from extractkit.ledger import WorkQueue

    from .conftest import Invoice

    for i in range(30):
        (tmp_path / f"{i}.txt").write_text(f"From: C{i}\nTotal: 1\n")
    ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url="http://127.0.0.1:9/v1")])
    results: list[Any] = []

    def one() -> None:
        with WorkQueue(pg_url) as q:
            results.append(asyncio.run(aenqueue(ex, q, [tmp_path])))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.counts.new for r in results) == 30
    assert all(r.counts.new + r.counts.waiting == 30 for r in results)


def test_extract_on_a_postgres_ledger_is_enqueue_plus_one_worker(here, pg_url):
    """Same --out and resume as on SQLite: one line per document (an unreadable one included),
    a rerun pays nothing and marks every line resumed; the documents went through the queue."""
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 3)
        (docs / "empty.txt").write_text("")
        out = here / "out.jsonl"
        first = cli(here, "extract", str(docs), "-c", str(cfg), "--ledger", pg_url, "--out", str(out), "--json")
        assert first.returncode == 1, first.stderr  # the empty file is an error line, as on SQLite
        summary = json.loads(first.stdout)
        assert (summary["documents"], summary["ok"], summary["errors"]) == (4, 3, 1)
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert sorted(Path(x["path"]).name for x in lines) == ["d000.txt", "d001.txt", "d002.txt", "empty.txt"]
        assert len(server.requests) == 3
        again = cli(here, "extract", str(docs), "-c", str(cfg), "--ledger", pg_url, "--out", str(out), "--json")
        assert json.loads(again.stdout)["resumed"] == 3 and len(server.requests) == 3
        assert len(out.read_text().splitlines()) == 4
        forced = cli(here, "extract", str(docs), "-c", str(cfg), "--ledger", pg_url, "--force")
        assert forced.returncode == 2 and "--force is not supported" in forced.stderr
    t = totals(pg_url)
    assert (t["jobs"], t["done"]) == (3, 3)
