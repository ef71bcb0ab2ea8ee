"""The ledger side of the Batch API waves (issue 18), on both engines.

What must never happen twice is refused by the database, and the methods turn the refusal into an
answer (None, or a skip) instead of an exception: a wave part built twice, a document in flight
twice for one chain. Ingesting answers is atomic per chunk and idempotent. A ledger written before
(at 0010) migrates, its attempts ``live``, its report unchanged.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from typing import Any

import pytest

from extractkit import Attempt, Outcome, Usage
from extractkit.ledger import (
    BatchJob,
    ItemOutcome,
    Ledger,
    NewBatchItem,
    NewBatchJob,
    _waves,
    attempts_from_json,
    attempts_to_json,
)

from .ledger_fixtures import COSTS, chain, populate, result

EX = chain()
SCHEMA, CONFIG = EX.schema_hash, EX.config_hash


def sha(doc: str) -> str:
    return f"{doc:0>64}"[-64:]


def new_item(doc: str, wave: int = 1, tier: str = "zero_shot", **kw: Any) -> NewBatchItem:
    return NewBatchItem(document_sha256=sha(doc), schema_hash=SCHEMA, config_hash=CONFIG, wave=wave, tier=tier,
                        tier_state_json=f'{{"tier": "{tier}", "reasks": 0}}', source=f"docs/{doc}.txt",
                        source_bytes=f"docs/{doc}.txt".encode(), path=f"docs/{doc}.txt", size=10, doc_type="txt",
                        **kw)  # fmt: skip


def new_job(wave: int = 1, part: int = 0, run_id: str | None = None) -> NewBatchJob:
    return NewBatchJob(schema_hash=SCHEMA, config_hash=CONFIG, wave=wave, part=part, tier="zero_shot",
                       model="gpt-4o-mini", endpoint="https://api.openai.com/v1", run_id=run_id)  # fmt: skip


def batch_attempt(tier: str, number: int, outcome: str, cost: float = 0.0005) -> Attempt:
    """A batch attempt: ``via`` and ``live_cost_usd`` are ``Attempt`` fields once issue 18's steps
    land; until then a subclass carries them (the ledger reads both with getattr)."""
    fields = {f.name for f in dataclasses.fields(Attempt)}
    kw = dict(tier=tier, model="gpt-4o-mini", number=number, outcome=Outcome(outcome),
              usage=Usage(prompt_tokens=100, completion_tokens=20), cost_usd=cost, latency_s=60.0)  # fmt: skip
    if "via" in fields:
        return Attempt(**kw, via="batch", live_cost_usd=cost * 2)  # type: ignore[call-arg]
    return _BatchAttempt(**kw, via="batch", live_cost_usd=cost * 2)


@dataclasses.dataclass(frozen=True)
class _BatchAttempt(Attempt):
    via: str = "live"
    live_cost_usd: float | None = None


def count(ledger: Ledger, sql: str, params: tuple[Any, ...] = ()) -> int:
    return int(ledger.query(sql, params)[0][0])


def states(ledger: Ledger) -> list[tuple[str, int, str]]:
    rows = ledger.query("SELECT document_sha256, wave, state FROM batch_items ORDER BY document_sha256, wave")
    return [(r[0][-2:], int(r[1]), r[2]) for r in rows]


# -- the database refuses what must happen once ---------------------------------------------------------


def test_a_wave_part_is_built_once(ledger_target):
    with Ledger(ledger_target) as ledger:
        assert ledger.next_wave(SCHEMA, CONFIG) == 1
        assert ledger.add_batch_items([new_item("a1"), new_item("a2"), new_item("a3")]) == 3
        ids = [it.id for it in ledger.pending_batch_items(SCHEMA, CONFIG)]
        job = ledger.create_batch_job(new_job(), ids[:2])
        assert isinstance(job, BatchJob) and job.status == "building" and job.n_lines == 2
        # the same part again, even with other items: refused, no exception, nothing changed
        assert ledger.create_batch_job(new_job(), ids[2:]) is None
        assert count(ledger, "SELECT COUNT(*) FROM batch_jobs") == 1
        assert [it.id for it in ledger.job_items(job.id)] == ids[:2]
        assert [it.id for it in ledger.pending_batch_items(SCHEMA, CONFIG)] == ids[2:]
        # the database itself refuses it, whoever writes
        with pytest.raises(Exception, match="(?i)unique"), ledger.transaction() as tx:
            tx.execute("INSERT INTO batch_jobs (id, schema_hash, config_hash, wave, part, tier, model, endpoint,"
                       " status, n_lines, created_at, updated_at) VALUES ('x', ?, ?, 1, 0, 't', 'm', 'e',"
                       " 'building', 0, 0, 0)", (SCHEMA, CONFIG))  # fmt: skip
        # items already sent make no part
        assert ledger.create_batch_job(new_job(part=1), ids[:2]) is None
        assert count(ledger, "SELECT COUNT(*) FROM batch_jobs") == 1
        # the next part takes the rest; the wave is built, the next one is 2
        second = ledger.create_batch_job(new_job(part=1), ids)
        assert second is not None and second.n_lines == 1 and ledger.next_wave(SCHEMA, CONFIG) == 2


def test_a_document_is_in_flight_once_per_chain(ledger_target):
    with Ledger(ledger_target) as ledger:
        assert ledger.add_batch_items([new_item("b1"), new_item("b1")]) == 1
        assert ledger.add_batch_items([new_item("b1", wave=2)]) == 0  # pending in wave 1 already
        other = dataclasses.replace(new_item("b1"), config_hash="another-chain")
        assert ledger.add_batch_items([other]) == 1  # another chain's wave is another matter
        assert ledger.in_flight(SCHEMA, CONFIG) == {sha("b1")}
        (item,) = ledger.pending_batch_items(SCHEMA, CONFIG)
        ledger.create_batch_job(new_job(), [item.id])
        assert ledger.add_batch_items([new_item("b1", wave=3)]) == 0  # sent: still in flight
        with pytest.raises(Exception, match="(?i)unique"), ledger.transaction() as tx:
            tx.execute("INSERT INTO batch_items (id, document_sha256, schema_hash, config_hash, wave, tier,"
                       " state, tier_state_json, attempts_json, created_at, updated_at)"
                       " VALUES ('y', ?, ?, ?, 7, 't', 'pending', '{}', '[]', 0, 0)",
                       (sha("b1"), SCHEMA, CONFIG))  # fmt: skip
        # once answered (its final result recorded), it may be enqueued again
        res = result(EX, "zero", "b1", COSTS)
        assert ledger.finish_batch_items(EX, [ItemOutcome(item.id, result=res)]) == 1
        assert ledger.in_flight(SCHEMA, CONFIG) == set()
        assert ledger.add_batch_items([new_item("b1", wave=2)]) == 1


def test_an_item_never_joins_a_wave_already_built(ledger_target):
    with Ledger(ledger_target) as ledger:
        ledger.add_batch_items([new_item("c1")])
        ledger.create_batch_job(new_job(), [it.id for it in ledger.pending_batch_items(SCHEMA, CONFIG)])
        assert ledger.add_batch_items([new_item("c2", wave=1)]) == 1
        (late,) = ledger.pending_batch_items(SCHEMA, CONFIG)
        assert late.wave == 2 == ledger.next_wave(SCHEMA, CONFIG)
        assert ledger.add_batch_items([new_item("c3", wave=5)]) == 1  # a later wave is kept
        assert [it.wave for it in ledger.pending_batch_items(SCHEMA, CONFIG)] == [2, 5]


# -- a part's life ------------------------------------------------------------------------------------


def test_a_part_from_building_to_ingested(ledger_target):
    with Ledger(ledger_target) as ledger:
        ledger.add_batch_items([new_item(f"d{i}") for i in range(3)])
        items = ledger.pending_batch_items(SCHEMA, CONFIG)
        run = ledger.start_run("batch")
        job = ledger.create_batch_job(new_job(run_id=run), [it.id for it in items])
        assert job is not None
        assert ledger.batch_job_submitted(job.id, "batch_1") is False  # no input file yet
        assert ledger.batch_job_uploaded(job.id, "file-in", 1234) is True
        assert ledger.batch_job_uploaded(job.id, "file-again", 1) is False
        assert ledger.batch_job_submitted(job.id, "batch_1") is True
        assert ledger.batch_job_submitted(job.id, "batch_2") is False  # never a second batch
        assert ledger.batch_job_polled(job.id, "in_progress", {"total": 3, "completed": 1, "failed": 0})
        (open_,) = ledger.open_batch_jobs(SCHEMA, CONFIG)
        assert (open_.status, open_.n_completed, open_.ended_at, open_.terminal) == ("in_progress", 1, None, False)

        class Counts:  # the openai client's request_counts
            total, completed, failed = 3, 2, 1

        assert ledger.batch_job_polled(job.id, "completed", Counts(), "file-out", "file-err", None)
        done = ledger.batch_job(job.id)
        assert done is not None and done.terminal and done.ended_at is not None
        assert (done.input_file_id, done.provider_batch_id, done.output_file_id, done.error_file_id,
                done.n_bytes, done.n_completed, done.n_failed) == ("file-in", "batch_1", "file-out", "file-err",
                                                                   1234, 2, 1)  # fmt: skip
        # two answered (one re-asked in wave 2, one final), one never run (to wave 2, same state)
        reask = dataclasses.replace(items[0], tier_state_json='{"reasks": 1}')
        first = batch_attempt("zero_shot", 1, "invalid_json")
        outcomes = [
            ItemOutcome(items[0].id, next_item=reask.next(wave=2, attempts=[first])),
            ItemOutcome(items[1].id, result=dataclasses.replace(result(EX, "zero", "d1", COSTS),
                                                                attempts=[batch_attempt("zero_shot", 1, "ok")]),
                        record={"run_id": run, "path": "docs/d1.txt", "text": "the text"}),
        ]  # fmt: skip
        assert ledger.finish_batch_items(EX, outcomes) == 2
        assert ledger.unrun_batch_items(job.id, next_wave=2) == 1
        assert ledger.batch_job_ingested(job.id) is True and ledger.batch_job_ingested(job.id) is False
        assert ledger.batch_job_polled(job.id, "completed") is False  # ingested stays ingested
        assert ledger.open_batch_jobs() == [] and [j.id for j in ledger.batch_jobs(limit=5)] == [job.id]
        pending = {it.document_sha256[-2:]: it for it in ledger.pending_batch_items(SCHEMA, CONFIG)}
        assert sorted(pending) == ["d0", "d2"] and {it.wave for it in pending.values()} == {2}
        assert pending["d0"].tier_state_json == '{"reasks": 1}'
        assert pending["d0"].attempts == attempts_from_json(attempts_to_json([first]))
        if type(first) is Attempt:  # Attempt has via / live_cost_usd: they round-trip
            assert pending["d0"].attempts == (first,)
        assert pending["d2"].tier_state_json == items[2].tier_state_json and pending["d2"].attempts == ()
        assert pending["d2"].source_bytes == b"docs/d2.txt" and pending["d2"].doc_type == "txt"
        assert count(ledger, "SELECT COUNT(*) FROM batch_items WHERE state = 'answered' AND tier_state_json = '{}'") == 2
        assert count(ledger, "SELECT COUNT(*) FROM batch_items WHERE state = 'unrun'") == 1
        rows = ledger.query("SELECT via, live_cost_usd, cost_usd, run_id, path FROM extractions")
        assert [tuple(r) for r in rows] == [("batch", 0.001, 0.0005, run, "docs/d1.txt")]
        assert [tuple(r) for r in ledger.query("SELECT via, live_cost_usd FROM attempts")] == [("batch", 0.001)]
        assert ledger.document(sha("d1")).text == "the text"  # type: ignore[union-attr]
        (w1, w2) = ledger.wave_summary(SCHEMA, CONFIG)
        assert (w1.wave, w1.parts, w1.open_parts, w1.lines, w1.completed, w1.failed, w1.documents, w1.answered,
                w1.unrun, w1.tiers) == (1, 1, 0, 3, 2, 1, 3, 2, 1, ("zero_shot",))  # fmt: skip
        assert w1.ended_at is not None
        assert (w2.wave, w2.parts, w2.pending, w2.documents, w2.created_at) == (2, 0, 2, 2, None)


def test_a_part_left_building_by_a_dead_run_is_dropped(ledger_target):
    with Ledger(ledger_target) as ledger:
        ledger.add_batch_items([new_item("e1"), new_item("e2")])
        e1, e2 = ledger.pending_batch_items(SCHEMA, CONFIG)
        dead, alive = ledger.start_run("batch"), ledger.start_run("batch")
        ledger.finish_run(dead, "interrupted")
        left = ledger.create_batch_job(new_job(part=0, run_id=dead), [e1.id])
        busy = ledger.create_batch_job(new_job(part=1, run_id=alive), [e2.id])
        assert left is not None and busy is not None
        assert ledger.drop_building_jobs(SCHEMA, CONFIG) == 1
        assert [j.id for j in ledger.open_batch_jobs()] == [busy.id]  # being built right now: kept
        assert [it.id for it in ledger.pending_batch_items(SCHEMA, CONFIG)] == [e1.id]
        assert ledger.batch_job_uploaded(left.id, "file-1", 10) is False  # the dead run's upload is refused
        rebuilt = ledger.create_batch_job(new_job(part=0), [e1.id])  # the part's number is free again
        assert rebuilt is not None and rebuilt.n_lines == 1
        assert ledger.batch_job_uploaded(busy.id, "file-2", 10) is True
        assert ledger.drop_building_jobs(SCHEMA, CONFIG, stale_s=-1) == 1  # stale: even a running run's
        assert [j.id for j in ledger.open_batch_jobs()] == [busy.id]  # uploaded: never dropped


# -- ingesting: atomic per chunk, idempotent --------------------------------------------------------------


def _sent(ledger: Ledger, docs: list[str]) -> list[str]:
    ledger.add_batch_items([new_item(d) for d in docs])
    ids = [it.id for it in ledger.pending_batch_items(SCHEMA, CONFIG)]
    assert ledger.create_batch_job(new_job(), ids) is not None
    return ids


def _outcomes(ids: list[str], docs: list[str]) -> list[ItemOutcome]:
    out = []
    for k, (item_id, doc) in enumerate(zip(ids, docs, strict=True)):
        if k % 2:
            out.append(ItemOutcome(item_id, next_item=new_item(doc, wave=2, tier="few_shot")))
        else:
            out.append(ItemOutcome(item_id, result=result(EX, "few", doc, COSTS)))
    return out


def test_ingesting_the_same_answers_twice_records_them_once(ledger_target):
    docs = [f"f{i}" for i in range(5)]
    with Ledger(ledger_target) as ledger:
        ids = _sent(ledger, docs)
        outcomes = _outcomes(ids, docs)
        assert ledger.finish_batch_items(EX, outcomes) == 5
        assert ledger.finish_batch_items(EX, outcomes) == 0
        assert ledger.finish_batch_items(EX, list(reversed(outcomes))[:2]) == 0
        assert count(ledger, "SELECT COUNT(*) FROM extractions") == 3
        assert count(ledger, "SELECT COUNT(*) FROM attempts") == 9
        assert states(ledger) == [
            ("f0", 1, "answered"), ("f1", 1, "answered"), ("f1", 2, "pending"), ("f2", 1, "answered"),
            ("f3", 1, "answered"), ("f3", 2, "pending"), ("f4", 1, "answered"),
        ]  # fmt: skip
        # the final results went through record's code: one current extraction each, rollups kept
        from extractkit.ledger._rollups import ALL_TABLES

        assert count(ledger, "SELECT SUM(n) FROM rollup_documents") == 3
        kept = {t: sorted(tuple(r) for r in ledger.query(f"SELECT * FROM {t} WHERE n != 0")) for t in ALL_TABLES}
        from extractkit.ledger import rebuild_rollups

        rebuild_rollups(ledger)
        assert {t: sorted(tuple(r) for r in ledger.query(f"SELECT * FROM {t} WHERE n != 0"))
                for t in ALL_TABLES} == kept  # fmt: skip


def test_an_exception_mid_chunk_leaves_nothing_of_that_chunk(ledger_target, monkeypatch):
    docs = [f"g{i}" for i in range(7)]
    with Ledger(ledger_target) as ledger:
        ids = _sent(ledger, docs)
        outcomes = _outcomes(ids, docs)
        monkeypatch.setattr(_waves, "CHUNK", 3)
        real = Ledger._write_extraction
        calls = []

        def failing(self: Ledger, c: Any, extractor: Any, res: Any, **kw: Any) -> Any:
            calls.append(res.document_sha256[-2:])
            if res.document_sha256.endswith("g4"):  # the second chunk: g3 (next item), g4, g5
                raise RuntimeError("killed mid-chunk")
            return real(self, c, extractor, res, **kw)

        monkeypatch.setattr(Ledger, "_write_extraction", failing)
        with pytest.raises(RuntimeError, match="killed mid-chunk"):
            ledger.finish_batch_items(EX, outcomes)
        assert calls == ["g0", "g2", "g4"]
        # the first chunk is in; of the second, nothing: not g3's next item, not its answered state
        assert states(ledger) == [("g0", 1, "answered"), ("g1", 1, "answered"), ("g1", 2, "pending"),
                                  ("g2", 1, "answered"), ("g3", 1, "sent"), ("g4", 1, "sent"), ("g5", 1, "sent"),
                                  ("g6", 1, "sent")]  # fmt: skip
        assert count(ledger, "SELECT COUNT(*) FROM extractions") == 2
        monkeypatch.setattr(Ledger, "_write_extraction", real)
        assert ledger.finish_batch_items(EX, outcomes) == 4  # the rest, once
        assert count(ledger, "SELECT COUNT(*) FROM extractions") == 4
        assert count(ledger, "SELECT COUNT(*) FROM batch_items WHERE state = 'pending'") == 3
        assert count(ledger, "SELECT COUNT(*) FROM batch_items WHERE state = 'sent'") == 0


def test_an_outcome_needs_one_of_next_item_and_result(ledger_target):
    with Ledger(ledger_target) as ledger, pytest.raises(ValueError, match="exactly one"):
        ledger.finish_batch_items(EX, [ItemOutcome("x")])


def test_attempts_round_trip_through_json():
    a = Attempt(tier="t", model="m", number=2, outcome=Outcome.SCHEMA_INVALID,
                errors=[{"loc": ["total"], "type": "float_parsing", "input": "x"}],
                usage=Usage(3, 4, 1), cost_usd=None, latency_s=1.5, started_at=12.0, status_code=None,
                output="{}", served_model="gpt-4o-mini-2024", fingerprint="fp")  # fmt: skip
    assert attempts_from_json(attempts_to_json([a, a])) == (a, a)
    assert attempts_from_json("[]") == ()


# -- processes racing ------------------------------------------------------------------------------------


def _race(target: str, item_ids: list[str], barrier: threading.Barrier, results: multiprocessing.Queue) -> None:
    try:
        with Ledger(target) as ledger:
            barrier.wait(timeout=300)
            added = ledger.add_batch_items([new_item("race-doc", wave=1)])
            job = ledger.create_batch_job(new_job(), item_ids)
            results.put(("ok", added, None if job is None else job.id))
    except Exception as exc:
        results.put(("failed", f"{type(exc).__name__}: {exc}", None))


def test_processes_racing_to_build_one_part_one_wins(ledger_target):
    with Ledger(ledger_target) as ledger:
        ledger.add_batch_items([new_item(f"h{i}") for i in range(20)])
        ids = [it.id for it in ledger.pending_batch_items(SCHEMA, CONFIG)]
    ctx = multiprocessing.get_context("spawn")  # no fork of a multi-threaded test process
    n = 4
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(ledger_target, ids, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [o for o in outcomes if o[0] != "ok"] == []
    assert sorted(o[1] for o in outcomes) == [0] * (n - 1) + [1]  # the document enqueued once
    winners = [o[2] for o in outcomes if o[2] is not None]
    assert len(winners) == 1
    with Ledger(ledger_target) as ledger:
        assert [j.id for j in ledger.batch_jobs()] == winners
        assert [it.id for it in ledger.job_items(winners[0])] == ids
        assert count(ledger, "SELECT COUNT(*) FROM batch_items WHERE document_sha256 = ?", (sha("race-doc"),)) == 1


# -- a ledger written before the waves ------------------------------------------------------------------


def _downgrade_to_0010(ledger: Ledger) -> None:
    """The ledger as 0010 left it: 0011's tables and columns gone, its name unrecorded."""
    with ledger.transaction() as tx:
        tx.execute("DROP TABLE batch_items")
        tx.execute("DROP TABLE batch_jobs")
        tx.execute("DROP TABLE rollup_ways")
        tx.execute("DROP TABLE rollup_ways_daily")
        for table, column in (("attempts", "via"), ("attempts", "live_cost_usd"), ("extractions", "via"),
                              ("extractions", "live_cost_usd")):  # fmt: skip
            tx.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        tx.execute("DELETE FROM _migrations WHERE name = '0011_batch_waves'")


