"""Issue 18, section 2: one attempt logic, two transports. The SAME scripted provider answers
(one ``ScriptedResponder``) go through the live path (``BatchRunner`` -> ``FakeLLMServer``) and the
batch path (``WaveRunner`` -> ``FakeBatchServer``) on a three-tier chain, and every attempt (tier,
number, outcome, what it followed, status, errors, output, usage), every final result (value,
tier), the request bodies each fake saw per document and the two ledgers (minus ids, times, via,
cost) are the same. Batch attempts cost the batch price, with the live cost beside."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extractkit import EscalationPolicy, Extractor, FineTuned, Ledger, Price, RetryPolicy, ZeroShot
from extractkit.batch import BatchRunner, WaveRunner

from .conftest import Invoice
from .fakes import FakeLLMServer, completion, error_body
from .fakes_batch import FakeBatchServer, Reply, ScriptedResponder

KEY = "sk-parity-test-key-0123456789"
T1, T2, T3 = "gpt-4o-mini", "gpt-4.1-mini", "ft:gpt-4o-mini:acme::x"
PRICES = {T1: Price(0.15, 0.6), T2: Price(0.4, 1.6), T3: Price(0.3, 1.2)}
MAX_REASKS, MAX_ATTEMPTS = 2, 4

DOCS = {  # marker -> document (the marker is unique to the document)
    "Acme Ok": "Invoice\nFrom: Acme Ok\nTotal: 11.00\n",
    "Acme Json": "Invoice\nFrom: Acme Json\nTotal: 12.00\n",
    "Acme Ground": "Invoice\nFrom: Acme Ground\nTotal: 13.00\n",
    "Acme Limit": "Invoice\nFrom: Acme Limit\nTotal: 14.00\n",
    "Acme Down": "Invoice\nFrom: Acme Down\nTotal: 15.00\n",
    "Acme Refuse": "Invoice\nFrom: Acme Refuse\nTotal: 16.00\n",
    "Acme Cut": "Invoice\nFrom: Acme Cut\nTotal: 17.00\n",
    "Acme Fence": "Invoice\nFrom: Acme Fence\nTotal: 18.00\n",
}


def value(marker: str) -> dict[str, Any]:
    return {"issuer": marker, "total": float(DOCS[marker].split("Total: ")[1])}


def ok(marker: str, model: str) -> Reply:
    if model == T3:  # the fine-tuned tier answers in json_schema mode: content, not a tool call
        return 200, completion(content=json.dumps(value(marker)), model=model, usage=(80, 15, 0)), {}
    return 200, completion(value(marker), model=model, usage=(120, 25, 40)), {}


def bad_json(model: str) -> Reply:
    return 200, completion('{"issuer": "Acme Json", "total": ', model=model), {}


def ungrounded(model: str) -> Reply:
    return 200, completion({"issuer": "Nobody Ltd", "total": 13.0}, model=model), {}


def refusal(model: str) -> Reply:
    body = completion(content=None, refusal="I can't help with that.", model=model)
    return 200, body, {}


def truncated(model: str) -> Reply:
    return 200, completion('{"issuer": "Acme C', model=model, finish_reason="length"), {}


def fenced(marker: str, model: str) -> Reply:
    return 200, completion("```json\n" + json.dumps(value(marker)) + "\n```", model=model), {}


LIMITED: Reply = (429, error_body("Rate limit reached for gpt-4o-mini", "rate_limit_exceeded", "requests"),
                  {"retry-after": "0"})  # fmt: skip
DOWN: Reply = (500, error_body("The server had an error", None, "server_error"), {})


def script() -> ScriptedResponder:
    return ScriptedResponder({
        ("Acme Ok", T1): [ok("Acme Ok", T1)],
        ("Acme Json", T1): [bad_json(T1), ok("Acme Json", T1)],                 # invalid JSON, re-ask, ok
        ("Acme Ground", T1): [ungrounded(T1)] * (MAX_REASKS + 1),               # re-asks exhausted
        ("Acme Ground", T2): [ok("Acme Ground", T2)],                           # escalated: ok
        ("Acme Limit", T1): [LIMITED, ok("Acme Limit", T1)],                    # 429, retried, ok
        ("Acme Down", T1): [DOWN] * MAX_ATTEMPTS,                               # retries exhausted
        ("Acme Down", T2): [ok("Acme Down", T2)],                               # escalated: ok
        ("Acme Refuse", T1): [refusal(T1)],
        ("Acme Refuse", T2): [refusal(T2)],
        ("Acme Refuse", T3): [refusal(T3)],
        ("Acme Cut", T1): [truncated(T1)],
        ("Acme Cut", T2): [truncated(T2)],
        ("Acme Cut", T3): [ok("Acme Cut", T3)],
        ("Acme Fence", T1): [fenced("Acme Fence", T1)],
    })  # fmt: skip


def chain(base_url: str) -> Extractor[Invoice]:
    kw: dict[str, Any] = {"base_url": base_url, "api_key": KEY, "max_reasks": MAX_REASKS}
    tiers = [ZeroShot(name="zero", model=T1, price=PRICES[T1], **kw),
             ZeroShot(name="mini", model=T2, price=PRICES[T2], **kw),
             FineTuned(name="tuned", model=T3, price=PRICES[T3], **kw)]  # fmt: skip
    ex = Extractor(Invoice, tiers, policy=EscalationPolicy(retry=RetryPolicy(max_attempts=MAX_ATTEMPTS)))
    for t in tiers:  # the batch price (half the live one), whichever way the config will say it
        price = PRICES[t.model]
        ex.steps(t.name).batch_price = Price(price.input / 2, price.output / 2)
    return ex


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    async def fake_sleep(seconds: float) -> None:
        return None

    monkeypatch.setattr("extractkit._retry.sleep", fake_sleep)
    yield


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for marker, text in DOCS.items():
        (folder / f"{marker.split()[1].lower()}.txt").write_text(text)
    return folder


def run(runner: Any, paths: list[Any]) -> Any:
    async def go() -> Any:
        try:
            return await runner.run(paths)
        finally:
            await runner.extractor.aclose()

    return asyncio.run(go())


ATTEMPT_FIELDS = ("tier", "model", "number", "outcome", "error", "errors", "status_code", "finish_reason",
                  "output", "usage", "prompt_hash", "schema_hash", "served_model")  # fmt: skip
SKIP_COLUMNS = {"id", "extraction_id", "run_id", "created_at", "started_at", "latency_s", "via", "cost_usd",
                "live_cost_usd", "updated_at", "superseded_by", "superseded_at",
                "config_hash"}  # fmt: skip  (the two fakes listen on two ports: the endpoint is in the chain)


def attempt_view(a: Any) -> tuple[Any, ...]:
    return tuple(getattr(a, f) for f in ATTEMPT_FIELDS)


def ledger_view(ledger: Ledger) -> dict[str, Any]:
    """Both ledgers' extractions and attempts, by document, without ids, times, via and cost."""
    out: dict[str, Any] = {}
    for e in ledger.query("SELECT * FROM extractions ORDER BY path"):
        row = {k: v for k, v in dict(e).items() if k not in SKIP_COLUMNS}
        attempts = ledger.query("SELECT * FROM attempts WHERE extraction_id = ? ORDER BY id", (e["id"],))
        row["attempts"] = [{k: v for k, v in dict(a).items() if k not in SKIP_COLUMNS} for a in attempts]
        out[Path(e["path"]).name] = row
    return out


