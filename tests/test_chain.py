from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from extractkit import (
    EscalationPolicy,
    ExtractionFailed,
    Extractor,
    FewShot,
    FineTuned,
    Outcome,
    RetryPolicy,
    ZeroShot,
)
from extractkit._tiers import BoundTier

from .conftest import Invoice
from .fakes import BASE_URL, completion, error_body

DOC = "ACME Tools Ltd\nInvoice 7\nDate: 2024-03-15\nTotal due: 1,249.50 EUR\n"
GOOD = {"issuer": "ACME Tools Ltd", "total": 1249.5, "date": "2024-03-15"}


def zero(**kw):
    kw.setdefault("model", "gpt-4o-mini")
    return ZeroShot(base_url=BASE_URL, **kw)


def ok(args=GOOD, **kw):
    return httpx.Response(200, json=completion(args, **kw))


def bodies(route) -> list[dict]:
    return [json.loads(call.request.content) for call in route.calls]


# -- each outcome lands in the right Attempt --------------------------------------------------


@pytest.mark.parametrize("marker", ["Total {{ 7*7 }} units", "{% if x %}unclosed", "{# comment #}"])
def test_documents_that_look_like_templates_are_sent_verbatim(mock_api, marker):
    """instructor renders messages as Jinja2 templates when given a context: the document must
    reach the model exactly as it is (and never break the call), with grounding still enforced."""
    doc = DOC + marker + "\n"
    route = mock_api.post("/chat/completions").mock(side_effect=[ok({**GOOD, "issuer": "Nobody"}), ok()])
    result = Extractor(Invoice, tiers=[zero(max_reasks=1)]).extract(doc)
    assert result.ok and [a.outcome for a in result.attempts] == [Outcome.UNGROUNDED, Outcome.OK]
    for body in bodies(route):
        assert marker in body["messages"][-1 if len(body["messages"]) == 2 else 1]["content"]


def test_ok(mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=ok(usage=(120, 30, 20)))
    result = Extractor(Invoice, tiers=[zero()]).extract(DOC)
    assert result.ok and result.tier == "zero_shot"
    assert result.value == Invoice(**GOOD)
    [a] = result.attempts
    assert (a.outcome, a.tier, a.model, a.number) == (Outcome.OK, "zero_shot", "gpt-4o-mini", 1)
    assert (a.usage.prompt_tokens, a.usage.completion_tokens, a.usage.cached_tokens) == (
        120,
        30,
        20,
    )
    assert a.prompt_hash and a.schema_hash == result.schema_hash
    body = bodies(route)[0]
    assert body["max_tokens"] > 0 and body["tool_choice"]["function"]["name"] == "Invoice"
    assert body["temperature"] == 0.0


@pytest.mark.parametrize(
    ("response", "outcome"),
    [
        (ok("{not json"), Outcome.INVALID_JSON),
        (ok({"issuer": "ACME Tools Ltd", "total": "lots"}), Outcome.SCHEMA_INVALID),
        (ok({"issuer": "Globex Corp", "total": 1249.5}), Outcome.UNGROUNDED),
        (ok(None, content=None, refusal="I can't help with that."), Outcome.REFUSAL),
        (ok('{"issuer": "ACME', finish_reason="length"), Outcome.TRUNCATED),
        (ok(None, content="", finish_reason="content_filter"), Outcome.CONTENT_FILTER),
        (httpx.Response(403, json=error_body("no access", "permission_denied")), Outcome.API_ERROR),
        (
            httpx.Response(400, json=error_body("maximum context length", "context_length_exceeded")),
            Outcome.CONTEXT_OVERFLOW,
        ),
    ],
)
def test_each_failure_outcome(mock_api, sleeps, response, outcome):
    mock_api.post("/chat/completions").mock(return_value=response)
    result = Extractor(Invoice, tiers=[zero(max_reasks=0)]).extract(DOC)
    assert not result.ok and result.value is None and result.tier is None
    assert [a.outcome for a in result.attempts] == [outcome]
    assert result.error and outcome.value in result.error
    assert sleeps == []  # none of these is transient


