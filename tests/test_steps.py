"""The attempt steps (extractkit._steps): one row test per rule of ``Steps.decide``, the JSON
round trip of a ``TierState`` with re-ask turns in every mode, ``Failure.from_status`` against the
live path's record of the same HTTP reply, batch pricing, and the same scripted answers through
the live transport (``TierCall`` via ``Extractor.arun_tier``, respx) and through the steps driven
directly (as the batch waves drive them) giving the same attempts, field by field."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletion

from extractkit import EscalationPolicy, Extractor, Outcome, ProviderUnreachable, RetryPolicy, ZeroShot
from extractkit._pricing import Price
from extractkit._retry import ResponseTooLarge
from extractkit._steps import (
    Answer,
    Failure,
    Next,
    NextKind,
    Steps,
    TierState,
    status_error_text,
)

from .conftest import Invoice
from .fakes import BASE_URL, completion, error_body

DOC = "ACME Tools Ltd\nInvoice 7\nDate: 2024-03-15\nTotal due: 1,249.50 EUR\n"
GOOD = {"issuer": "ACME Tools Ltd", "total": 1249.5, "date": "2024-03-15"}
UNGROUNDED = {"issuer": "Globex Corp", "total": 1249.5}
HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
NO_JITTER = EscalationPolicy(retry=RetryPolicy(jitter=0.0))


def extractor(mode: str = "tools", max_reasks: int = 2, **kw: Any) -> Extractor[Invoice]:
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, mode=mode, max_reasks=max_reasks)
    return Extractor(Invoice, tiers=[tier], policy=kw.pop("policy", NO_JITTER), **kw)


def steps(mode: str = "tools", max_reasks: int = 2, **kw: Any) -> Steps:
    return extractor(mode, max_reasks, **kw).steps("zero_shot")


def answer_body(args: Any, mode: str = "tools", **kw: Any) -> dict[str, Any]:
    """A completion answering ``args`` as the mode answers: a tool call, or JSON content."""
    if mode == "tools" or args is None:
        return completion(args, **kw)
    return completion(None, content=args if isinstance(args, str) else json.dumps(args), **kw)


def answer(body: dict[str, Any], via: str = "live") -> Answer:
    return Answer(response=ChatCompletion.model_validate(body), started_at=1.0, latency_s=0.5,
                  via=via)  # type: ignore[arg-type]  # fmt: skip


def failed(failure: Failure) -> Answer:
    return Answer(failure=failure, started_at=1.0, latency_s=0.5)


# -- decide: one test per row of the table ------------------------------------------------------


def test_decide_a_validated_value_is_done():
    st = steps()
    state = st.start(DOC)
    it = st.interpret(state, answer(completion(GOOD)), DOC)
    nxt = st.decide(state, it)
    assert nxt.kind is NextKind.DONE and nxt.state is None
    assert type(nxt.value) is Invoice and nxt.value == Invoice(**GOOD)
    assert it.attempt.outcome is Outcome.OK and it.attempt.number == 1


def test_decide_a_transient_failure_with_sends_left_is_a_retry_of_the_same_request():
    st = steps()
    state = dataclasses.replace(st.start(DOC), tries=2, number=5)  # 2 sends made of max_attempts 4
    fail = Failure.from_status(429, error_body("slow down", type_="requests"), {"retry-after": "2.5"})
    it = st.interpret(state, failed(fail), DOC)
    nxt = st.decide(state, it)
    assert nxt.kind is NextKind.RETRY and nxt.delay_s == 2.5  # Retry-After honoured
    assert nxt.state is not None
    assert (nxt.state.tries, nxt.state.number, nxt.state.reasks) == (3, 6, 0)
    assert nxt.state.kwargs == state.kwargs
    assert (it.attempt.outcome, it.attempt.number, it.attempt.status_code) == (Outcome.RATE_LIMITED, 6, 429)
    # without Retry-After: the policy's backoff for this retry (the third: 0.5 * 2**2, no jitter)
    it = st.interpret(state, failed(Failure.from_status(500, error_body("oops"))), DOC)
    assert st.decide(state, it).delay_s == 2.0


@pytest.mark.parametrize(
    "failure",
    [
        Failure.from_status(400, error_body("bad request")),
        Failure.context_overflow("prompt of about 9000 tokens ... (not sent)"),
        Failure.from_exception(ResponseTooLarge(1024, 2048, 200)),
        Failure.from_status(401, error_body("Incorrect API key provided", code="invalid_api_key")),
        "exhausted",
    ],
    ids=["400", "context_overflow", "response_too_large", "401", "retries_exhausted"],
)
def test_decide_any_other_failure_ends_the_tier(failure):
    st = steps()
    state = st.start(DOC)
    if failure == "exhausted":  # a transient failure on the last send the policy allows
        failure = Failure.from_status(503, error_body("overloaded"))
        state = dataclasses.replace(state, tries=RetryPolicy().max_attempts - 1)
    it = st.interpret(state, failed(failure), DOC)
    nxt = st.decide(state, it)
    assert nxt == Next(NextKind.END_TIER)
    assert it.attempt.outcome is failure.outcome and it.attempt.error == failure.error


def _unreadable(st: Steps, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    def parser(**_: Any) -> Any:
        raise RuntimeError("the handler could not read this answer")

    monkeypatch.setattr(st.bound, "handlers", SimpleNamespace(response_parser=parser))
    return completion(GOOD)


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ({**completion(GOOD), "choices": []}, Outcome.INVALID_JSON),
        (completion(None, refusal="I can't help with that."), Outcome.REFUSAL),
        (completion(GOOD, finish_reason="content_filter"), Outcome.CONTENT_FILTER),
        (completion('{"issuer": "ACME', finish_reason="length"), Outcome.TRUNCATED),
        ("unreadable", Outcome.INVALID_JSON),
    ],
    ids=["no_choices", "refusal", "content_filter", "truncated", "unreadable"],
)
def test_decide_an_answer_no_reask_can_fix_ends_the_tier(body, outcome, monkeypatch):
    st = steps()
    state = st.start(DOC)
    if body == "unreadable":
        body = _unreadable(st, monkeypatch)
    it = st.interpret(state, answer(body), DOC)
    assert it.stop and it.attempt.outcome is outcome and it.attempt.error
    assert st.decide(state, it) == Next(NextKind.END_TIER)


@pytest.mark.parametrize("mode", ["tools", "json_schema", "json"])
def test_decide_a_validation_failure_with_reasks_left_is_a_reask(mode):
    st = steps(mode)
    state = dataclasses.replace(st.start(DOC), tries=2, number=3)
    sent_before = list(state.kwargs["messages"])
    it = st.interpret(state, answer(answer_body(UNGROUNDED, mode)), DOC)
    assert it.attempt.outcome is Outcome.UNGROUNDED and it.attempt.errors
    nxt = st.decide(state, it)
    assert nxt.kind is NextKind.REASK and nxt.state is not None
    assert (nxt.state.reasks, nxt.state.tries, nxt.state.number) == (1, 0, 4)
    messages = nxt.state.kwargs["messages"]
    assert len(messages) > state.n_original and "Globex Corp" in json.dumps(messages[state.n_original :])
    assert state.kwargs["messages"] == sent_before  # the state it came from is left as it was


def test_decide_a_reask_that_cannot_be_written_ends_the_tier_with_the_reason(monkeypatch):
    st = steps()
    state = st.start(DOC)
    it = st.interpret(state, answer(completion(UNGROUNDED)), DOC)

    def reask(**_: Any) -> Any:
        raise ValueError("cannot quote this answer back")

    monkeypatch.setattr(st.bound, "handlers", SimpleNamespace(reask_handler=reask))
    nxt = st.decide(state, it)
    assert nxt.kind is NextKind.END_TIER and nxt.amend_error is not None
    assert nxt.amend_error == f"{it.attempt.error} (no re-ask: ValueError: cannot quote this answer back)"
    assert nxt.apply(it.attempt).error == nxt.amend_error
    assert nxt.apply(it.attempt).outcome is Outcome.UNGROUNDED


def test_decide_a_validation_failure_with_no_reasks_left_ends_the_tier():
    st = steps(max_reasks=2)
    state = dataclasses.replace(st.start(DOC), reasks=2)
    it = st.interpret(state, answer(completion("{not json")), DOC)
    assert it.attempt.outcome is Outcome.INVALID_JSON and it.parse_error is not None
    assert st.decide(state, it) == Next(NextKind.END_TIER)


# -- TierState: the JSON round trip, re-ask turns included --------------------------------------


@pytest.mark.parametrize("mode", ["tools", "json_schema", "json"])
def test_tier_state_json_round_trip_keeps_the_reask_turns(mode):
    st = steps(mode, max_reasks=3)
    state = st.start(DOC)
    for bad in (UNGROUNDED, "{not json"):  # two re-asks: an assistant turn and the errors, twice
        it = st.interpret(state, answer(answer_body(bad, mode)), DOC)
        nxt = st.decide(state, it)
        assert nxt.kind is NextKind.REASK and nxt.state is not None
        state = nxt.state
    text = state.to_json()
    again = TierState.from_json(text)
    assert again == state and again.kwargs == state.kwargs and again.to_json() == text
    assert len(again.kwargs["messages"]) > state.n_original + 2
    # the state read back builds the same request, and goes on the same way
    assert st.build_request(again).body == st.build_request(state).body
    json.dumps(st.build_request(again).body)  # a batch line's body is JSON
    it1 = st.interpret(state, answer(answer_body(GOOD, mode)), DOC)
    it2 = st.interpret(again, answer(answer_body(GOOD, mode)), DOC)
    assert st.decide(again, it2).kind is NextKind.DONE
    assert dataclasses.replace(it1.attempt, latency_s=0) == dataclasses.replace(it2.attempt, latency_s=0)


# -- Failure.from_status: the live path's outcome and error text for the same reply ------------

REPLIES = {
    "400": (400, error_body("Invalid value for 'temperature'", code="invalid_value")),
    "400_context": (400, error_body("This model's maximum context length is 128000 tokens.",
                                    code="context_length_exceeded")),  # fmt: skip
    "401": (401, error_body("Incorrect API key provided: sk-abc123def456ghi789jkl012mno345", code="invalid_api_key")),
    "429": (429, error_body("Rate limit reached for gpt-4o-mini", type_="requests", code="rate_limit_exceeded")),
    "500": (500, error_body("The server had an error while processing your request.", type_="server_error")),
    "503": (503, {"error": {"message": "The engine is currently overloaded", "type": "server_error"}}),
    "html": (502, HTML),
    "empty": (503, None),
}


@pytest.mark.parametrize("name", list(REPLIES))
def test_failure_from_status_is_what_the_live_path_records(mock_api, name):
    status, body = REPLIES[name]
    if isinstance(body, str):
        reply = httpx.Response(status, text=body, headers={"content-type": "text/html"})
    elif body is None:
        reply = httpx.Response(status)
    else:
        reply = httpx.Response(status, json=body)
    mock_api.post("/chat/completions").mock(return_value=reply)
    ex = extractor(policy=EscalationPolicy(retry=RetryPolicy(max_attempts=1)))
    got = _run_live(ex, DOC)
    assert (got.error is not None) is (status == 401)  # a refused key stops everything sent there
    live = got.attempts[0]
    # a batch error line carries the body as JSON (or the text the provider's proxy sent)
    fail = Failure.from_status(status, body)
    assert (fail.outcome, fail.error, fail.status_code) == (live.outcome, live.error, live.status_code)
    assert status_error_text(status, body) == live.error
    batch = ex.steps("zero_shot").interpret(ex.steps("zero_shot").start(DOC), failed(fail), DOC).attempt
    assert (batch.outcome, batch.error, batch.status_code) == (live.outcome, live.error, live.status_code)
    assert "sk-abc123def456ghi789jkl012mno345" not in fail.error  # redacted as the live text is


def test_failure_transience_matches_the_live_retry_decision(mock_api, sleeps):
    for status in (400, 401, 408, 409, 429, 500, 502, 503, 504):
        fail = Failure.from_status(status, error_body("x"))
        assert fail.transient is (status in {408, 409, 429, 500, 502, 503, 504})
    not_run = Failure.not_run("batch_expired", "This request could not be executed before the window expired.")
    assert (not_run.outcome, not_run.transient, not_run.status_code) == (Outcome.TIMEOUT, True, None)


# -- pricing by way -----------------------------------------------------------------------------


def test_batch_answers_are_priced_at_the_batch_price_with_the_live_cost_beside():
    ex = extractor()
    live_price = ex.steps("zero_shot").price
    assert live_price is not None
    st = Steps(ex._bound["zero_shot"], schema_hash=ex.schema_hash, retry_policy=RetryPolicy(),
               price=live_price, batch_price=Price(0.075, 0.30, 0.0375))  # fmt: skip
    state = st.start(DOC)
    body = completion(GOOD, usage=(1000, 200, 0))
    live = st.interpret(state, answer(body), DOC).attempt
    batch = st.interpret(state, answer(body, via="batch"), DOC).attempt
    assert (live.via, live.live_cost_usd) == ("live", None)
    assert batch.via == "batch" and batch.cost_usd == pytest.approx(live.cost_usd / 2)
    assert batch.live_cost_usd == live.cost_usd
    # no batch price known: the batch attempt's cost is unknown, never guessed
    unknown = Steps(ex._bound["zero_shot"], schema_hash=ex.schema_hash, retry_policy=RetryPolicy(),
                    price=live_price, batch_price=None)  # fmt: skip
    assert unknown.interpret(state, answer(body, via="batch"), DOC).attempt.cost_usd is None


# -- the same answers through the live transport and through the steps ---------------------------

Reply = tuple[int, Any, dict[str, str]]


def ok_reply(args: Any, mode: str = "tools", **kw: Any) -> Reply:
    return 200, answer_body(args, mode, **kw), {}


def err(status: int, body: Any = None, **headers: str) -> Reply:
    return status, error_body(f"error {status}") if body is None else body, headers


SCRIPTS: dict[str, tuple[str, list[Reply]]] = {
    "ok": ("tools", [ok_reply(GOOD)]),
    "invalid_json_then_ok": ("tools", [ok_reply("{not json"), ok_reply(GOOD)]),
    "ungrounded_x3": ("tools", [ok_reply(UNGROUNDED)] * 3),
    "schema_invalid_then_ok": ("tools", [ok_reply({"issuer": "ACME Tools Ltd", "total": "lots"}), ok_reply(GOOD)]),
    "429_then_ok": ("tools", [err(429, **{"retry-after": "1.5"}), ok_reply(GOOD)]),
    "500_x4": ("tools", [err(500)] * 4),
    "400": ("tools", [err(400)]),
    "html_502_then_ok": ("tools", [err(502, HTML), ok_reply(GOOD)]),
    "refusal": ("tools", [ok_reply(None, refusal="I can't help with that.")]),
    "truncated": ("tools", [ok_reply('{"issuer": "ACME', finish_reason="length")]),
    "content_filter": ("tools", [ok_reply(GOOD, finish_reason="content_filter")]),
    "no_choices": ("tools", [(200, {**completion(GOOD), "choices": []}, {})]),
    "fenced": ("tools", [ok_reply("```json\n" + json.dumps(GOOD) + "\n```")]),
    "mixed": ("tools", [err(503), ok_reply(UNGROUNDED), err(429), err(500), ok_reply("{x"), ok_reply(GOOD)]),
    "json_schema_reask": ("json_schema", [ok_reply("{not json", "json_schema"), ok_reply(GOOD, "json_schema")]),
    "json_fenced_reask": ("json", [ok_reply(UNGROUNDED, "json"),
                                   ok_reply("```json\n" + json.dumps(GOOD) + "\n```", "json")]),  # fmt: skip
}


def _respx_reply(reply: Reply) -> httpx.Response:
    status, body, headers = reply
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers={"content-type": "text/html", **headers})
    return httpx.Response(status, json=body, headers=headers)


def _run_live(ex: Extractor[Invoice], doc: str) -> Any:
    async def go() -> Any:
        async with ex:
            try:
                value, attempts = await ex.arun_tier("zero_shot", doc)
            except ProviderUnreachable as exc:  # a 401: the attempts made travel with the error
                assert exc.result is not None
                return SimpleNamespace(value=None, attempts=exc.result.attempts, error=exc)
            return SimpleNamespace(value=value, attempts=attempts, error=None)

    return asyncio.run(go())


def _run_steps(st: Steps, doc: str, replies: list[Reply]) -> Any:
    """The steps driven as the batch waves drive them: every request rebuilt from its state,
    failures known only by status and body (an error line), no sleeping."""
    state = st.start(doc)
    attempts, delays, bodies = [], [], []
    script = iter(replies)
    while True:
        request = st.build_request(state)
        assert request.overflow is None
        bodies.append(request.body)
        status, body, headers = next(script)
        got = answer(body) if status == 200 else failed(Failure.from_status(status, body, headers or None))
        it = st.interpret(state, got, doc)
        nxt = st.decide(state, it)
        attempts.append(nxt.apply(it.attempt))
        if nxt.kind in (NextKind.DONE, NextKind.END_TIER):
            return SimpleNamespace(value=nxt.value, attempts=attempts, delays=delays, bodies=bodies)
        if nxt.kind is NextKind.RETRY:
            delays.append(nxt.delay_s)
        assert nxt.state is not None
        state = nxt.state


def _fields(a: Any) -> dict[str, Any]:
    d = dataclasses.asdict(a)
    del d["latency_s"], d["started_at"]  # each transport's own clock
    return d


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_live_transport_and_steps_give_the_same_attempts(mock_api, sleeps, name):
    mode, replies = SCRIPTS[name]
    route = mock_api.post("/chat/completions").mock(side_effect=[_respx_reply(r) for r in replies])
    live = _run_live(extractor(mode), DOC)
    driven = _run_steps(steps(mode), DOC, replies)
    assert route.call_count == len(replies)
    assert len(driven.attempts) == len(live.attempts) == len(replies)
    for a, b in zip(live.attempts, driven.attempts, strict=True):
        assert _fields(a) == _fields(b)
    assert live.value == driven.value and type(live.value) is type(driven.value)
    assert sleeps == driven.delays  # the same retry delays (Retry-After, backoff without jitter)
    assert [json.loads(c.request.content) for c in route.calls] == driven.bodies  # the same requests
