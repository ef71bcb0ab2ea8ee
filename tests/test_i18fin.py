"""The last gaps of issue 18 (Batch API waves), after its hostile-user audit: a wave part never
submitted (the provider answered 404 on /v1/files) no longer keeps its documents in flight for
ever (`batch cancel` drops it and frees them); a document made final another way is not sent in
a wave (not paid twice); `batch status` says why the provider failed a batch; a cancel the
provider refuses (409) is not retried and the others go on; `--max-cost` says what the next
batch could cost; a run stopped by a Batch API error says where its documents are;
``add_batch_items`` writes many rows per statement; the transport helpers live in one module."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from extractkit import Extractor, Ledger, ZeroShot
from extractkit.ledger import NewBatchItem, NewBatchJob

from .conftest import Invoice
from .fakes import echo_invoice_responder
from .fakes_batch import BadRequest, BatchPlan, FakeBatchServer
from .test_batch import ROOT, cli, write_config

KEY = "sk-i18fin-test-key-0123456789"


class Provider(FakeBatchServer):
    """The fake Batch API that also answers live chat completions (as a real provider does), and
    with ``no_batch`` True answers 404 on its files endpoint (a provider without a Batch API)."""

    no_batch = False

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/v1/chat/completions":
            with self.lock:
                self.calls.append((method, path, body))
            status, answer, _ = self.responder(body)
            return status, answer
        if self.no_batch and path.startswith("/v1/files"):
            with self.lock:
                self.calls.append((method, path, body))
            raise BadRequest("Not found", "not_found", 404)
        return super().handle(method, path, query, body)

    def live(self) -> int:
        return sum(1 for _, p, _ in self.calls if p == "/v1/chat/completions")

    def creates(self) -> int:
        return sum(1 for m, p, _ in self.calls if (m, p) == ("POST", "/v1/batches"))


def make_docs(tmp_path: Path, n: int = 3) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(n):
        (docs / f"d{i}.txt").write_text(f"Invoice\nFrom: Acme {i}\nTotal: {10 + i}.00\n")
    return docs


def sql(ledger: str, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(ledger) as c:
        return c.execute(query).fetchall()


# -- 1. a part never submitted: `batch cancel` frees its documents ----------------------------------


def test_a_part_refused_with_404_is_cancelled_and_its_documents_go_live(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with Provider(echo_invoice_responder, advance_on_poll=3) as server:
        server.no_batch = True
        cfg = str(write_config(tmp_path, server.base_url))
        ledger = str(tmp_path / "l.sqlite3")
        args = ["extract", str(docs), "-c", cfg, "--ledger", ledger]
        stuck = cli(*args, "--via", "batch", "--poll", "0")
        assert stuck.returncode == 1, stuck.stderr
        said = " ".join(stuck.stderr.split())
        assert "has no Batch API" in said
        # what happened to the documents, and what to do (not a bare error)
        assert "3 documents of this chain are left in wave 1 (3 in parts never submitted)" in said, said
        assert "batch cancel --all" in said and "run the same command again" not in said  # it would 404 again
        refused = cli(*args)  # the documents are in flight in the wave: a live run leaves them alone
        assert refused.returncode == 1 and refused.stderr.count("in_batch") == 3
        assert server.live() == 0

        done = cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--all")
        assert done.returncode == 0, done.stderr
        assert "building -> dropped (never submitted)" in done.stdout, done.stdout
        assert "3 documents freed" in done.stdout
        st = json.loads(cli("batch", "status", "-c", cfg, "--ledger", ledger, "--json").stdout)
        assert st["open_parts"] == 0 and st["parts"] == []
        (wave,) = st["waves"]
        assert (wave["wave"], wave["cancelled"], wave["pending"], wave["sent"]) == (1, 3, 0, 0)
        human = cli("batch", "status", "-c", cfg, "--ledger", ledger)
        assert "wave 1: 3 cancelled before it was submitted" in human.stdout, human.stdout

        live = cli(*args, "--json")  # free now: sent live, once each
        assert live.returncode == 0, live.stderr
        assert json.loads(live.stdout)["ok"] == 3 and server.live() == 3
        again = cli(*args, "--via", "batch", "--poll", "0", "--json")  # nothing left in a wave
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["resumed"] == 3 and server.creates() == 0
        nothing = cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--all")
        assert nothing.returncode == 0 and "no open batch and no document waiting" in nothing.stdout
    assert sql(ledger, "select count(*), count(distinct document_sha256) from extractions"
                       " where status = 'ok'") == [(3, 3)]  # fmt: skip


def test_a_cancelled_wave_is_not_reused_and_a_later_batch_run_sends_the_documents(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with Provider(echo_invoice_responder, advance_on_poll=3) as server:
        server.no_batch = True
        cfg = str(write_config(tmp_path, server.base_url))
        ledger = str(tmp_path / "l.sqlite3")
        args = ["extract", str(docs), "-c", cfg, "--ledger", ledger, "--via", "batch", "--poll", "0"]
        assert cli(*args).returncode == 1
        wrong = cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--wave", "2")
        assert wrong.returncode == 2 and "wave 2 has no open batch" in wrong.stderr
        done = cli("batch", "cancel", "-c", cfg, "--ledger", ledger, "--wave", "1", "--json")
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        assert (got["parts_dropped"], got["documents_freed"]) == (1, 3)
        assert [p["status"] for p in got["parts"]] == ["dropped"]
        server.no_batch = False  # the provider gains a Batch API
        again = cli(*args, "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["ok"] == 3 and server.creates() == 1 and len(server.requests) == 3
        st = json.loads(cli("batch", "status", "-c", cfg, "--ledger", ledger, "--json").stdout)
        assert [(w["wave"], w["cancelled"], w["answered"]) for w in st["waves"]] == [(1, 3, 0), (2, 0, 3)]
        assert [(p["wave"], p["status"]) for p in st["parts"]] == [(2, "ingested")]


# -- 1. a document made final another way is not sent in a wave -------------------------------------


def _chain(base_url: str, ledger: Ledger | None = None) -> Extractor[Invoice]:
    tier = ZeroShot(name="t1", model="gpt-4o-mini", base_url=base_url, api_key=KEY, max_reasks=0)
    return Extractor(Invoice, [tier], ledger=ledger)


def _run(runner: Any, paths: list[Any]) -> Any:
    async def go() -> Any:
        try:
            return await runner.run(paths)
        finally:
            await runner.extractor.aclose()

    return asyncio.run(go())


def test_a_pending_item_whose_document_was_made_final_live_is_not_sent(
    tmp_path: Path, ledger_target: str
) -> None:
    from extractkit.batch._loaders import load
    from extractkit.batch._waves import WaveRunner

    docs = make_docs(tmp_path, 2)
    doc = load(docs / "d0.txt", "txt")  # the text and identity the driver reads
    text, sha = doc.text, doc.sha256
    with Provider(echo_invoice_responder, advance_on_poll=3) as server, Ledger(ledger_target) as ledger:
        chain = _chain(server.base_url)
        # a batch run killed after enqueueing d0 (pending for wave 1) ...
        state = chain.steps("t1").start(text).to_json()
        item = NewBatchItem(document_sha256=sha, schema_hash=chain.schema_hash, config_hash=chain.config_hash,
                            wave=1, tier="t1", tier_state_json=state, source=str(docs / "d0.txt"),
                            path=str(docs / "d0.txt"), size=len(text), doc_type="txt")  # fmt: skip
        assert ledger.add_batch_items([item]) == 1
        # ... then the document extracted live by the library, which does not look at the waves
        live = _chain(server.base_url, ledger)
        assert live.extract(text).ok and server.live() == 1
        live.close()
        results: list[Any] = []
        runner = WaveRunner(chain, ledger, poll_s=0, on_result=lambda r, s: results.append(r))
        summary = _run(runner, [docs])
        assert summary.status == "done" and (summary.documents, summary.ok) == (2, 2)
        # d1 went in a batch, d0 not: one line, no second extraction of d0
        assert server.creates() == 1 and len(server.requests) == 1 and "Acme 1" in json.dumps(server.requests)
        assert sorted((Path(r.path).name, r.resumed) for r in results) == [("d0.txt", True), ("d1.txt", False)]
        finals = [r for r in ledger._read("SELECT document_sha256 FROM extractions WHERE status = 'ok'")]
        assert sorted(str(r[0]) == sha for r in finals) == [False, True]
        (row,) = ledger.wave_summary(chain.schema_hash, chain.config_hash)
        assert (row.superseded, row.answered, row.pending, row.sent) == (1, 1, 0, 0)
        assert not ledger.in_flight(chain.schema_hash, chain.config_hash)
        # --force sends it again on purpose (the final result is older than its new item)
        forced = WaveRunner(_chain(server.base_url), ledger, poll_s=0, force=True)
        assert _run(forced, [docs / "d0.txt"]).ok == 1
        assert server.creates() == 2 and len(server.requests) == 2


# -- 2. the failed batch's reason in the human status; 5. where the documents are --------------------


def test_a_failed_batch_shows_its_reason_and_the_run_says_where_the_documents_are(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    def planner(no: int, lines: list[dict[str, Any]]) -> BatchPlan:
        return BatchPlan(end="failed") if no == 1 else BatchPlan()

    with FakeBatchServer(echo_invoice_responder, advance_on_poll=3, planner=planner) as server:
        cfg = str(write_config(tmp_path, server.base_url))
        ledger = str(tmp_path / "l.sqlite3")
        args = ["extract", str(docs), "-c", cfg, "--ledger", ledger, "--via", "batch", "--poll", "0"]
        failed = cli(*args)
        assert failed.returncode == 1, failed.stderr
        said = " ".join(failed.stderr.split())
        assert "the provider failed batch" in said and "scripted failure" in said
        assert "3 documents of this chain are left in wave 2 (3 pending for the next wave)" in said, said
        human = cli("batch", "status", "-c", cfg, "--ledger", ledger)
        assert human.returncode == 0, human.stderr
        assert "the provider failed this batch: invalid_request: scripted failure (line 1)" in human.stdout
        again = cli(*args, "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["ok"] == 3


# -- 3. a cancel the provider refuses (409) is not retried; the others are cancelled -----------------


class _Stop(Exception):
    pass


def test_a_409_on_cancel_is_reported_not_retried_and_the_rest_are_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from extractkit.batch._waves import WaveRunner
    from extractkit.cli._build import build

    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    monkeypatch.chdir(ROOT)
    docs = make_docs(tmp_path, 2)
    with FakeBatchServer(echo_invoice_responder, advance_on_poll=0) as server:
        cfg = write_config(tmp_path, server.base_url)
        ledger_path = str(tmp_path / "l.sqlite3")
        extractor, _ = build(cfg)
        submitted: list[str] = []

        def on_wave(e: Any) -> None:
            if e.event == "submitted":
                submitted.append(e.provider_batch_id)
                if len(submitted) == 2:
                    raise _Stop  # the driver stops here, both parts waiting at the provider

        with Ledger(ledger_path) as ledger, pytest.raises(_Stop):
            _run(WaveRunner(extractor, ledger, poll_s=0, part_lines=1, on_wave=on_wave), [docs])
        first, second = submitted
        server.step(first)
        server.step(first)  # finalizing: the provider refuses to cancel it (409)
        got = cli("batch", "cancel", "-c", str(cfg), "--ledger", ledger_path, "--all", "--json")
        assert got.returncode == 0, got.stderr
        rows = {r["provider_batch_id"]: r for r in json.loads(got.stdout)["parts"]}
        assert rows[first]["status"] == "finalizing" and "409" in rows[first]["refused"]
        assert rows[second]["status"] == "cancelling" and "refused" not in rows[second]
        cancels = [p for m, p, _ in server.calls if m == "POST" and p.endswith("/cancel")]
        assert cancels.count(f"/v1/batches/{first}/cancel") == 1  # not retried
        assert server.batch(2).status == "cancelling"
        human = cli("batch", "cancel", "-c", str(cfg), "--ledger", ledger_path, "--all")
        assert human.returncode == 0, human.stderr
        assert "not cancelled: the provider refused" in human.stdout and "finalizing" in human.stdout


# -- 4. --max-cost: the ceiling, what the next batch could cost, what to do ---------------------------


def test_max_cost_says_the_ceiling_the_next_batch_and_what_to_do(tmp_path: Path) -> None:
    docs = make_docs(tmp_path)
    with FakeBatchServer(echo_invoice_responder, advance_on_poll=3) as server:
        cfg = str(write_config(tmp_path, server.base_url))
        got = cli("extract", str(docs), "-c", cfg, "--ledger", str(tmp_path / "l.sqlite3"), "--via", "batch",
                  "--poll", "0", "--max-cost", "0.000001")  # fmt: skip
        assert got.returncode == 1, got.stderr
        said = " ".join(got.stderr.split())
        m = re.search(r"max cost \$0\.000001 \(--max-cost\) would be passed by the next batch: wave 1 \(\w+, 3"
                      r" requests\) could cost up to \$([0-9.]+) at the batch price", said)  # fmt: skip
        assert m is not None, said
        worst = float(m.group(1))
        assert worst > 0.000001
        need = re.search(r"raise --max-cost to at least \$([0-9.]+)", said)
        assert need is not None and float(need.group(1)) == pytest.approx(worst, rel=1e-3)
        assert "3 documents left pending in the ledger" in said
        assert not server.batches  # nothing submitted


# -- 6. add_batch_items: many rows per statement, uniqueness still the database's ---------------------


@contextmanager
def counting(ledger: Ledger, needle: str) -> Iterator[list[str]]:
    """Every statement run in ``ledger``'s transactions that contains ``needle``."""
    seen: list[str] = []
    real = ledger.transaction

    class Tx:
        def __init__(self, inner: Any):
            self.inner = inner

        def execute(self, q: str, params: Any = ()) -> Any:
            if needle in q:
                seen.append(q)
            return self.inner.execute(q, params)

        def executemany(self, q: str, params: Any) -> Any:
            if needle in q:
                seen.append(q)
            return self.inner.executemany(q, params)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    @contextmanager
    def wrapped() -> Iterator[Any]:
        with real() as tx:
            yield Tx(tx)

    ledger.transaction = wrapped  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del ledger.transaction


