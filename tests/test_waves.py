"""The wave driver (extractkit/batch/_waves.py) end to end against the fake Batch API
(tests/fakes_batch.py) with a scripted responder: a 2-tier chain where documents validate at
wave 1, need a re-ask (the next wave, same tier), escalate (a wave at tier 2), hit a 429 line
(retried in a later wave), an expired batch and a cancelled one, answers out of order; and a
driver stopped at each step of submitting a part, then run again: it polls, never submits twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extractkit import EscalationPolicy, Extractor, Ledger, Price, RetryPolicy, ZeroShot
from extractkit._errors import BatchFailed, ConfigError, NoDocuments
from extractkit.batch._provider import METADATA_KEY, BatchProvider
from extractkit.batch._waves import WaveEvent, WaveRunner

from .conftest import Invoice
from .fakes import FakeLLMServer, completion, error_body
from .fakes_batch import BatchPlan, FakeBatchServer, Reply, ScriptedResponder

KEY = "sk-waves-test-key-0123456789"
T1, T2 = "gpt-4o-mini", "gpt-4.1-mini"

DOCS = {  # marker -> document text (the marker is unique to the document)
    "Acme A": "Invoice\nFrom: Acme A\nTotal: 11.00\n",
    "Acme B": "Invoice\nFrom: Acme B\nTotal: 12.00\n",
    "Acme C": "Invoice\nFrom: Acme C\nTotal: 13.00\n",
    "Acme D": "Invoice\nFrom: Acme D\nTotal: 14.00\n",
    "Acme E": "Invoice\nFrom: Acme E\nTotal: 15.00\n",
}


def ok(marker: str, model: str = T1) -> Reply:
    total = float(DOCS[marker].split("Total: ")[1])
    return 200, completion({"issuer": marker, "total": total}, model=model), {}


def invalid(model: str = T1) -> Reply:
    return 200, completion({"issuer": "Acme B", "total": "twelve"}, model=model), {}


def ungrounded(model: str = T1) -> Reply:
    return 200, completion({"issuer": "Nobody Ltd", "total": 13.0}, model=model), {}


LIMITED: Reply = (429, error_body("Rate limit reached", "rate_limit_exceeded", "requests"), {})


def script() -> ScriptedResponder:
    return ScriptedResponder({
        ("Acme A", T1): [ok("Acme A")],
        ("Acme B", T1): [invalid(), ok("Acme B")],                       # re-ask at the same tier
        ("Acme C", T1): [ungrounded(), ungrounded(), ungrounded()],     # re-asks exhausted: escalate
        ("Acme C", T2): [ok("Acme C", T2)],
        ("Acme D", T1): [LIMITED, ok("Acme D")],                         # a 429 line, retried
        ("Acme E", T1): [ok("Acme E")],
    })  # fmt: skip


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for marker, text in DOCS.items():
        (folder / f"{marker[-1].lower()}.txt").write_text(text)
    return folder


def chain(base_url: str) -> Extractor[Invoice]:
    tiers = [ZeroShot(name="t1", model=T1, base_url=base_url, api_key=KEY, max_reasks=2),
             ZeroShot(name="t2", model=T2, base_url=base_url, api_key=KEY)]  # fmt: skip
    return Extractor(Invoice, tiers, policy=EscalationPolicy(retry=RetryPolicy(max_attempts=4)))


def run(runner: WaveRunner, paths: list[Any]) -> Any:
    async def go() -> Any:
        try:
            return await runner.run(paths)
        finally:
            await runner.extractor.aclose()

    return asyncio.run(go())


def created(server: FakeBatchServer) -> list[dict[str, Any]]:
    return [body for method, path, body in server.calls if (method, path) == ("POST", "/v1/batches")]


def outcomes(result: Any) -> list[tuple[str, str]]:
    return [(a.tier, a.outcome.value) for a in result.attempts]


def test_the_chain_in_waves(docs: Path, ledger_target: str, tmp_path: Path) -> None:
    cancel_wave = 3
    events: list[WaveEvent] = []

    def planner(no: int, lines: list[dict[str, Any]]) -> BatchPlan:
        return BatchPlan(end="expired", run_lines=0) if no == 2 else BatchPlan(seed=no)

    responder = script()
    with FakeBatchServer(responder, advance_on_poll=3, planner=planner) as server:

        def on_wave(e: WaveEvent) -> None:
            events.append(e)
            if e.event == "submitted" and e.wave == cancel_wave:  # `batch cancel` while it validates
                server.handle("POST", f"/v1/batches/{e.provider_batch_id}/cancel", {}, None)

        results: dict[str, Any] = {}
        with Ledger(ledger_target) as ledger:
            runner = WaveRunner(chain(server.base_url), ledger, poll_s=0, on_wave=on_wave,
                                out=tmp_path / "out.jsonl",
                                on_result=lambda r, s: results.__setitem__(Path(r.path).stem, r))  # fmt: skip
            summary = run(runner, [docs])
            assert summary.status == "done" and (summary.documents, summary.ok, summary.failed) == (5, 5, 0)
            by_doc = {k: r.result for k, r in results.items()}
            assert {k: r.tier for k, r in by_doc.items()} == {
                "a": "t1",
                "b": "t1",
                "c": "t2",
                "d": "t1",
                "e": "t1",
            }
            assert outcomes(by_doc["a"]) == [("t1", "ok")]
            assert outcomes(by_doc["b"]) == [("t1", "schema_invalid"), ("t1", "timeout"), ("t1", "ok")]
            assert outcomes(by_doc["c"]) == [("t1", "ungrounded"), ("t1", "timeout"), ("t1", "ungrounded"),
                                             ("t1", "ungrounded"), ("t2", "ok")]  # fmt: skip
            assert outcomes(by_doc["d"]) == [("t1", "rate_limited"), ("t1", "timeout"), ("t1", "ok")]
            assert by_doc["d"].attempts[0].status_code == 429
            assert "Rate limit reached" in (by_doc["d"].attempts[0].error or "")
            assert [a.number for a in by_doc["c"].attempts] == [1, 2, 3, 4, 1]
            assert all(a.via == "batch" for r in by_doc.values() for a in r.attempts)
            assert by_doc["c"].value == Invoice(issuer="Acme C", total=13.0)
            # the ledger: one final extraction per document, every attempt recorded as batch
            rows = ledger.query("SELECT document_sha256, status, tier, n_attempts FROM extractions")
            assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
            vias = ledger.query("SELECT via, COUNT(*) AS n FROM attempts GROUP BY via")
            assert [(r["via"], r["n"]) for r in vias] == [("batch", 13)]
            assert ledger.open_batch_jobs(runner.extractor.schema_hash, runner.extractor.config_hash) == []
        # the provider saw: wave 1 (5 lines), 2 expired (3), 3 cancelled (3), 4 (3), 5 (1), 6 at tier 2 (1)
        batches = sorted(server.batches.values(), key=lambda b: b.no)
        assert [(len(b.lines), b.status) for b in batches] == [
            (5, "completed"), (3, "expired"), (3, "cancelled"), (3, "completed"), (1, "completed"), (1, "completed")]  # fmt: skip
        assert {b.lines[0]["body"]["model"] for b in batches[:5]} == {T1} and batches[5].lines[0]["body"][
            "model"
        ] == T2
        jobs = [b["metadata"][METADATA_KEY] for b in created(server)]
        assert len(jobs) == len(set(jobs)) == 6  # one create per part
        assert responder.calls == {("Acme A", T1): 1, ("Acme B", T1): 2, ("Acme C", T1): 3, ("Acme C", T2): 1,
                                   ("Acme D", T1): 2, ("Acme E", T1): 1}  # fmt: skip
        # the re-ask went out with the failed answer and the validation error, as live sends it
        reask = next(b for b in server.requests if "Acme B" in json.dumps(b) and len(b["messages"]) > 2)
        assert "twelve" in json.dumps(reask["messages"][2:])
        lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert sorted(Path(x["path"]).stem for x in lines) == ["a", "b", "c", "d", "e"]
        assert Counter(e.event for e in events)["submitted"] == 6


def test_a_rerun_resumes_nothing_twice(docs: Path, tmp_path: Path) -> None:
    """Everything final: a second run sends nothing and reports the documents as resumed."""
    with FakeBatchServer(script(), advance_on_poll=3) as server, Ledger(tmp_path / "l.sqlite3") as ledger:
        first = run(WaveRunner(chain(server.base_url), ledger, poll_s=0), [docs])
        n = len(server.calls)
        second = run(WaveRunner(chain(server.base_url), ledger, poll_s=0), [docs])
        assert first.ok == 5 and second.resumed == 5 and len(server.calls) == n


class Stop(Exception):
    pass


@pytest.mark.parametrize("where", ["after_submit", "after_upload", "create_not_recorded", "mid_ingest"])
def test_stopped_and_run_again_polls_never_resubmits(
    docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A driver stopped after submitting a part (or between upload and create, or after a create
    whose answer it never recorded), then started again: it finds the part, polls it, and creates
    each part exactly once."""
    responder = script()
    with FakeBatchServer(responder, advance_on_poll=0) as server, Ledger(tmp_path / "l.sqlite3") as ledger:

        def on_wave(e: WaveEvent) -> None:
            if e.event == "submitted" and where == "after_submit":
                raise Stop  # killed right after the part was recorded as submitted

        if where == "after_upload":

            async def no_create(self: BatchProvider, file_id: str, job_id: str) -> Any:
                raise Stop

            monkeypatch.setattr(BatchProvider, "create", no_create)
        if where == "create_not_recorded":
            real = Ledger.batch_job_submitted

            def lost(self: Ledger, *args: Any, **kwargs: Any) -> Any:
                raise Stop

            monkeypatch.setattr(Ledger, "batch_job_submitted", lost)
        if where == "mid_ingest":  # killed after the first chunk of wave 1's answers was written
            monkeypatch.setattr("extractkit.batch._waves.INGEST_CHUNK", 2)
            server.advance_on_poll = 3
            real_finish = Ledger.finish_batch_items
            calls = []

            def finish_once(self: Ledger, *args: Any, **kwargs: Any) -> Any:
                calls.append(1)
                if len(calls) > 1:
                    raise Stop
                return real_finish(self, *args, **kwargs)

            monkeypatch.setattr(Ledger, "finish_batch_items", finish_once)
        with pytest.raises(Stop):
            run(WaveRunner(chain(server.base_url), ledger, poll_s=0, on_wave=on_wave), [docs])
        assert len(created(server)) == (0 if where == "after_upload" else 1)
        monkeypatch.undo()
        if where == "create_not_recorded":
            assert Ledger.batch_job_submitted is real
        server.advance_on_poll = 3
        summary = run(WaveRunner(chain(server.base_url), ledger, poll_s=0), [docs])
        assert summary.ok == 5
        jobs = [b["metadata"][METADATA_KEY] for b in created(server)]
        assert len(jobs) == len(set(jobs))  # never a second create for one part
        first_wave = server.batch(1)
        assert len(first_wave.lines) == 5 and first_wave.status == "completed"
        assert responder.calls[("Acme A", T1)] == 1  # wave 1 ran once
        # each document recorded once, with the attempts of an unstopped run: nothing lost or doubled
        assert [r["n"] for r in ledger.query("SELECT COUNT(*) AS n FROM extractions")] == [5]
        assert [r["n"] for r in ledger.query("SELECT COUNT(*) AS n FROM attempts")] == [10]
        assert sum(responder.calls.values()) == 10


