"""Issue 12, item 3 (the detection half): stop sending when the provider is unreachable.

The Extractor counts consecutive connection failures per base URL across all its concurrent
calls; at ``RetryPolicy.unreachable_after`` it raises ``ProviderUnreachable`` (naming the URL)
instead of sending, in that call and every later one, until it is closed. A call that made
attempts is recorded first with the transient final outcome ``connection_error`` (a rerun retries
it); a call stopped before its first request records nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx
import pytest

from extractkit import (
    ConfigError,
    EscalationPolicy,
    Extractor,
    Outcome,
    ProviderUnreachable,
    RetryPolicy,
    ZeroShot,
    _retry,
)
from extractkit.ledger import Ledger

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, completion
from .loop_server import ScriptedServer, closed_port, json_reply

DOC = "ACME Tools Ltd\nInvoice {i}\nTotal due: 1,249.50 EUR\n"
GOOD = {"issuer": "ACME Tools Ltd", "total": 1249.5}


def _tier(url: str, **kw) -> ZeroShot:
    kw.setdefault("transport", "aiohttp")  # the batch's transport (it called a refused connection a timeout)
    return ZeroShot(model="gpt-4o-mini", base_url=url, api_key="sk-test", **kw)


async def test_a_down_provider_stops_a_concurrent_batch_fast_and_names_the_url(tmp_path):
    n, concurrency, documents = 4, 3, 10
    url = f"http://127.0.0.1:{closed_port()}/v1"
    ledger = Ledger(tmp_path / "ledger.db")
    policy = EscalationPolicy(retry=RetryPolicy(unreachable_after=n))  # default backoff: 0.5 s, 1 s, 2 s
    ex = Extractor(Invoice, tiers=[_tier(url)], policy=policy, ledger=ledger)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int):
        async with gate:
            return await ex.aextract(DOC.format(i=i))

    outcomes = await asyncio.gather(*(one(i) for i in range(documents)), return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, ProviderUnreachable)]
    assert len(errors) == documents, outcomes  # every call, including those that never sent
    assert all(e.url == url and e.failures >= n and url in str(e) for e in errors)
    attempts = db_rows(ledger.path, "SELECT outcome FROM attempts")
    assert {o for (o,) in attempts} == {"connection_error"}
    assert len(attempts) <= n + concurrency  # was: every document's retries (40 here); counted, not timed
    # the documents whose attempts tripped it are recorded, transient (a rerun retries them); the
    # ones stopped before their first request are not in the ledger at all
    rows = db_rows(ledger.path, "SELECT status, outcome, n_attempts FROM extractions")
    assert rows and all(r[:2] == ("failed", "connection_error") and r[2] >= 1 for r in rows)
    assert sum(r[2] for r in rows) == len(attempts) and len(rows) <= concurrency
    # a later call raises at once, sending nothing (no new attempt)
    with pytest.raises(ProviderUnreachable, match=url):
        await ex.aextract(DOC.format(i=99))
    assert len(db_rows(ledger.path, "SELECT id FROM attempts")) == len(attempts)
    await ex.aclose()
    ledger.close()


def test_the_issues_case_four_documents_one_after_another(tmp_path, sleeps):
    """4 documents, 2 tiers on the same down URL, default policy: the old code made 32 attempts
    and named no URL. Now the first document's 6 attempts open the breaker (its tier 1's 4,
    then 2 of tier 2's) and the other 3 documents send nothing."""
    url = f"http://127.0.0.1:{closed_port()}/v1"
    ledger = Ledger(tmp_path / "ledger.db")
    ex = Extractor(Invoice, tiers=[_tier(url), _tier(url, name="second")], ledger=ledger)
    raised = []
    for i in range(4):
        with pytest.raises(ProviderUnreachable) as info:
            ex.extract(DOC.format(i=i))  # the sync path raises it too
        raised.append(info.value)
    assert [e.failures for e in raised] == [6, 6, 6, 6] and raised[0].url == url
    assert f"{url} did not answer 6 consecutive requests" in str(raised[0])
    assert "ConnectionRefusedError" in str(raised[0])  # what the socket said
    rows = db_rows(ledger.path, "SELECT tier, outcome FROM attempts ORDER BY started_at")
    assert rows == [("zero_shot", "connection_error")] * 4 + [("second", "connection_error")] * 2
    assert db_rows(ledger.path, "SELECT outcome FROM extractions") == [("connection_error",)]
    ex.close()
    ledger.close()