def test_a_ledger_at_0010_migrates_with_its_attempts_live_and_its_report_unchanged(ledger_target):
    from extractkit.report import Economics, build_report

    from .test_report_compat import differences

    now = 1_800_000_000.0
    with Ledger(ledger_target) as ledger:
        populate(ledger, {"zero": 4, "few": 3, "ft": 2, "none": 2}, created_at=now - 3600)
        populate(ledger, {"few": 2}, costs={"few_shot": None}, prefix="u", created_at=now - 1800)
        before = build_report(ledger, as_of=now, economics=Economics(failure_cost=1.0))
        _downgrade_to_0010(ledger)
    with Ledger(ledger_target) as ledger:
        assert ledger.applied == ["0011_batch_waves"]
        assert {"batch_jobs", "batch_items"} <= set(ledger.tables())
        vias = ledger.query("SELECT via, COUNT(*), COUNT(live_cost_usd) FROM attempts GROUP BY via")
        assert [tuple(r) for r in vias] == [("live", 41, 0)]
        vias = ledger.query("SELECT via, COUNT(*) FROM extractions GROUP BY via")
        assert [tuple(r) for r in vias] == [("live", 13)]
        after = build_report(ledger, as_of=now, economics=Economics(failure_cost=1.0))
        assert differences({k: v for k, v in before.items() if k != "queries"},
                           {k: v for k, v in after.items() if k != "queries"}) == []  # fmt: skip
        assert after["totals"]["documents"] == 13
        # the sums by way were filled from the existing rollups: what a full scan and a rebuild give
        from extractkit.ledger import rebuild_rollups

        assert _ways_rollup(ledger) == _ways_scan(ledger) == _ways_rollup(ledger, "rollup_ways_daily")
        assert _ways_scan(ledger)["live"][:2] == (13, 11)
        kept = _rollup_rows(ledger)
        rebuild_rollups(ledger)
        assert _rollup_rows(ledger) == kept