def test_a_failed_batch_stops_the_run_and_its_lines_come_back(docs: Path, tmp_path: Path) -> None:
    with FakeBatchServer(script(), advance_on_poll=3) as server, Ledger(tmp_path / "l.sqlite3") as ledger:
        server.plan(end="failed", errors=[{"code": "invalid_request", "message": "bad file", "line": 1}])
        with pytest.raises(BatchFailed, match="bad file"):
            run(WaveRunner(chain(server.base_url), ledger, poll_s=0), [docs])
        summary = run(WaveRunner(chain(server.base_url), ledger, poll_s=0), [docs])
        assert summary.ok == 5 and len(created(server)) > 1


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    async def fake_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr("extractkit._retry.sleep", fake_sleep)
    yield


def test_a_live_tier_between_waves(docs: Path, tmp_path: Path) -> None:
    """tier 1 in waves, tier 2 live (``tier_via``): a document that exhausts tier 1 in the waves
    is sent live to tier 2 by the live path's own loop (arun_tier); its attempts say which way."""
    responder = script()
    with FakeBatchServer(responder, advance_on_poll=3) as server, FakeLLMServer(responder) as live:
        tiers = [ZeroShot(name="t1", model=T1, base_url=server.base_url, api_key=KEY, max_reasks=2),
                 ZeroShot(name="t2", model=T2, base_url=live.base_url, api_key=KEY)]  # fmt: skip
        with Ledger(tmp_path / "l.sqlite3") as ledger:
            results: dict[str, Any] = {}
            runner = WaveRunner(Extractor(Invoice, tiers), ledger, poll_s=0, tier_via={"t2": "live"},
                                on_result=lambda r, s: results.__setitem__(Path(r.path).stem, r.result))  # fmt: skip
            assert run(runner, [docs]).ok == 5
            c = results["c"]
            assert [(a.tier, a.via) for a in c.attempts][-2:] == [("t1", "batch"), ("t2", "live")]
            assert c.tier == "t2" and c.attempts[-1].outcome.value == "ok"
        assert len(live.requests) == 1 and "Acme C" in json.dumps(live.requests[0])
        assert {b.lines[0]["body"]["model"] for b in server.batches.values()} == {T1}