def test_schema_invalid_keeps_pydantic_errors(mock_api):
    mock_api.post("/chat/completions").mock(return_value=ok({"issuer": "ACME Tools Ltd"}))
    [a] = Extractor(Invoice, tiers=[zero(max_reasks=0)]).extract(DOC).attempts
    assert a.outcome is Outcome.SCHEMA_INVALID
    assert a.errors and a.errors[0]["type"] == "missing" and a.errors[0]["loc"] == ["total"]


def test_timeout_is_recorded_and_retried(mock_api, sleeps):
    mock_api.post("/chat/completions").mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow"), ok()]
    )
    result = Extractor(Invoice, tiers=[zero()]).extract(DOC)
    assert [a.outcome for a in result.attempts] == [Outcome.TIMEOUT, Outcome.TIMEOUT, Outcome.OK]
    assert len(sleeps) == 2 and result.ok


def test_connection_errors_everywhere_escalate(mock_api, sleeps):
    mock_api.post("/chat/completions").mock(side_effect=httpx.ConnectError("refused"))
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=2))
    result = Extractor(Invoice, tiers=[zero(), zero(name="second")], policy=policy).extract(DOC)
    assert [(a.tier, a.outcome) for a in result.attempts] == [
        ("zero_shot", Outcome.CONNECTION_ERROR), ("zero_shot", Outcome.CONNECTION_ERROR),
        ("second", Outcome.CONNECTION_ERROR), ("second", Outcome.CONNECTION_ERROR),
    ]  # fmt: skip


# -- escalation ------------------------------------------------------------------------------


def test_invalid_reask_invalid_then_next_tier_ok(mock_api):
    bad = ok({"issuer": "ACME Tools Ltd", "total": "n/a"})
    route = mock_api.post("/chat/completions").mock(side_effect=[bad, bad, bad, ok()])
    tiers = [
        zero(max_reasks=2),
        FewShot(model="gpt-4o-mini", base_url=BASE_URL, examples=[{"input": "X Co total 5", "output": {"issuer": "X Co", "total": 5}}]),
    ]  # fmt: skip
    result = Extractor(Invoice, tiers=tiers).extract(DOC)
    assert result.ok and result.tier == "few_shot"
    assert [(a.tier, a.number, a.outcome) for a in result.attempts] == [
        ("zero_shot", 1, Outcome.SCHEMA_INVALID),
        ("zero_shot", 2, Outcome.SCHEMA_INVALID),
        ("zero_shot", 3, Outcome.SCHEMA_INVALID),
        ("few_shot", 1, Outcome.OK),
    ]
    sent = bodies(route)
    # the re-ask carries the validation error back to the model
    assert len(sent[1]["messages"]) > len(sent[0]["messages"])
    assert "total" in json.dumps(sent[1]["messages"][-1])
    # the few-shot prompt has the example before the document
    user = sent[3]["messages"][-1]["content"]
    assert user.index("X Co total 5") < user.index("ACME Tools Ltd")


def test_policy_can_stop_instead_of_escalating(mock_api):
    mock_api.post("/chat/completions").mock(
        side_effect=[ok(None, content="", finish_reason="content_filter"), ok()]
    )
    policy = EscalationPolicy(escalate_on={Outcome.SCHEMA_INVALID, Outcome.INVALID_JSON})
    result = Extractor(Invoice, tiers=[zero(), zero(name="b")], policy=policy).extract(DOC)
    assert not result.ok and len(result.attempts) == 1


def test_raise_on_failure_carries_every_attempt(mock_api):
    mock_api.post("/chat/completions").mock(return_value=ok("nope"))
    ex = Extractor(Invoice, tiers=[zero(max_reasks=1)], raise_on_failure=True)
    with pytest.raises(ExtractionFailed) as info:
        ex.extract(DOC)
    assert [a.outcome for a in info.value.attempts] == [Outcome.INVALID_JSON] * 2


def test_only_forces_a_single_tier(mock_api):
    mock_api.post("/chat/completions").mock(return_value=ok())
    ex = Extractor(Invoice, tiers=[zero(), zero(name="other")])
    result = ex.extract(DOC, only="other")
    assert result.tier == "other" and [a.tier for a in result.attempts] == ["other"]