# -- the report's sums by way (rollup_ways) ----------------------------------------------------------------


def _way_result(doc: str, way: str, live_price: bool = True) -> Any:
    """Document ``doc`` extracted live (few-shot path), in batch, or mixed (batch zero-shot, live few-shot)."""
    res = result(EX, "few", doc, COSTS)
    if way == "live":
        return res
    zero = [batch_attempt("zero_shot", 1, "invalid_json"), batch_attempt("zero_shot", 2, "schema_invalid")]
    few = [batch_attempt("few_shot", 1, "ok", cost=0.001)] if way == "batch" else res.attempts[2:]
    attempts = zero + few
    if not live_price:
        attempts = [dataclasses.replace(a, live_cost_usd=None) if a.tier == "few_shot" else a for a in attempts]
    return dataclasses.replace(res, attempts=attempts)


def _ways_scan(ledger: Ledger) -> dict[str, tuple[Any, ...]]:
    """rollup_ways's sums over the current view, from the plain tables."""
    rows = ledger.query(
        "SELECT via, COUNT(*), SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), SUM(COALESCE(cost_usd, 0)),"
        " SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END),"
        " SUM(COALESCE(CASE WHEN via = 'live' THEN cost_usd ELSE live_cost_usd END, 0)),"
        " SUM(CASE WHEN (CASE WHEN via = 'live' THEN cost_usd ELSE live_cost_usd END) IS NULL THEN 1 ELSE 0 END)"
        " FROM extractions WHERE superseded_by IS NULL AND forced_tier IS NULL AND status IN ('ok', 'failed')"
        " GROUP BY via"
    )
    return {r[0]: (int(r[1]), int(r[2]), round(r[3], 9), int(r[4]), round(r[5], 9), int(r[6])) for r in rows}