def test_max_cost_stops_submitting(docs: Path, tmp_path: Path) -> None:
    """Over the ceiling nothing is submitted: the documents stay pending and a later run (with a
    higher ceiling) continues them."""
    price = Price(0.15, 0.6)
    with FakeBatchServer(script(), advance_on_poll=3) as server, Ledger(tmp_path / "l.sqlite3") as ledger:

        def priced() -> Extractor[Invoice]:
            tiers = [ZeroShot(name="t1", model=T1, base_url=server.base_url, api_key=KEY, price=price),
                     ZeroShot(name="t2", model=T2, base_url=server.base_url, api_key=KEY, price=price)]  # fmt: skip
            ex = Extractor(Invoice, tiers)
            for name in ("t1", "t2"):  # the batch price (half the live one), whichever way it is configured
                ex.steps(name).batch_price = Price(0.075, 0.3)
            return ex

        stopped = run(WaveRunner(priced(), ledger, poll_s=0, max_cost=1e-9), [docs])
        assert stopped.status == "stopped_max_cost" and "max cost" in (stopped.error or "")
        assert created(server) == [] and (stopped.documents, stopped.unattempted) == (0, 5)
        ex = priced()
        assert len(ledger.pending_batch_items(ex.schema_hash, ex.config_hash)) == 5
        done = run(WaveRunner(ex, ledger, poll_s=0, max_cost=10.0), [docs])
        assert done.status == "done" and done.ok == 5
        assert done.cost_usd is not None and 0 < done.cost_usd < 10.0
        with pytest.raises(ConfigError, match="batch price"):
            WaveRunner(Extractor(Invoice, [ZeroShot(model="acme-x", price=price)]), ledger, max_cost=1.0)


