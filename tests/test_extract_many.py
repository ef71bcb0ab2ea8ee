"""Issue 14, section 6: ``Extractor.extract_many`` / ``aextract_many`` run the CLI's batch runner over
texts and paths: results as they finish, each tied to its input; the batch's rate limiter and
resume; one broken input is an error result, never the end of the others. No network."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

import extractkit
from extractkit import Extractor, ProviderUnreachable, RetryPolicy, ZeroShot
from extractkit._chain import EscalationPolicy
from extractkit.batch import RateLimiter

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, completion, echo_invoice_responder
from .test_batch_edges import text_pdf


def echo(request: httpx.Request) -> httpx.Response:
    status, body, headers = echo_invoice_responder(json.loads(request.content))
    return httpx.Response(status, json=body, headers=headers)


def doc(i: int) -> str:
    return f"From: Company {i} Ltd\nTotal: {i}.00\n"


def extractor(ledger: Path | None = None, **kw) -> Extractor:
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=1))
    return Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0)], ledger=ledger,
                     policy=policy, **kw)  # fmt: skip


def sent_documents(route) -> list[str]:  # type: ignore[no-untyped-def]
    return [json.loads(c.request.content)["messages"][-1]["content"] for c in route.calls]


def test_every_input_gets_a_result_tied_to_it_and_broken_ones_do_not_stop_the_others(mock_api, tmp_path):
    mock_api.post("/chat/completions").mock(side_effect=echo)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.txt").write_text(doc(10))
    (folder / "sub" / "y.pdf").write_bytes(text_pdf("From: Pdf Ltd Total: 11.00"))
    (folder / "photo.gif").write_bytes(b"\x89PNG")  # skipped inside a folder, as the CLI skips it
    page, empty, photo = tmp_path / "p.html", tmp_path / "empty.txt", tmp_path / "photo.gif"
    page.write_text("<p>From: Page Co</p><p>Total: 3.00</p>")
    empty.write_text("")
    photo.write_bytes(b"\x89PNG")
    inputs = [doc(1), page, empty, 42, folder, "   ", photo, doc(2)]
    with extractor() as ex:
        items = list(ex.extract_many(inputs, concurrency=3))
    assert all(isinstance(i, extractkit.ItemResult) for i in items)
    by_index: dict[int, list] = {}
    for item in items:
        by_index.setdefault(item.index, []).append(item)
    assert sorted(by_index) == list(range(len(inputs)))  # every input has its result(s)
    assert all(it.input is inputs[it.index] for it in items)
    (first,) = by_index[0]
    assert first.ok and first.path is None and first.value == Invoice(issuer="Company 1 Ltd", total=1.0)
    assert first.result is not None and first.result.value is first.value and first.attempts == 1
    (html,) = by_index[1]
    assert html.ok and html.path == str(page) and html.value == Invoice(issuer="Page Co", total=3.0)
    errors = {i: (by_index[i][0].status, by_index[i][0].outcome) for i in (2, 3, 5, 6)}
    assert errors == {2: ("error", "empty"), 3: ("error", "invalid_input"), 5: ("error", "empty"),
                      6: ("error", "unsupported")}  # fmt: skip
    assert "int" in by_index[3][0].error and str(photo) in by_index[6][0].error
    in_folder = sorted(by_index[4], key=lambda it: it.path or "")
    assert [it.path for it in in_folder] == [str(folder / "sub" / "y.pdf"), str(folder / "x.txt")]
    assert all(it.ok and it.input is folder for it in in_folder)
    assert by_index[7][0].value == Invoice(issuer="Company 2 Ltd", total=2.0)


async def test_results_come_as_they_finish_not_in_input_order(mock_api):
    """The first input's answer is held back until the second input's result has been received:
    an implementation that yields in input order never gets there (and times out)."""
    second_received = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        if "Company 1 Ltd" in request.content.decode():
            await second_received.wait()
        return echo(request)

    mock_api.post("/chat/completions").mock(side_effect=answer)
    order = []

    async def consume() -> None:
        async with extractor() as ex:
            async for item in ex.aextract_many([doc(1), doc(2)], concurrency=2):
                order.append(item.index)
                second_received.set()

    await asyncio.wait_for(consume(), timeout=60)
    assert order == [1, 0]


def test_resume_sends_only_what_the_ledger_does_not_have(mock_api, tmp_path):
    """As the batch: a final result of this chain is reused, a transient failure is sent again."""
    failing = {doc(3)}

    def answer(request: httpx.Request) -> httpx.Response:
        if any(d.split("\n")[0] in request.content.decode() for d in failing):
            return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})
        return echo(request)

    route = mock_api.post("/chat/completions").mock(side_effect=answer)
    db = tmp_path / "l.sqlite3"
    files = []
    for i in (1, 2, 3):
        files.append(tmp_path / f"d{i}.txt")
        files[-1].write_text(doc(i))
    with extractor(db) as ex:
        first = {it.index: it for it in ex.extract_many([*files, doc(4)])}
        assert [first[i].status for i in range(4)] == ["ok", "ok", "failed", "ok"]
        assert first[2].outcome == "api_error" and route.call_count == 4
        failing.clear()
        second = {it.index: it for it in ex.extract_many([*files, doc(4)])}
    assert route.call_count == 5  # only the transient failure was sent again
    assert [second[i].resumed for i in range(4)] == [True, True, False, True]
    assert all(it.ok for it in second.values())
    assert second[0].value == first[0].value and isinstance(second[0].value, Invoice)
    assert second[0].result is None and second[2].result is not None
    # each call is a recorded batch run; files are recorded with their paths
    runs = db_rows(db, "SELECT kind, status, n_documents, n_ok, n_failed, n_resumed FROM runs ORDER BY id")
    assert runs == [("batch", "done", 4, 3, 1, 0), ("batch", "done", 4, 4, 0, 3)]
    assert sorted(r[0] for r in db_rows(db, "SELECT DISTINCT path FROM document_paths")) == sorted(map(str, files))
    with extractor(db) as ex:  # force: everything again
        assert all(not it.resumed for it in ex.extract_many(files, force=True))
    assert route.call_count == 8


def test_identical_content_is_sent_once(mock_api, tmp_path):
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(doc(1))
    b.write_text(doc(1))
    with extractor(tmp_path / "l.sqlite3") as ex:
        items = list(ex.extract_many([a, b, doc(2), doc(2)], concurrency=4))
    assert route.call_count == 2 and len(items) == 4 and all(it.ok for it in items)
    assert sum(it.cost_usd or 0 for it in items) == sum(it.result.cost_usd or 0 for it in items if it.result)


@pytest.mark.parametrize("given", [{"rpm": 600}, {"tpm": 1_000_000}, {}])
def test_rpm_and_tpm_pace_this_calls_requests_with_the_batch_limiter(mock_api, monkeypatch, given):
    mock_api.post("/chat/completions").mock(side_effect=echo)
    acquired: list[tuple[RateLimiter, int]] = []
    real = RateLimiter.acquire

    async def acquire(self: RateLimiter, tokens: int) -> None:
        acquired.append((self, tokens))
        await real(self, tokens)

    monkeypatch.setattr(RateLimiter, "acquire", acquire)
    own = RateLimiter()  # the extractor's own limiter (the CLI sets one): used when none is given
    ex = extractor(limiter=own)
    with ex:
        assert all(it.ok for it in ex.extract_many([doc(i) for i in range(5)], **given))
        ex.extract(doc(9))  # a later call is not paced by extract_many's limiter
    assert len(acquired) == 6
    many = {lim for lim, _ in acquired[:5]}
    if given:
        (limiter,) = many
        assert limiter is not own and (limiter.rpm or limiter.tpm)
        assert (limiter.rpm is not None) == ("rpm" in given) and (limiter.tpm is not None) == ("tpm" in given)
    else:
        assert many == {own}
    assert acquired[5][0] is own


def test_an_unreachable_provider_ends_the_iteration_after_the_finished_results(mock_api, tmp_path, sleeps):
    def answer(request: httpx.Request) -> httpx.Response:
        if "Company 1 Ltd" in request.content.decode():
            return echo(request)
        raise httpx.ConnectError("connection refused", request=request)

    mock_api.post("/chat/completions").mock(side_effect=answer)
    got: list = []
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=1, unreachable_after=2))
    ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0)],
                   ledger=tmp_path / "l.sqlite3", policy=policy)  # fmt: skip
    with ex, pytest.raises(ProviderUnreachable) as info:
        for item in ex.extract_many([doc(1), *(doc(i) for i in range(2, 30))], concurrency=1):
            got.append(item)
    assert got[0].index == 0 and got[0].ok
    assert "unattempted" in str(info.value) and info.value.url.startswith(BASE_URL)
    assert len(got) < 29
    (status,) = db_rows(tmp_path / "l.sqlite3", "SELECT status FROM runs")[0]
    assert status == "provider_unreachable"


def test_leaving_the_loop_early_stops_sending(mock_api, tmp_path):
    """Only the first document is answered; the others hang until the loop is left, which cancels
    them: no document is started after that."""

    async def answer(request: httpx.Request) -> httpx.Response:
        text = request.content.decode()
        if "Company 1 Ltd" not in text and "Company 5000 Ltd" not in text:
            await asyncio.Event().wait()  # never answered
        return echo(request)

    route = mock_api.post("/chat/completions").mock(side_effect=answer)
    db = tmp_path / "l.sqlite3"
    with extractor(db) as ex:
        for item in ex.extract_many((doc(i) for i in range(1, 1000)), concurrency=2):
            assert item.ok and item.index == 0
            break
        sent = route.call_count  # the iterator is closed: its hanging requests are cancelled
        assert ex.extract(doc(5000)).ok  # the extractor is still usable
    assert sent <= 3  # the first, and what the two workers had started
    assert route.call_count == sent + 1
    assert db_rows(db, "SELECT kind, status FROM runs ORDER BY id")[0] == ("batch", "interrupted")


def test_no_inputs_yield_nothing_and_record_no_run(mock_api, tmp_path):
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    db = tmp_path / "l.sqlite3"
    with extractor(db) as ex:
        assert list(ex.extract_many([])) == []
        with pytest.raises(TypeError, match="iterable"):
            list(ex.extract_many(doc(1)))  # type: ignore[arg-type]
    assert not route.called
    assert db_rows(db, "SELECT count(*) FROM runs") == [(0,)]


def test_without_a_ledger_nothing_is_recorded_or_resumed(mock_api):
    route = mock_api.post("/chat/completions").mock(side_effect=echo)
    with extractor() as ex:
        assert all(it.ok and not it.resumed for it in ex.extract_many([doc(1), doc(2)]))
        assert all(it.ok and not it.resumed for it in ex.extract_many([doc(1), doc(2)]))
    assert route.call_count == 4


async def test_async_and_sync_forms_agree(mock_api, tmp_path):
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(
        200, json=completion({"issuer": "Company 1 Ltd", "total": 1.0})))  # fmt: skip
    inputs = [doc(1), tmp_path / "missing.txt"]

    def key(items: list) -> list[tuple]:
        return sorted((i.index, i.status, i.outcome, i.value) for i in items)

    async with extractor() as ex:
        got = [item async for item in ex.aextract_many(inputs)]
    with extractor() as ex:
        want = await asyncio.to_thread(lambda: list(ex.extract_many(inputs)))
    assert key(got) == key(want)
    assert key(got)[1][1:3] == ("error", "missing")