def _ways_rollup(ledger: Ledger, table: str = "rollup_ways") -> dict[str, tuple[Any, ...]]:
    from extractkit.ledger import NOT_GONE

    rows = ledger.query(f"SELECT via, SUM(n), SUM(ok), SUM(cost), SUM(unpriced), SUM(live_cost), SUM(live_unpriced)"
                        f" FROM {table} WHERE gone = ? GROUP BY via HAVING SUM(n) != 0", (NOT_GONE,))  # fmt: skip
    return {r[0]: (int(r[1]), int(r[2]), round(r[3], 9), int(r[4]), round(r[5], 9), int(r[6])) for r in rows}


def _rollup_rows(ledger: Ledger) -> dict[str, set[tuple[Any, ...]]]:
    from extractkit.ledger._rollups import ALL_TABLES, spec

    out = {}
    for table in ALL_TABLES:
        key, sums = spec(table)
        out[table] = {tuple(r[k] for k in key) + tuple(round(float(r[s]), 9) for s in sums)
                      for r in ledger.query(f"SELECT * FROM {table} WHERE n != 0")}  # fmt: skip
    return out


def test_the_ways_rollup_keeps_what_a_full_scan_and_a_rebuild_give(ledger_target, monkeypatch):
    import time

    from extractkit.ledger import rebuild_rollups

    clock = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    with Ledger(ledger_target) as ledger:
        first, later = ledger.start_run("batch"), ledger.start_run("batch")
        for k in range(24):
            clock[0] += 1234.0  # across hours and a day
            way = ("live", "batch", "mixed")[k % 3]
            ledger.record(EX, _way_result(f"w{k}", way, live_price=k != 4), run_id=first)
        for k in range(0, 24, 5):  # reruns by a later run, another way: the earlier ones superseded
            clock[0] += 777.0
            ledger.record(EX, _way_result(f"w{k}", ("batch", "live")[k % 2]), run_id=later)
        for k in (2, 2):  # superseded within its run
            clock[0] += 99.0
            ledger.record(EX, _way_result(f"w{k}", "mixed"), run_id=later)
        clock[0] += 50.0
        ledger.record(EX, _way_result("w1", "batch"), forced_tier="few_shot",
                      config_hash=EX.tier_hashes["few_shot"])  # eval's: not in the report  # fmt: skip
        monkeypatch.undo()
        scan = _ways_scan(ledger)
        assert set(scan) == {"live", "batch", "mixed"} and sum(v[0] for v in scan.values()) == 24
        assert scan["batch"][4] > scan["batch"][2] and scan["mixed"][4] > scan["mixed"][2]  # the saving
        assert scan["batch"][5] == 1 and scan["live"][4] == scan["live"][2]  # w4's live price unknown
        assert _ways_rollup(ledger) == scan == _ways_rollup(ledger, "rollup_ways_daily")
        kept = _rollup_rows(ledger)
        assert kept["rollup_ways"] and kept["rollup_ways_daily"]
        rebuild_rollups(ledger)
        assert _rollup_rows(ledger) == kept