def test_a_request_over_the_context_is_recorded_not_sent(tmp_path: Path) -> None:
    """As live: a prompt that cannot fit tier 1's context is an attempt (context_overflow), never a
    line; the chain escalates on it and tier 2 answers in the next wave."""
    folder = tmp_path / "docs"
    folder.mkdir()
    long = "Invoice\nFrom: Acme F\nTotal: 16.00\n" + "lorem ipsum dolor sit amet " * 400
    (folder / "f.txt").write_text(long)
    responder = ScriptedResponder(
        {("Acme F", T2): [(200, completion({"issuer": "Acme F", "total": 16.0}), {})]}
    )
    with FakeBatchServer(responder, advance_on_poll=3) as server, Ledger(tmp_path / "l.sqlite3") as ledger:
        tiers = [ZeroShot(name="t1", model=T1, base_url=server.base_url, api_key=KEY, context_window=1000),
                 ZeroShot(name="t2", model=T2, base_url=server.base_url, api_key=KEY)]  # fmt: skip
        got: list[Any] = []
        summary = run(WaveRunner(Extractor(Invoice, tiers), ledger, poll_s=0,
                                 on_result=lambda r, s: got.append(r.result)), [folder])  # fmt: skip
        assert summary.ok == 1
        (result,) = got
        assert outcomes(result) == [("t1", "context_overflow"), ("t2", "ok")]
        assert "not sent" in (result.attempts[0].error or "")
        assert [b.lines[0]["body"]["model"] for b in server.batches.values()] == [T2]