# -- transient failures ----------------------------------------------------------------------


def test_429_retry_after_is_waited_out(mock_api, sleeps):
    limited = httpx.Response(
        429, json=error_body("slow down", "rate_limit_exceeded"), headers={"retry-after": "7"}
    )
    mock_api.post("/chat/completions").mock(side_effect=[limited, ok()])
    result = Extractor(Invoice, tiers=[zero()]).extract(DOC)
    assert sleeps == [7.0]
    assert [a.outcome for a in result.attempts] == [Outcome.RATE_LIMITED, Outcome.OK]
    assert result.attempts[0].status_code == 429


def test_500_twice_then_200(mock_api, sleeps):
    err = httpx.Response(500, json=error_body("boom", None, "server_error"))
    mock_api.post("/chat/completions").mock(side_effect=[err, err, ok()])
    result = Extractor(Invoice, tiers=[zero()]).extract(DOC)
    assert result.ok
    assert [a.outcome for a in result.attempts] == [
        Outcome.API_ERROR,
        Outcome.API_ERROR,
        Outcome.OK,
    ]
    assert len(sleeps) == 2 and 0 < sleeps[0] < sleeps[1]


# -- usage and cost --------------------------------------------------------------------------


def test_usage_and_cost_sum_across_attempts_and_tiers(mock_api):
    bad = ok("{", usage=(1000, 100, 0))
    mock_api.post("/chat/completions").mock(side_effect=[bad, bad, ok(usage=(2000, 200, 1000))])
    tiers = [zero(max_reasks=1), FineTuned(model="ft:gpt-4o-mini-2024-07-18:acme::abc123", base_url=BASE_URL, mode="tools")]  # fmt: skip
    result = Extractor(Invoice, tiers=tiers).extract(DOC)
    assert result.tier == "fine_tuned"
    assert result.usage.prompt_tokens == 4000 and result.usage.completion_tokens == 400
    base = (1000 * 0.15 + 100 * 0.60) / 1e6  # gpt-4o-mini per attempt
    ft = (1000 * 0.30 + 1000 * 0.15 + 200 * 1.20) / 1e6  # fine-tuned: 2x base, cached half
    assert result.attempts[0].cost_usd == pytest.approx(base)
    assert result.attempts[2].cost_usd == pytest.approx(ft)
    assert result.cost_usd == pytest.approx(2 * base + ft)


def test_unknown_price_is_none_not_zero(mock_api):
    mock_api.post("/chat/completions").mock(return_value=ok())
    result = Extractor(Invoice, tiers=[zero(model="mystery-model")]).extract(DOC)
    assert result.attempts[0].cost_usd is None and result.cost_usd is None


# -- modes and schema adaptation ---------------------------------------------------------------