def _items(n: int, wave: int = 1, start: int = 0) -> list[NewBatchItem]:
    return [NewBatchItem(document_sha256=f"{i:064x}", schema_hash="s", config_hash="c", wave=wave, tier="t1",
                         tier_state_json="{}", source=f"d{i}.txt", source_bytes=f"d{i}.txt".encode(),
                         path=f"d{i}.txt", size=i, doc_type="txt") for i in range(start, start + n)]  # fmt: skip


def test_add_batch_items_writes_many_rows_per_statement(ledger_target: str) -> None:
    from extractkit.ledger import _waves

    with Ledger(ledger_target) as ledger:
        with counting(ledger, "INSERT INTO batch_items") as inserts:
            assert ledger.add_batch_items(_items(30)) == 30
        assert len(inserts) == 1
        with counting(ledger, "INSERT INTO batch_items") as inserts:  # 5 in flight already: skipped
            assert ledger.add_batch_items(_items(10, start=25)) == 5
            big = _waves.ADD_ROWS * 2 + 1
            assert ledger.add_batch_items(_items(big, start=100)) == big
        assert len(inserts) == 1 + 3
        assert len(ledger.in_flight("s", "c")) == 35 + big
        pending = ledger.pending_batch_items("s", "c")
        assert {i.wave for i in pending} == {1} and pending[0].source_bytes == b"d0.txt"
        # a late item joins the first unbuilt wave, not a built one (the database raises it)
        job = ledger.create_batch_job(NewBatchJob("s", "c", 1, 0, "t1", "m", "e"), [pending[0].id])
        assert job is not None
        assert ledger.add_batch_items(_items(1, start=10_000)) == 1
        assert [i.wave for i in ledger.pending_batch_items("s", "c") if i.path == "d10000.txt"] == [2]