def bodies(requests: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for body in requests:
        text = json.dumps(body["messages"])
        marker = next(m for m in DOCS if m in text)
        by_doc.setdefault(marker, []).append(body)
    return by_doc


def test_live_and_batch_give_the_same_attempts_results_requests_and_ledger(docs: Path, tmp_path: Path) -> None:
    live_responder, batch_responder = script(), script()
    live: dict[str, Any] = {}
    batch: dict[str, Any] = {}
    with FakeLLMServer(live_responder) as llm, Ledger(tmp_path / "live.sqlite3") as live_ledger:
        runner = BatchRunner(chain(llm.base_url), live_ledger, concurrency=4,
                             on_result=lambda r, s: live.__setitem__(Path(r.path).name, r))  # fmt: skip
        live_summary = run(runner, [docs])
        live_rows = ledger_view(live_ledger)
        live_requests = bodies(llm.requests)
    with FakeBatchServer(batch_responder, advance_on_poll=3) as server, Ledger(tmp_path / "b.sqlite3") as led:
        runner = WaveRunner(chain(server.base_url), led, poll_s=0,
                            on_result=lambda r, s: batch.__setitem__(Path(r.path).name, r))  # fmt: skip
        batch_summary = run(runner, [docs])
        batch_rows = ledger_view(led)
        batch_requests = bodies(server.requests)
        n_batches = len(server.batches)

    # the script was exercised as written, the same way by both paths
    assert live_responder.calls == batch_responder.calls
    assert live_responder.calls[("Acme Down", T1)] == MAX_ATTEMPTS
    assert live_responder.calls[("Acme Ground", T1)] == MAX_REASKS + 1
    assert n_batches > 1  # the waves really happened (re-asks, retries, escalations)
    for s in (live_summary, batch_summary):
        assert (s.documents, s.ok, s.failed) == (8, 7, 1)
    assert sorted(live) == sorted(batch) == sorted(f"{m.split()[1].lower()}.txt" for m in DOCS)

    for name in live:
        lr, br = live[name].result, batch[name].result
        assert [attempt_view(a) for a in lr.attempts] == [attempt_view(a) for a in br.attempts], name
        assert (lr.value, lr.tier, lr.outcome) == (br.value, br.tier, br.outcome), name
        assert lr.spans == br.spans and live[name].spans == batch[name].spans, name  # where values were found
        assert bool(lr.spans) == lr.ok, name  # Invoice's issuer and total are grounded
        assert {a.via for a in lr.attempts} == {"live"} and {a.via for a in br.attempts} == {"batch"}
        for la, ba in zip(lr.attempts, br.attempts, strict=True):  # the batch price, the live cost beside
            assert ba.live_cost_usd == pytest.approx(la.cost_usd), name
            assert ba.cost_usd == pytest.approx((la.cost_usd or 0) / 2), name

    # the rows every scripted case must produce (so a parity of two wrong paths would show)
    def outcomes(name: str) -> list[tuple[str, int, str]]:
        return [(a.tier, a.number, a.outcome.value) for a in live[name].result.attempts]

    assert outcomes("ok.txt") == [("zero", 1, "ok")]
    assert outcomes("json.txt") == [("zero", 1, "invalid_json"), ("zero", 2, "ok")]
    assert outcomes("ground.txt") == [("zero", 1, "ungrounded"), ("zero", 2, "ungrounded"),
                                      ("zero", 3, "ungrounded"), ("mini", 1, "ok")]  # fmt: skip
    assert outcomes("limit.txt") == [("zero", 1, "rate_limited"), ("zero", 2, "ok")]
    assert outcomes("down.txt") == [*[("zero", i, "api_error") for i in range(1, MAX_ATTEMPTS + 1)],
                                    ("mini", 1, "ok")]  # fmt: skip
    assert [o for _, _, o in outcomes("refuse.txt")] == ["refusal"] * 3
    assert outcomes("cut.txt") == [("zero", 1, "truncated"), ("mini", 1, "truncated"), ("tuned", 1, "ok")]
    assert outcomes("fence.txt") == [("zero", 1, "ok")]
    limited = live["limit.txt"].result.attempts[0]
    assert limited.status_code == 429 and "Rate limit reached for gpt-4o-mini" in (limited.error or "")

    # what the provider was asked, per document, in order: the same bodies (re-asks included)
    assert live_requests.keys() == batch_requests.keys()
    for marker in live_requests:
        assert live_requests[marker] == batch_requests[marker], marker
    assert len(live_requests["Acme Json"][1]["messages"]) > len(live_requests["Acme Json"][0]["messages"])

    # the ledgers, minus ids, times, via and cost
    assert live_rows.keys() == batch_rows.keys()
    for name in live_rows:
        assert live_rows[name] == batch_rows[name], name