def test_an_answer_echoing_the_key_is_never_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(DOCS["Acme A"])
    echo = completion(content=f"no: {KEY}", refusal=f"I cannot use key {KEY}", model=f"gpt-{KEY}")
    responder = ScriptedResponder({("Acme A", T1): [(200, echo, {})]})
    with FakeBatchServer(responder, advance_on_poll=3) as server, Ledger(tmp_path / "l.sqlite3") as ledger:
        tiers = [ZeroShot(name="t1", model=T1, base_url=server.base_url, api_key=KEY)]
        got: list[Any] = []
        summary = run(WaveRunner(Extractor(Invoice, tiers), ledger, poll_s=0, out=tmp_path / "out.jsonl",
                                 on_result=lambda r, s: got.append(r)), [folder])  # fmt: skip
        assert summary.failed == 1 and got[0].outcome == "refusal"
        assert KEY not in repr(got[0].result.attempts) and KEY not in (got[0].error or "")
        for table in ("attempts", "extractions", "batch_items", "batch_jobs"):
            assert KEY not in json.dumps(
                [dict(r) for r in ledger.query(f"SELECT * FROM {table}")], default=str
            )
    assert KEY not in (tmp_path / "out.jsonl").read_text()
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


def test_a_wave_in_several_parts(docs: Path, tmp_path: Path) -> None:
    """The line limit splits a wave into parts (one provider batch each), all of one wave."""
    with FakeBatchServer(script(), advance_on_poll=3) as server, Ledger(tmp_path / "l.sqlite3") as ledger:
        events: list[WaveEvent] = []
        summary = run(WaveRunner(chain(server.base_url), ledger, poll_s=0, part_lines=2, on_wave=events.append),
                      [docs])  # fmt: skip
        assert summary.ok == 5
        first = sorted((e.wave, e.part, e.lines) for e in events if e.event == "submitted" and e.wave == 1)
        assert first == [(1, 0, 2), (1, 1, 2), (1, 2, 1)]
        assert all(len(b.lines) <= 2 for b in server.batches.values())
        jobs = ledger.batch_jobs()
        assert len({(j.wave, j.part) for j in jobs}) == len(jobs) == len(server.batches)


def test_no_documents_is_refused_before_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        with pytest.raises(NoDocuments):
            run(WaveRunner(chain("http://127.0.0.1:9/v1"), ledger), [tmp_path / "empty"])
        assert ledger.query("SELECT * FROM runs") == []