# -- 1. the ledger side of cancelling what was never submitted (both engines) -------------------------


def test_cancel_unsent_frees_documents_and_their_wave_is_not_reused(ledger_target: str) -> None:
    with Ledger(ledger_target) as ledger:
        assert ledger.add_batch_items(_items(3)) == 3
        ids = [i.id for i in ledger.pending_batch_items("s", "c")]
        job = ledger.create_batch_job(NewBatchJob("s", "c", 1, 0, "t1", "m", "e"), ids[:2])
        assert job is not None and job.status == "building"
        assert ledger.cancel_unsent("s", "c", wave=2) == (0, 0)  # another wave: nothing
        assert ledger.cancel_unsent("s", "c") == (1, 3)
        assert ledger.in_flight("s", "c") == set() and ledger.open_batch_jobs("s", "c") == []
        assert ledger.batch_job(job.id) is None
        assert ledger.batch_job_uploaded(job.id, "file-1", 10) is False  # a driver mid-upload creates nothing
        assert ledger.next_wave("s", "c") == 2
        assert ledger.add_batch_items(_items(3)) == 3  # the same documents again: a new wave
        assert {i.wave for i in ledger.pending_batch_items("s", "c")} == {2}
        rows = ledger.wave_summary("s", "c")
        assert [(r.wave, r.cancelled, r.pending, r.documents) for r in rows] == [(1, 3, 0, 3), (2, 0, 3, 3)]
        assert ledger.cancel_unsent("s", "c", wave=2) == (0, 3)
        assert ledger.next_wave("s", "c") == 3