def test_any_answer_resets_the_count(mock_api, sleeps):
    refused = httpx.ConnectError("refused")
    answers = [refused, refused, httpx.Response(500, json={}), refused, refused,
               httpx.Response(200, json=completion(GOOD))]  # fmt: skip
    mock_api.post("/chat/completions").mock(side_effect=answers)
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=6, unreachable_after=3))
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)
    result = Extractor(Invoice, tiers=[tier], policy=policy).extract(DOC.format(i=1))
    assert result.ok
    assert [a.outcome.value for a in result.attempts] == [
        "connection_error", "connection_error", "api_error", "connection_error", "connection_error", "ok",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("events", "open_after"),
    [
        ("fff", True),
        ("ff", False),
        ("ffaf", False),  # an answer (any status) resets
        ("fftf", True),  # a timeout counts neither way
        ("fffa", True),  # once open it stays open (nothing is sent to answer)
    ],
)
def test_breaker_table(events, open_after):
    breaker = _retry.CircuitBreaker(3)
    url = "http://x/v1"
    for e in events:
        if breaker.is_open(url):
            break
        if e == "f":
            with contextlib.suppress(ProviderUnreachable):
                breaker.failed(url, ConnectionRefusedError(111, "refused"))
        elif e == "a":
            breaker.answered(url)
    assert breaker.is_open(url) is open_after
    assert not breaker.is_open("http://other/v1")  # per base URL
    breaker.reset()
    assert not breaker.is_open(url)


async def test_close_resets_the_breaker():
    """A socket bound but not listening refuses connections; the same port then starts serving.
    The open breaker keeps the extractor from trying until it is closed."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=1, unreachable_after=2))
    ex = Extractor(Invoice, tiers=[_tier(url)], policy=policy)
    try:
        result = await ex.aextract(DOC.format(i=1))  # the first failure: an ordinary failed result
        assert [a.outcome for a in result.attempts] == [Outcome.CONNECTION_ERROR]
        with pytest.raises(ProviderUnreachable):
            await ex.aextract(DOC.format(i=2))  # the second opens it
        with ScriptedServer(lambda body: json_reply(completion(GOOD)), sock=sock) as server:
            with pytest.raises(ProviderUnreachable):
                await ex.aextract(DOC.format(i=3))  # still open: nothing sent
            assert server.requests == []
            await ex.aclose()
            result = await ex.aextract(DOC.format(i=4))
            assert result.ok and len(server.requests) == 1
    finally:
        await ex.aclose()
        sock.close()


async def test_the_breaker_stopping_a_call_between_tiers_records_why(tmp_path):
    """Tier a answers (badly) on a live server, tier b's URL is down. The call whose tier b was
    not sent because the breaker was already open is recorded with a not-sent connection_error
    attempt, so its final outcome is transient, not tier a's validation failure."""
    down = f"http://127.0.0.1:{closed_port()}/v1"
    ledger = Ledger(tmp_path / "ledger.db")
    with ScriptedServer(lambda body: json_reply(completion("{not json"))) as server:
        tiers = [_tier(server.base_url, name="a", max_reasks=0), _tier(down, name="b")]
        policy = EscalationPolicy(retry=RetryPolicy(max_attempts=1, unreachable_after=1))
        ex = Extractor(Invoice, tiers=tiers, policy=policy, ledger=ledger)
        for i in range(2):
            with pytest.raises(ProviderUnreachable, match=down):
                await ex.aextract(DOC.format(i=i))
        # the breaker is per URL: tier a alone still runs
        alone = await ex.aextract(DOC.format(i=3), only="a")
        assert [a.outcome for a in alone.attempts] == [Outcome.INVALID_JSON]
        await ex.aclose()
    rows = db_rows(ledger.path, "SELECT e.outcome, a.tier, a.outcome, a.error FROM extractions e "
                                "JOIN attempts a ON a.extraction_id = e.id WHERE e.forced_tier IS NULL "
                                "ORDER BY e.id, a.number, a.tier")  # fmt: skip
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("connection_error", "a", "invalid_json"), ("connection_error", "b", "connection_error"),
        ("connection_error", "a", "invalid_json"), ("connection_error", "b", "connection_error"),
    ]  # fmt: skip
    assert not rows[1][3].startswith("not sent") and rows[3][3].startswith("not sent: provider unreachable")
    ledger.close()


def test_unreachable_after_must_be_positive():
    with pytest.raises(ConfigError, match="unreachable_after"):
        RetryPolicy(unreachable_after=0)
