"""Issue 12, item 2: timeouts the event loop can enforce.

A hang, a slow drip and a huge body in the same batch, against a real server on 127.0.0.1: the
hang and the drip are recorded `timeout`, the huge body `response_too_large` (read no further
than the cap), and no attempt's recorded latency exceeds its timeout by more than a margin —
which only holds when nothing CPU-heavy (parsing or tokenising the huge answer) runs on the
event loop the timeouts fire on.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from extractkit import EscalationPolicy, Extractor, Outcome, RetryPolicy, ZeroShot

from .conftest import Invoice
from .fakes import BASE_URL, completion
from .loop_server import Reply, ScriptedServer, json_reply, user_text

GOOD = {"issuer": "ACME Tools Ltd", "total": 1249.5}
DOC = "ACME Tools Ltd\nInvoice 7\nTotal due: 1,249.50 EUR\n"
TIMEOUT_S = 1.0
MARGIN_S = 1.0  # generous: a shared 2-core machine; the old code overshot by 10+ s
HUGE_BYTES = 10 * 1024 * 1024  # the 10 MB answer: not JSON, so the old code re-asked it


def _huge_body() -> bytes:
    # tool-call arguments that are 10 MB of one letter: invalid JSON, and the worst case for a
    # BPE tokenizer (the old code counted its tokens on the event loop before the re-ask)
    return json.dumps(completion("x" * HUGE_BYTES)).encode()


def _script(huge: bytes):
    def chunks():
        for i in range(0, len(huge), 64 * 1024):
            yield huge[i : i + 64 * 1024]

    def script(body: dict) -> Reply:
        text = user_text(body)
        if "HANG" in text:
            return Reply(hang=True)
        if "DRIP" in text:  # a byte every 0.2 s: each socket read is quick, the whole never ends
            return Reply(body=json.dumps(completion(GOOD)).encode(), drip_s=0.2)
        if "HUGE" in text:
            return Reply(chunks=chunks)  # chunked: no Content-Length to refuse it by
        return json_reply(completion(GOOD))

    return script


async def _watch_loop(stop: asyncio.Event) -> float:
    """The longest the event loop went without running this task (beyond its 20 ms sleep)."""
    worst = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.02)
        worst = max(worst, time.perf_counter() - t0 - 0.02)
    return worst


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_hang_drip_and_huge_body_in_one_batch_are_recorded_within_the_timeout(transport):
    with ScriptedServer(_script(_huge_body())) as server:
        tier = ZeroShot(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test",
                        timeout_s=TIMEOUT_S, max_reasks=1, transport=transport)  # fmt: skip
        policy = EscalationPolicy(retry=RetryPolicy(max_attempts=2, initial_delay_s=0.05, max_delay_s=0.1))
        ex = Extractor(Invoice, tiers=[tier], policy=policy)
        docs = {name: f"{DOC}{name}\n" for name in ("HANG", "HUGE", "DRIP", "OK")}
        stop = asyncio.Event()
        watcher = asyncio.create_task(_watch_loop(stop))
        try:
            results = await asyncio.gather(*(ex.aextract(d) for d in docs.values()))
        finally:
            stop.set()
            await ex.aclose()
        lag = await watcher
    got = {name: [a.outcome for a in r.attempts] for name, r in zip(docs, results, strict=True)}
    assert got == {
        "HANG": [Outcome.TIMEOUT, Outcome.TIMEOUT],  # a hang is recorded as what it is, and retried
        "HUGE": [Outcome.RESPONSE_TOO_LARGE],  # its own outcome: not retried, not re-asked
        "DRIP": [Outcome.TIMEOUT, Outcome.TIMEOUT],  # a total deadline, not a per-read one
        "OK": [Outcome.OK],
    }
    latencies = {name: [a.latency_s for a in r.attempts] for name, r in zip(docs, results, strict=True)}
    assert all(t <= TIMEOUT_S + MARGIN_S for ts in latencies.values() for t in ts), latencies
    assert "no complete response within the 1 s timeout" in results[0].attempts[0].error
    huge = results[1].attempts[0]
    assert huge.status_code == 200 and "4194304-byte cap" in huge.error
    assert lag < MARGIN_S, f"the event loop stalled for {lag:.2f} s"


class _CountingBody(httpx.AsyncByteStream):
    """A body of 1,000 chunks of 64 KiB that counts how many the client pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    async def __aiter__(self):
        for _ in range(1000):
            self.pulled += 1
            yield b"x" * 65536


async def test_reading_stops_at_the_cap(mock_api):
    body = _CountingBody()
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, stream=body))
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)
    async with Extractor(Invoice, tiers=[tier], max_response_bytes=1024 * 1024) as ex:
        result = await ex.aextract(DOC)
    assert [a.outcome for a in result.attempts] == [Outcome.RESPONSE_TOO_LARGE]
    assert body.pulled <= 17  # 1 MiB / 64 KiB + the chunk that crossed the cap; the body is 64 MiB
    assert "1048576-byte cap" in result.attempts[0].error


@pytest.mark.parametrize("status", [500, 400])
async def test_an_error_body_is_capped_too(mock_api, sleeps, status):
    """The SDK reads an error response's body itself before raising: the cap applies there too."""
    body = _CountingBody()
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(status, stream=body))
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)
    async with Extractor(Invoice, tiers=[tier], max_response_bytes=1024 * 1024) as ex:
        result = await ex.aextract(DOC)
    [a] = result.attempts  # not retried, whatever the status
    assert (a.outcome, a.status_code) == (Outcome.RESPONSE_TOO_LARGE, status)
    assert body.pulled <= 17 and sleeps == []


def test_a_declared_content_length_over_the_cap_is_refused_before_reading(mock_api):
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, content=b"x" * 5000))
    result = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)],
                       max_response_bytes=1000).extract(DOC)  # fmt: skip
    [a] = result.attempts
    assert (a.outcome, a.status_code) == (Outcome.RESPONSE_TOO_LARGE, 200)
    assert "read stopped at 0 bytes" in a.error
    assert result.outcome is Outcome.RESPONSE_TOO_LARGE and "response_too_large" in result.error


def test_max_response_bytes_must_be_positive():
    from extractkit import ConfigError

    with pytest.raises(ConfigError, match="max_response_bytes"):
        Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)], max_response_bytes=0)


async def test_a_large_failed_answer_is_quoted_back_bounded_and_off_the_loop(mock_api):
    """3 MB of one letter as tool arguments (under the cap): invalid JSON, so it is re-asked. The
    re-ask quotes at most max_tokens tokens of it, and neither parsing nor tokenising it stalls
    the event loop (the old code tokenised all of it there, twice: seconds)."""
    runaway = "x" * 3_000_000
    route = mock_api.post("/chat/completions").mock(
        side_effect=[httpx.Response(200, json=completion(runaway)), httpx.Response(200, json=completion(GOOD))]
    )
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=1)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_loop(stop))
    async with Extractor(Invoice, tiers=[tier]) as ex:
        try:
            result = await ex.aextract(DOC)
        finally:
            stop.set()
        max_tokens = ex._bound["zero_shot"].max_tokens
    lag = await watcher
    assert [a.outcome for a in result.attempts] == [Outcome.INVALID_JSON, Outcome.OK]
    reask = json.loads(route.calls[1].request.content)["messages"][-1]["content"]
    quote = reask.split("(cut short to fit the output bound):\n", 1)[1].split("\nErrors:", 1)[0]
    assert 0 < len(quote) <= max_tokens * 8 and set(quote) == {"x"}
    assert lag < MARGIN_S, f"the event loop stalled for {lag:.2f} s"