def test_fine_tuned_sends_strict_adapted_schema(mock_api):
    from typing import Annotated

    from pydantic import BaseModel, Field

    class Tagged(BaseModel):
        code: Annotated[str, Field(min_length=2, pattern=r"^[A-Z]+$")]
        amount: Annotated[float, Field(ge=0)]

    route = mock_api.post("/chat/completions").mock(
        return_value=ok(None, content=json.dumps({"code": "a", "amount": 1}))
    )
    tier = FineTuned(model="ft:gpt-4o-mini-2024-07-18:acme::x", base_url=BASE_URL, max_reasks=0)
    result = Extractor(Tagged, tiers=[tier]).extract("code a amount 1")
    fmt = bodies(route)[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    sent = json.dumps(fmt)
    for keyword in ("minLength", "pattern", "minimum"):
        assert keyword not in sent
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    # ... and validation still happens client-side with the full model
    assert result.attempts[0].outcome is Outcome.SCHEMA_INVALID


def test_a_local_tier_asks_for_strict_json_schema(mock_api, monkeypatch):
    """The bundled server (llama.cpp's own) honours response_format json_schema, grammar-
    constrained: local tiers take OpenAI's structured-outputs path, with no tool definition."""
    monkeypatch.setenv("EXTRACTKIT_LOCAL_URL", BASE_URL)  # any running OpenAI-compatible server
    route = mock_api.post("/chat/completions").mock(return_value=ok(None, content=json.dumps(GOOD)))
    result = Extractor(Invoice, tiers=[ZeroShot(model="local", base_url="local")]).extract(DOC)
    assert result.ok
    [body] = bodies(route)
    assert "tools" not in body and "tool_choice" not in body
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["additionalProperties"] is False
    assert body["max_tokens"] > 0
    # llama.cpp turns `format: date` into grammar (YYYY-MM-DD): kept for the local server, so the
    # 135M model cannot answer "August 3, 2014" (re-asked); dropped for OpenAI, which rejects it
    assert {"type": "string", "format": "date"} in fmt["json_schema"]["schema"]["properties"]["date"]["anyOf"]
    hosted = BoundTier(zero(mode="json_schema"), Invoice).response_format
    assert hosted is not None and {"type": "string"} in hosted["json_schema"]["schema"]["properties"]["date"]["anyOf"]


def test_json_object_schema_mode_is_gone_and_says_what_to_use(tmp_path):
    """Only llama-cpp-python's server needed json_object + schema (and it honours tools); every
    server the README names honours json_schema."""
    from extractkit import ConfigError
    from extractkit._config import build_tiers, parse_config

    with pytest.raises(ConfigError, match=r"json_object_schema.*removed.*'tools'.*'json_schema'"):
        zero(mode="json_object_schema")
    cfg = {"schema": "m:C", "tiers": [{"kind": "zero_shot", "model": "m", "mode": "json_object_schema"}]}
    with pytest.raises(ConfigError, match=r"tiers\.0: .*json_object_schema.*removed"):
        build_tiers(parse_config(cfg, root=tmp_path))


@pytest.mark.parametrize("mode", ["tools", "json", "json_schema"])
def test_requests_and_reasks_are_instructors_own(mock_api, mode):
    """extractkit runs the attempt loop itself on instructor's handlers for the mode: what it sends
    (each document's request, and the re-ask after a failed answer) is what those handlers build,
    including modes where the schema goes into each document's prompt (json)."""
    import instructor
    from instructor.v2 import Provider, mode_registry

    tools = mode == "tools"

    def answer(values):
        return ok(values) if tools else ok(None, content=json.dumps(values))

    bad = {**GOOD, "total": "n/a"}
    route = mock_api.post("/chat/completions").mock(side_effect=[answer(bad), answer(GOOD), answer(GOOD)])
    ex = Extractor(Invoice, tiers=[zero(mode=mode, max_reasks=1)])
    docs = [DOC, DOC.replace("Invoice 7", "Invoice 8")]
    assert [ex.extract(d).ok for d in docs] == [True, True]
    sent = bodies(route)

    bound = ex._bound["zero_shot"]
    imode = {"tools": instructor.Mode.TOOLS, "json_schema": instructor.Mode.JSON_SCHEMA}.get(mode, instructor.Mode.JSON)
    handlers = mode_registry.get_handlers(Provider.OPENAI, imode)
    expected = []
    for doc in docs:
        base = {"messages": bound.messages(doc), "model": "gpt-4o-mini", "temperature": 0.0, "max_tokens": bound.max_tokens}
        expected.append(handlers.request_handler(response_model=bound.response_model, kwargs=base)[1])
    first, reask, second = sent
    for body, want in ((first, expected[0]), (second, expected[1])):
        assert body["messages"] == want["messages"]
        if tools:
            assert body["tools"] == want["tools"] and body["tool_choice"] == want["tool_choice"]
    if mode == "json":  # instructor puts the schema into the system prompt of every document
        assert '"issuer"' in second["messages"][0]["content"]
    # the re-ask: instructor's handler applied to the first request and its failed answer
    from openai.types.chat import ChatCompletion
    from pydantic import ValidationError

    from extractkit._grounding import grounding_source

    failed = ChatCompletion.model_validate(completion(bad) if tools else completion(None, content=json.dumps(bad)))
    with grounding_source(DOC), pytest.raises(ValidationError) as error:
        bound.response_model.model_validate_json(json.dumps(bad))
    want = handlers.reask_handler(kwargs=expected[0], response=failed, exception=error.value)
    assert reask["messages"] == json.loads(json.dumps(want["messages"]))


@pytest.mark.parametrize("mode", ["tools", "json"])
def test_a_response_without_choices_ends_the_tier_and_escalates(mock_api, mode):
    empty = httpx.Response(200, json={**completion(GOOD), "choices": []})
    answer = ok() if mode == "tools" else ok(None, content=json.dumps(GOOD))
    mock_api.post("/chat/completions").mock(side_effect=[empty, answer])
    tiers = [zero(mode=mode, max_reasks=2), zero(mode=mode, name="second")]
    result = Extractor(Invoice, tiers=tiers).extract(DOC)
    assert result.ok and result.tier == "second"
    first = result.attempts[0]
    assert (first.outcome, first.error) == (Outcome.INVALID_JSON, "the response has no choices")
    assert len(result.attempts) == 2  # no re-ask of an answer that is not there


def test_a_reask_instructor_cannot_write_ends_the_tier_with_the_reason(mock_api):
    import dataclasses

    mock_api.post("/chat/completions").mock(return_value=ok({"issuer": "ACME Tools Ltd", "total": "n/a"}))
    ex = Extractor(Invoice, tiers=[zero(max_reasks=2)])
    bound = ex._bound["zero_shot"]

    def broken(**_):
        raise KeyError("messages")

    bound.handlers = dataclasses.replace(bound.handlers, reask_handler=broken)
    result = ex.extract(DOC)
    [a] = result.attempts
    assert a.outcome is Outcome.SCHEMA_INVALID and "(no re-ask: KeyError: 'messages')" in a.error


# -- context budget ------------------------------------------------------------------------------


def test_document_longer_than_context_is_not_sent(mock_api):
    route = mock_api.post("/chat/completions").mock(return_value=ok())
    # long_documents = "refuse" (the default "chunk" splits it: tests/test_chunk_chain.py)
    tier = zero(model="local", context_window=1024, max_output_tokens=256, long_documents="refuse")
    result = Extractor(Invoice, tiers=[tier]).extract(DOC + "filler " * 2000)
    assert route.call_count == 0
    assert [a.outcome for a in result.attempts] == [Outcome.CONTEXT_OVERFLOW]
    assert "exceeds the 1024-token context" in result.attempts[0].error


def test_tokens_are_counted_only_when_the_bytes_could_overflow(mock_api, monkeypatch):
    """A prompt has at most one token per UTF-8 byte: a document that fits by that bound is sent
    without tokenizing; one whose bytes exceed the window is counted, and sent when it fits."""
    import extractkit._steps as llm

    route = mock_api.post("/chat/completions").mock(return_value=ok())
    counted = []
    real = llm.count_request_tokens
    monkeypatch.setattr(llm, "count_request_tokens", lambda *a, **k: counted.append(1) or real(*a, **k))
    tier = zero(model="local", context_window=2048, max_output_tokens=256)
    ex = Extractor(Invoice, tiers=[tier])
    assert ex.extract(DOC).ok and counted == []
    long = DOC + "invoice line item " * 400  # ~7,300 bytes, ~1,200 tokens
    assert len(long.encode()) > 2048
    result = ex.extract(long)
    assert result.ok and counted and route.call_count == 2


def test_reask_is_trimmed_to_stay_inside_the_context(mock_api):
    runaway = '{"issuer": "' + "ACME " * 700  # a long broken answer, as a small model gives
    route = mock_api.post("/chat/completions").mock(side_effect=[ok(runaway), ok()])
    tier = zero(model="local", context_window=2048, max_output_tokens=300)
    result = Extractor(Invoice, tiers=[tier]).extract(DOC)
    assert result.ok, result.attempts
    second = bodies(route)[1]
    from extractkit._tokens import count_request_tokens

    assert count_request_tokens(second["messages"], second["tools"]) + 300 <= 2048
    assert "cut short to fit" in second["messages"][-1]["content"]


# -- sync / async parity -------------------------------------------------------------------------


def test_sync_and_async_give_the_same_result(mock_api):
    bad = ok({"issuer": "Nope Inc", "total": 1249.5})
    mock_api.post("/chat/completions").mock(side_effect=[bad, ok(), bad, ok()])
    ex = Extractor(Invoice, tiers=[zero()])
    sync = ex.extract(DOC)

    async def run():
        async with Extractor(Invoice, tiers=[zero()]) as ax:
            return await ax.aextract(DOC)

    asynced = asyncio.run(run())
    strip = lambda r: [(a.tier, a.number, a.outcome, a.usage, a.cost_usd) for a in r.attempts]  # noqa: E731
    assert sync.value == asynced.value and sync.tier == asynced.tier
    assert strip(sync) == strip(asynced)


def test_sync_calls_share_one_loop_and_client_until_closed(mock_api, monkeypatch):
    """extract() keeps its event loop and HTTP client between calls (no new connection per
    document), from any thread; close() ends them and a later call starts afresh."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import extractkit._chain as chain_mod

    mock_api.post("/chat/completions").mock(return_value=ok())
    made = []
    real = chain_mod.make_client
    monkeypatch.setattr(chain_mod, "make_client", lambda tier, **kw: made.append(real(tier, **kw)) or made[-1])
    ex = Extractor(Invoice, tiers=[zero()])
    assert all(ex.extract(DOC).ok for _ in range(3))
    with ThreadPoolExecutor(4) as pool:
        assert all(r.ok for r in pool.map(lambda _: ex.extract(DOC), range(8)))
    assert len(made) == 1 and not made[0].is_closed()
    thread = ex._loop_thread.thread
    ex.close()
    assert made[0].is_closed() and not thread.is_alive()
    assert ex.extract(DOC).ok and len(made) == 2  # a new loop, a new client
    second = ex._loop_thread.thread
    assert second is not thread and second.name == "extractkit-sync"
    with ex:
        pass
    assert made[1].is_closed() and not second.is_alive() and second not in threading.enumerate()


def test_a_collected_extractor_closes_its_sync_loop(mock_api):
    import gc
    import threading

    mock_api.post("/chat/completions").mock(return_value=ok())
    ex = Extractor(Invoice, tiers=[zero()])
    assert ex.extract(DOC).ok
    thread = ex._loop_thread.thread
    [client] = ex._clients[ex._loop_thread.loop].values()
    del ex
    gc.collect()
    assert not thread.is_alive() and client.is_closed() and thread not in threading.enumerate()


def test_extract_works_inside_a_running_event_loop_as_in_a_notebook(mock_api):
    mock_api.post("/chat/completions").mock(return_value=ok())
    ex = Extractor(Invoice, tiers=[zero()])

    async def cell():
        return ex.extract(DOC)

    assert asyncio.run(cell()).value == Invoice(**GOOD)
    ex.close()


def test_api_key_never_in_attempts_or_describe(mock_api, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    mock_api.post("/chat/completions").mock(return_value=ok())
    ex = Extractor(Invoice, tiers=[zero()])
    result = ex.extract(DOC)
    assert "sk-secret-123" not in repr(result) + json.dumps(ex.describe()) + repr(ex.tiers)


def test_the_model_that_answered_is_recorded(mock_api):
    body = completion(GOOD, model="gpt-4o-mini-2024-07-18")
    body["system_fingerprint"] = "fp_44709d6fcb"
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=body))
    [a] = Extractor(Invoice, tiers=[zero()]).extract(DOC).attempts
    assert (a.model, a.served_model, a.fingerprint) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "fp_44709d6fcb")


def test_a_provider_that_leaves_out_fields_still_parses(mock_api):
    """Responses are parsed by pydantic-core (fast); a body it rejects falls back to the SDK."""
    body = completion(GOOD)
    del body["object"], body["created"]
    body["choices"][0]["logprobs"] = "not an object"
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=body))
    result = Extractor(Invoice, tiers=[zero()]).extract(DOC)
    assert result.ok and result.value == Invoice(**GOOD)
