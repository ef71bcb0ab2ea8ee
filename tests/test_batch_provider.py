"""BatchProvider (extractkit/batch/_provider.py) against the stateful fake Batch API
(tests/fakes_batch.py) and a scripted raw server (tests/loop_server.py) for what a provider can
do wrong: every terminal state, a partial error file, output out of order, cancel, HTML with
status 200, no files endpoint (404), a body over the cap, resets and hangs, a key echoed back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from extractkit import ZeroShot
from extractkit._errors import BatchError, BatchFailed, BatchUnsupported, ProviderRefused, ProviderUnreachable
from extractkit._llm import make_client
from extractkit._redact import REDACTED
from extractkit._retry import RetryPolicy
from extractkit.batch._provider import (
    ENDPOINT,
    METADATA_KEY,
    BatchProvider,
    check_readable,
    parse_results,
    request_counts,
    write_parts,
)

from .fakes import completion, echo_invoice_responder, error_body
from .fakes_batch import BadRequest, BatchPlan, FakeBatchServer
from .loop_server import Reply, ScriptedServer, closed_port, json_reply

KEY = "sk-batch-provider-test-key-0123456789"


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr("extractkit._retry.sleep", fake_sleep)
    return delays


def provider(base_url: str, *, timeout_s: float = 10.0, **kwargs: Any) -> BatchProvider:
    tier = ZeroShot(model="gpt-4o-mini", base_url=base_url, api_key=KEY, timeout_s=timeout_s)
    kwargs.setdefault("retry_policy", RetryPolicy(max_attempts=3, unreachable_after=3))
    return BatchProvider(make_client(tier), **kwargs)


def lines_file(tmp_path: Path, n: int, model: str = "gpt-4o-mini") -> tuple[Path, list[str]]:
    items = [
        ("t1", model, f"item-{i}", {"model": model, "messages": [{"role": "user", "content":
                                    f"<document>From: Acme {i}\nTotal: {i}.00"}]})
        for i in range(n)
    ]  # fmt: skip
    (part,) = write_parts(items, tmp_path)
    return part.path, part.item_ids


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def server() -> Iterator[FakeBatchServer]:
    with FakeBatchServer(echo_invoice_responder, api_key=KEY) as s:
        yield s


async def submit(p: BatchProvider, path: Path, job: str = "job-1") -> Any:
    fid = await p.upload(path)
    return await p.create(fid, job)


async def finished(p: BatchProvider, server: FakeBatchServer, batch_id: str) -> Any:
    server.finish(batch_id)
    return await p.retrieve(batch_id)


async def results(p: BatchProvider, batch: Any, sent: list[str]) -> Any:
    out = await p.download(batch.output_file_id) if batch.output_file_id else None
    err = await p.download(batch.error_file_id) if batch.error_file_id else None
    return parse_results(out, err, sent)


# -- the happy path and every terminal state -------------------------------------------------------


def test_upload_create_poll_download_out_of_order(server: FakeBatchServer, tmp_path: Path) -> None:
    path, ids = lines_file(tmp_path, 6)

    async def go() -> None:
        p = provider(server.base_url)
        batch = await submit(p, path, "job-abc")
        assert batch.status == "validating" and batch.metadata == {METADATA_KEY: "job-abc"}
        created = next(b for m, path_, b in server.calls if (m, path_) == ("POST", "/v1/batches"))
        assert created["endpoint"] == ENDPOINT and created["completion_window"] == "24h"
        server.step()
        assert (await p.retrieve(batch.id)).status == "in_progress"
        done = await finished(p, server, batch.id)
        assert done.status == "completed" and request_counts(done) == {
            "total": 6,
            "completed": 6,
            "failed": 0,
        }
        assert p.failure(done) is None
        raw = await p.download(done.output_file_id)
        order = [json.loads(x)["custom_id"] for x in raw.splitlines()]
        assert sorted(order) == sorted(ids) and order != ids  # the fake never keeps the input order
        res = parse_results(raw, None, ids)
        assert set(res.lines) == set(ids) and res.missing(ids) == [] and res.bad == 0
        three = res.lines["item-3"]
        assert three.answered
        args = json.loads(three.body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
        assert args == {"issuer": "Acme 3", "total": 3.0}  # matched by custom_id, not by position
        await p.client.close()

    run(go())


def test_partial_error_file(tmp_path: Path) -> None:
    def responder(body: dict[str, Any]) -> Any:
        text = body["messages"][0]["content"]
        if "Acme 1\n" in text:
            return 429, error_body("Rate limit reached", "rate_limit_exceeded", "requests"), {}
        if "Acme 2\n" in text:
            return 500, error_body("server error", None, "server_error"), {}
        return echo_invoice_responder(body)

    path, ids = lines_file(tmp_path, 4)
    with FakeBatchServer(responder) as server:

        async def go() -> None:
            p = provider(server.base_url)
            done = await finished(p, server, (await submit(p, path)).id)
            assert done.status == "completed" and done.error_file_id and done.output_file_id
            res = await results(p, done, ids)
            assert {i: r.status_code for i, r in res.lines.items()} == {
                "item-0": 200, "item-1": 429, "item-2": 500, "item-3": 200}  # fmt: skip
            assert res.lines["item-1"].body["error"]["code"] == "rate_limit_exceeded"
            await p.client.close()

        run(go())


def test_failed_batch_is_batch_failed_unless_a_limit(server: FakeBatchServer, tmp_path: Path) -> None:
    path, _ = lines_file(tmp_path, 2)
    server.plan(BatchPlan(end="failed", errors=[{"code": "invalid_json_line", "message": "line 2 is bad",
                                                 "line": 2}]))  # fmt: skip
    server.plan(
        BatchPlan(end="failed", errors=[{"code": "token_limit_exceeded", "message": "enqueued limit"}])
    )

    async def go() -> None:
        p = provider(server.base_url)
        first = await finished(p, server, (await submit(p, path, "a")).id)
        assert first.status == "failed" and first.output_file_id is None
        err = p.failure(first)
        assert isinstance(err, BatchFailed) and err.batch_id == first.id
        assert err.errors[0]["code"] == "invalid_json_line" and "line 2 is bad" in str(err)
        assert server.base_url.rstrip("/") in str(err)
        path2, _ = lines_file(tmp_path, 1)
        second = await finished(p, server, (await submit(p, path2, "b")).id)
        assert second.status == "failed" and p.failure(second) is None  # its lines go to the next wave
        await p.client.close()

    run(go())


def test_expired_batch_lists_unrun_lines(server: FakeBatchServer, tmp_path: Path) -> None:
    path, ids = lines_file(tmp_path, 5)
    server.plan(end="expired", run_lines=2)

    async def go() -> None:
        p = provider(server.base_url)
        done = await finished(p, server, (await submit(p, path)).id)
        assert done.status == "expired" and p.failure(done) is None
        res = await results(p, done, ids)
        answered = sorted(i for i, r in res.lines.items() if r.answered)
        expired = sorted(i for i, r in res.lines.items() if r.error_code == "batch_expired")
        assert answered == ["item-0", "item-1"] and expired == ["item-2", "item-3", "item-4"]
        assert all(res.lines[i].status_code is None for i in expired)
        await p.client.close()

    run(go())


@pytest.mark.parametrize("list_unrun", [True, False])
def test_cancel_partial_output(server: FakeBatchServer, tmp_path: Path, list_unrun: bool) -> None:
    path, ids = lines_file(tmp_path, 4)
    server.plan(BatchPlan(run_lines=1, list_unrun=list_unrun))

    async def go() -> None:
        p = provider(server.base_url)
        batch = await submit(p, path)
        server.step()  # in_progress
        cancelling = await p.cancel(batch.id)
        assert cancelling.status == "cancelling"
        done = await finished(p, server, batch.id)
        assert done.status == "cancelled"
        res = await results(p, done, ids)
        assert [i for i, r in res.lines.items() if r.answered] == ["item-0"]
        if list_unrun:
            assert {res.lines[i].error_code for i in ids[1:]} == {"batch_cancelled"}
        else:  # in neither file: not run
            assert res.missing(ids) == ids[1:]
        await p.client.close()

    run(go())


def test_find_batch_after_a_lost_create(server: FakeBatchServer, tmp_path: Path) -> None:
    path, _ = lines_file(tmp_path, 1)

    async def go() -> None:
        p = provider(server.base_url)
        fids = [await p.upload(path, f"part-{i}.jsonl") for i in range(3)]
        made = [await p.create(f, f"job-{i}") for i, f in enumerate(fids[:2])]
        found = await p.find_batch(fids[0], since=made[0].created_at)
        assert found is not None and found.id == made[0].id
        assert await p.find_batch(fids[2]) is None  # uploaded, never created
        assert await p.find_file("part-2.jsonl") == fids[2]
        assert await p.find_file("nope.jsonl") is None
        await p.client.close()

    run(go())


def test_find_batch_pages_and_stops(
    server: FakeBatchServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("extractkit.batch._provider.LIST_PAGE", 2)
    path, _ = lines_file(tmp_path, 1)

    async def go() -> None:
        p = provider(server.base_url)
        first = await submit(p, path, "old")
        for i in range(5):
            await submit(p, path, f"new-{i}")
        found = await p.find_batch(first.input_file_id)
        assert found is not None and found.id == first.id  # three pages back
        lists = [c for c in server.calls if c[:2] == ("GET", "/v1/batches")]
        assert len(lists) == 3
        await p.client.close()

    run(go())


# -- what a provider can do wrong ------------------------------------------------------------------


class NoFiles(FakeBatchServer):
    """A provider (a gateway) that serves chat completions only."""

    def handle(self, method: str, path: str, query: Any, body: Any) -> Any:
        if path.startswith("/v1/files") or path.startswith("/v1/batches"):
            raise BadRequest("Not Found", "not_found", 404)
        return super().handle(method, path, query, body)


def test_no_files_endpoint_is_batch_unsupported(tmp_path: Path) -> None:
    path, _ = lines_file(tmp_path, 1)
    with NoFiles(echo_invoice_responder) as server:

        async def go() -> None:
            p = provider(server.base_url)
            with pytest.raises(BatchUnsupported) as info:
                await p.upload(path)
            assert info.value.url == server.base_url and server.base_url in str(info.value)
            assert 'via = "live"' in str(info.value)
            await p.client.close()

        run(go())


def test_wrong_key_is_provider_refused(tmp_path: Path) -> None:
    path, _ = lines_file(tmp_path, 1)
    with FakeBatchServer(echo_invoice_responder, api_key="sk-the-right-key-000000") as server:

        async def go() -> None:
            p = provider(server.base_url)
            with pytest.raises(ProviderRefused) as info:
                await p.upload(path)
            assert info.value.url == server.base_url and KEY not in str(info.value)
            with pytest.raises(ProviderRefused):  # nothing more is sent there
                await p.retrieve("batch_1")
            assert len(server.calls) == 0  # refused before the handler: a 401 on the first call only
            await p.client.close()

        run(go())


class EchoesKey(FakeBatchServer):
    """Error messages and batch errors that quote the API key back."""

    def handle(self, method: str, path: str, query: Any, body: Any) -> Any:
        if (method, path) == ("POST", "/v1/batches") and body.get("metadata", {}).get(METADATA_KEY) == "echo":
            raise BadRequest(f"invalid request made with key {KEY}", "invalid_request", 400)
        return super().handle(method, path, query, body)


def test_an_echoed_key_is_never_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = lines_file(tmp_path, 1)
    with EchoesKey(echo_invoice_responder) as server:
        server.plan(
            BatchPlan(end="failed", errors=[{"code": "invalid_request", "message": f"key {KEY} refused"}])
        )

        async def go() -> None:
            p = provider(server.base_url)
            fid = await p.upload(path)
            with pytest.raises(BatchError) as info:
                await p.create(fid, "echo")
            assert KEY not in str(info.value) and REDACTED in str(info.value)
            assert (
                info.value.__cause__ is None and info.value.status_code == 400
            )  # the SDK's error is not chained
            failed = await finished(p, server, (await p.create(fid, "ok")).id)
            err = p.failure(failed)
            assert err is not None and KEY not in str(err) and KEY not in json.dumps(err.errors)
            assert REDACTED in json.dumps(err.errors)
            await p.client.close()

        run(go())
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


BATCH = {"id": "batch_1", "object": "batch", "endpoint": ENDPOINT, "input_file_id": "file_1",
         "completion_window": "24h", "status": "in_progress", "created_at": 1_700_000_000,
         "request_counts": {"total": 1, "completed": 0, "failed": 0}}  # fmt: skip


def test_html_with_status_200_is_retried(_no_sleep: list[float]) -> None:
    replies = iter([Reply(body=b"<html><body>Bad gateway</body></html>", content_type="text/html"),
                    json_reply(BATCH)])  # fmt: skip
    with ScriptedServer(lambda body: next(replies)) as server:

        async def go() -> None:
            p = provider(server.base_url)
            got = await p.retrieve("batch_1")
            assert got.status == "in_progress"
            await p.client.close()

        run(go())
    assert len(_no_sleep) == 1  # one retry, after a backoff


def test_html_with_status_200_every_time_is_a_batch_error() -> None:
    page = Reply(body=b"<html><body>Please sign in</body></html>", content_type="text/html")
    with ScriptedServer(lambda body: page) as server:

        async def go() -> None:
            p = provider(server.base_url)
            with pytest.raises(BatchError, match="not a batch.*sign in") as info:
                await p.retrieve("batch_1")
            assert "3 tries" in str(info.value)
            await p.client.close()

        run(go())


def test_download_over_the_cap_is_refused(server: FakeBatchServer, tmp_path: Path) -> None:
    path, _ = lines_file(tmp_path, 20)

    async def go() -> None:
        p = provider(server.base_url, max_download_bytes=1000)
        done = await finished(p, server, (await submit(p, path)).id)
        with pytest.raises(BatchError, match="1000-byte cap"):
            await p.download(done.output_file_id)
        await p.client.close()

    run(go())


def test_chunked_huge_body_is_abandoned_at_the_cap() -> None:
    def endless() -> Iterator[bytes]:
        for _ in range(10_000):
            yield b"x" * 65536

    with ScriptedServer(
        lambda body: Reply(chunks=endless, content_type="application/octet-stream")
    ) as server:

        async def go() -> None:
            p = provider(server.base_url, max_download_bytes=1 << 20)
            with pytest.raises(BatchError, match="cap"):
                await p.download("file_1")
            await p.client.close()

        run(go())
        assert server.sent and server.sent[0] < 64 << 20  # abandoned long before the 655 MB


def test_control_answer_over_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("extractkit.batch._provider.CONTROL_BYTES", 4096)
    big = dict(BATCH, metadata={"pad": "y" * 8000})
    with ScriptedServer(lambda body: json_reply(big)) as server:

        async def go() -> None:
            p = provider(server.base_url)
            with pytest.raises(BatchError, match="cap"):
                await p.retrieve("batch_1")
            await p.client.close()

        run(go())


def test_reset_mid_body_is_retried() -> None:
    replies = iter([Reply(body=json.dumps(BATCH).encode(), cut=True), json_reply(BATCH)])
    with ScriptedServer(lambda body: next(replies)) as server:

        async def go() -> None:
            p = provider(server.base_url)
            assert (await p.retrieve("batch_1")).id == "batch_1"
            await p.client.close()

        run(go())


def test_hang_is_bounded_by_the_deadline() -> None:
    with ScriptedServer(lambda body: Reply(hang=True)) as server:

        async def go() -> None:
            p = provider(server.base_url, timeout_s=0.3)
            with pytest.raises(BatchError, match="3 tries"):
                await p.retrieve("batch_1")
            await p.client.close()

        run(go())


def test_nobody_listening_is_provider_unreachable() -> None:
    async def go() -> None:
        p = provider(f"http://127.0.0.1:{closed_port()}/v1")
        with pytest.raises(ProviderUnreachable) as info:
            await p.retrieve("batch_1")
        assert not isinstance(info.value, ProviderRefused) and info.value.failures == 3
        await p.client.close()

    run(go())


# -- the files, written and read -------------------------------------------------------------------


def test_write_parts_one_model_per_file_within_the_limits(tmp_path: Path) -> None:
    body = {"model": "m1", "messages": [{"role": "user", "content": "é" * 50}]}
    items = [("t1", "m1", f"a{i}", body) for i in range(7)] + [("t2", "m2", f"b{i}", dict(body, model="m2"))
                                                              for i in range(2)]  # fmt: skip
    items.insert(3, items.pop())  # interleaved tiers
    parts = write_parts(items, tmp_path, max_lines=3)
    assert [(p.tier, len(p.item_ids)) for p in parts] == [("t1", 3), ("t2", 2), ("t1", 3), ("t1", 1)]
    for p in parts:
        data = p.path.read_bytes()
        assert p.n_bytes == len(data)
        lines = [json.loads(x) for x in data.splitlines()]
        assert [x["custom_id"] for x in lines] == p.item_ids
        assert {x["body"]["model"] for x in lines} == {p.model} and {x["url"] for x in lines} == {ENDPOINT}
    one = len(parts[0].path.read_bytes()) // 3
    by_bytes = write_parts(items[:4], tmp_path / ".", max_bytes=2 * one + 1)
    assert [len(p.item_ids) for p in by_bytes] == [2, 1, 1]  # measured as written
    assert all(p.n_bytes <= 2 * one + 1 for p in by_bytes)
    with pytest.raises(BatchError, match="part limit"):
        write_parts(items[:1], tmp_path, max_bytes=10)


def test_parse_results_matching_and_bad_lines() -> None:
    ok = {
        "id": "r1",
        "custom_id": "a",
        "response": {"status_code": 200, "body": completion({"x": 1})},
        "error": None,
    }
    err = {
        "id": "r2",
        "custom_id": "a",
        "response": {"status_code": 500, "body": error_body("x")},
        "error": None,
    }
    other = {"id": "r3", "custom_id": "zzz", "response": {"status_code": 200, "body": {}}, "error": None}
    expired = {
        "id": "r4",
        "custom_id": "b",
        "response": None,
        "error": {"code": "batch_expired", "message": "m"},
    }
    out = (json.dumps(other) + "\n" + json.dumps(ok) + "\nnot json\n\n").encode()
    res = parse_results(out, (json.dumps(err) + "\n" + json.dumps(expired)).encode(), ["a", "b", "c"])
    assert res.lines["a"].answered and res.lines["b"].error_code == "batch_expired"
    assert (res.bad, res.unknown, res.missing(["a", "b", "c"])) == (1, 1, ["c"])
    html = b"<html>\n<body>oops</body>\n</html>"
    with pytest.raises(BatchError, match="not JSON Lines"):
        check_readable(html, parse_results(html, None, ["a"]), "output")


def test_sdk_types_are_what_the_fake_serves(server: FakeBatchServer) -> None:
    """Guard: the openai SDK still parses the fake's batch as a Batch (the provider relies on it)."""
    c = openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
    try:
        assert c.batches.list().data == []
    finally:
        c.close()