# -- 7. one transport module for both transports -----------------------------------------------------


def test_the_batch_provider_uses_the_shared_transport_helpers_not_the_live_paths_private_names() -> None:
    from extractkit import _llm, _transport
    from extractkit.batch import _provider

    source = (ROOT / "extractkit" / "batch" / "_provider.py").read_text()
    private = [
        (node.module, alias.name)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("_llm")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []
    for name in ("BODY_CAP", "within", "read_capped"):
        assert getattr(_provider, name) is getattr(_transport, name)
        assert getattr(_llm, name) is getattr(_transport, name)


# -- 8. texts held between waves: bounded; past the bound read again from the source -----------------


def _waves_run(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> tuple[Any, int, Any]:
    """The 5-document script of test_waves (a re-ask, an escalation, a 429) through a runner;
    (results by document, documents read, runner)."""
    from extractkit.batch import _waves
    from extractkit.batch._waves import WaveRunner

    from .test_waves import DOCS, chain, script

    folder = tmp_path / name
    folder.mkdir()
    for marker, text in DOCS.items():
        (folder / f"{marker[-1].lower()}.txt").write_text(text)
    reads: list[str] = []
    real = _waves._load

    async def counted(path: Any, *args: Any) -> Any:
        reads.append(str(path))
        return await real(path, *args)

    monkeypatch.setattr(_waves, "_load", counted)
    held: list[int] = []
    results: dict[str, Any] = {}
    with FakeBatchServer(script(), advance_on_poll=3) as server, Ledger(tmp_path / f"{name}.sqlite3") as ledger:
        runner = WaveRunner(chain(server.base_url), ledger, poll_s=0, **kw,
                            on_wave=lambda e: held.append(runner._held),
                            on_result=lambda r, s: results.__setitem__(Path(r.path).stem, r))  # fmt: skip
        summary = _run(runner, [folder])
    assert summary.status == "done" and summary.ok == 5
    return results, len(reads), held


def test_past_the_text_bound_the_driver_reads_documents_again_and_gets_the_same_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held_all, reads_all, _ = _waves_run(tmp_path, "held", monkeypatch)
    lean, reads_lean, held = _waves_run(tmp_path, "lean", monkeypatch, hold_text_chars=0)
    assert reads_all == 5  # every text held: read once
    assert reads_lean > 5 and set(held) == {0}  # no text held between waves: read again per wave
    for stem, r in held_all.items():
        other = lean[stem]
        assert (other.status, other.tier, other.value, other.attempts) == (r.status, r.tier, r.value, r.attempts)
        assert [(a.tier, a.outcome) for a in other.result.attempts] == [(a.tier, a.outcome) for a in r.result.attempts]


def test_a_document_changed_while_its_text_is_not_held_is_an_error_not_a_wrong_answer(tmp_path: Path) -> None:
    from extractkit.batch._waves import WaveRunner

    docs = make_docs(tmp_path, 2)
    with FakeBatchServer(echo_invoice_responder, advance_on_poll=0) as server, \
            Ledger(tmp_path / "l.sqlite3") as ledger:  # fmt: skip

        def on_wave(e: Any) -> None:
            if e.event == "submitted":  # the file changes while its batch runs
                (docs / "d0.txt").write_text("Invoice\nFrom: Someone Else\nTotal: 99.00\n")
                server.finish()

        results: dict[str, Any] = {}
        runner = WaveRunner(_chain(server.base_url), ledger, poll_s=0, hold_text_chars=0, on_wave=on_wave,
                            on_result=lambda r, s: results.__setitem__(Path(r.path).name, r))  # fmt: skip
        summary = _run(runner, [docs])
    assert results["d1.txt"].status == "ok"
    assert results["d0.txt"].status == "error" and "changed" in (results["d0.txt"].error or "")
    assert summary.ok == 1 and summary.errors == 1
    assert sql(str(tmp_path / "l.sqlite3"), "select count(*) from extractions where status = 'ok'") == [(1,)]
