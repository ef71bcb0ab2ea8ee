"""The fake Batch API (tests/fakes_batch.py) as the real openai client sees it: upload, create,
poll, download, cancel; the scripted endings (failed, expired, cancelled, a partial error file,
output out of order) and the upload checks. No internet: base_url is the fake on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any, Final

import openai
import pytest

from .fakes import FakeLLMServer, completion, echo_invoice_responder, error_body
from .fakes_batch import BatchPlan, FakeBatchServer, Reply, ScriptedResponder

URL: Final = "/v1/chat/completions"


def request_lines(n: int, model: str = "gpt-4o-mini", prefix: str = "doc") -> list[dict[str, Any]]:
    return [
        {"custom_id": f"{prefix}-{i}", "method": "POST", "url": URL,
         "body": {"model": model, "messages": [{"role": "user", "content": f"<document>From: Acme {i}\n"
                                                 f"Total: {i}.00"}]}}
        for i in range(n)
    ]  # fmt: skip


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


_OPEN: list[openai.OpenAI] = []


def sdk(base_url: str, api_key: str = "k") -> openai.OpenAI:
    """The real client against a fake (closed after the test)."""
    c = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=10)
    _OPEN.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.fixture
def server() -> Iterator[FakeBatchServer]:
    with FakeBatchServer(echo_invoice_responder, api_key="sk-test") as s:
        yield s


@pytest.fixture
def client(server: FakeBatchServer) -> openai.OpenAI:
    return sdk(server.base_url, "sk-test")


def submit(client: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    f = client.files.create(file=("wave.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=URL, completion_window="24h")


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def test_upload_create_poll_download(server: FakeBatchServer, client: openai.OpenAI) -> None:
    lines = request_lines(5)
    f = client.files.create(file=io.BytesIO(jsonl(lines)), purpose="batch")
    assert (f.purpose, f.bytes) == ("batch", len(jsonl(lines)))
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).content == jsonl(lines)  # the input file reads back as sent
    batch = client.batches.create(input_file_id=f.id, endpoint=URL, completion_window="24h",
                                  metadata={"wave": "1"})  # fmt: skip
    seen = [batch.status]
    while seen[-1] not in ("completed", "failed", "expired", "cancelled"):
        server.step()
        seen.append(client.batches.retrieve(batch.id).status)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    done = client.batches.retrieve(batch.id)
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
    assert done.error_file_id is None and done.completed_at is not None and done.metadata == {"wave": "1"}
    out = read_lines(client, done.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(x["custom_id"] for x in lines)
    assert [x["custom_id"] for x in out] != [x["custom_id"] for x in lines]  # out of order
    by_id = {x["custom_id"]: x for x in out}
    first = by_id["doc-3"]
    assert first["error"] is None and first["response"]["status_code"] == 200
    assert first["id"].startswith("batch_req_") and first["response"]["request_id"]
    args = json.loads(
        first["response"]["body"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    )
    assert args == {"issuer": "Acme 3", "total": 3.0}  # the responder answered this line's body
    assert server.requests == [x["body"] for x in lines]  # each line's body, once, in input order
    assert [x.id for x in client.files.list(purpose="batch")] == [f.id]  # outputs are batch_output
    methods = [(m, p) for m, p, _ in server.calls]
    assert ("POST", "/v1/files") in methods and ("POST", "/v1/batches") in methods


def test_one_responder_drives_live_and_batch() -> None:
    """The same scripted responder answers a live request and a batch line identically."""
    body = request_lines(1)[0]["body"]
    with FakeLLMServer(echo_invoice_responder) as live, FakeBatchServer(echo_invoice_responder) as fake:
        c = sdk(live.base_url, "k")
        live_answer = c.chat.completions.create(**body).model_dump()
        b = sdk(fake.base_url, "k")
        batch = submit(b, request_lines(1))
        fake.finish()
        (line,) = read_lines(b, b.batches.retrieve(batch.id).output_file_id)
        assert (
            line["response"]["body"]["choices"][0]["message"]["tool_calls"]
            == (live_answer["choices"][0]["message"]["tool_calls"])
        )
        assert live.requests == fake.requests == [body]


def test_advance_on_poll_reaches_the_end_without_steps() -> None:
    with FakeBatchServer(echo_invoice_responder, advance_on_poll=1) as fake:
        c = sdk(fake.base_url, "k")
        batch = submit(c, request_lines(3))
        statuses = []
        for _ in range(10):
            statuses.append(c.batches.retrieve(batch.id).status)
            if statuses[-1] == "completed":
                break
        assert statuses == ["in_progress", "finalizing", "completed"]


def test_partial_error_file_from_the_responder() -> None:
    """Lines the responder fails (429, 500) are in the error file with their status and body."""

    def responder(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        text = body["messages"][0]["content"]
        if "Acme 1\n" in text:
            return 429, error_body("Rate limit reached", "rate_limit_exceeded", "requests"), {}
        if "Acme 2\n" in text:
            return 500, error_body("The server had an error", None, "server_error"), {}
        return 200, completion({"issuer": "x", "total": 1}), {}

    with FakeBatchServer(responder) as fake:
        c = sdk(fake.base_url, "k")
        batch = submit(c, request_lines(4))
        fake.finish()
        done = c.batches.retrieve(batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
        errors = {x["custom_id"]: x for x in read_lines(c, done.error_file_id)}
        assert {k: v["response"]["status_code"] for k, v in errors.items()} == {"doc-1": 429, "doc-2": 500}
        assert errors["doc-1"]["response"]["body"]["error"]["code"] == "rate_limit_exceeded"
        assert all(v["error"] is None for v in errors.values())
        assert sorted(x["custom_id"] for x in read_lines(c, done.output_file_id)) == ["doc-0", "doc-3"]


def test_expired_lines_never_run(server: FakeBatchServer, client: openai.OpenAI) -> None:
    server.plan(end="expired", run_lines=2)
    batch = submit(client, request_lines(5))
    server.finish()
    done = client.batches.retrieve(batch.id)
    assert done.status == "expired" and done.expired_at is not None
    assert len(read_lines(client, done.output_file_id)) == 2
    errors = read_lines(client, done.error_file_id)
    assert sorted(x["custom_id"] for x in errors) == ["doc-2", "doc-3", "doc-4"]
    assert all(x["response"] is None and x["error"]["code"] == "batch_expired" for x in errors)
    assert len(server.requests) == 2  # the expired lines were never answered


def test_failed_batch_has_errors_and_no_output(server: FakeBatchServer, client: openai.OpenAI) -> None:
    server.plan(
        BatchPlan(end="failed", errors=[{"code": "token_limit", "message": "queue full", "line": None}])
    )
    batch = submit(client, request_lines(2))
    server.step()
    done = client.batches.retrieve(batch.id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors is not None and done.errors.data is not None
    assert [e.code for e in done.errors.data] == ["token_limit"]
    assert done.output_file_id is None and done.error_file_id is None and server.requests == []


def test_endpoint_mismatch_fails_in_validation(server: FakeBatchServer, client: openai.OpenAI) -> None:
    f = client.files.create(file=("w.jsonl", jsonl(request_lines(1))), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    server.finish()
    done = client.batches.retrieve(batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    assert done.errors.data[0].code == "invalid_url"


def test_cancel_in_progress_keeps_partial_output(server: FakeBatchServer, client: openai.OpenAI) -> None:
    server.plan(run_lines=1)
    batch = submit(client, request_lines(3))
    server.step()  # validating -> in_progress
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    server.step()
    done = client.batches.retrieve(batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert [x["custom_id"] for x in read_lines(client, done.output_file_id)] == ["doc-0"]
    unrun = read_lines(client, done.error_file_id)
    assert sorted(x["custom_id"] for x in unrun) == ["doc-1", "doc-2"]
    assert {x["error"]["code"] for x in unrun} == {"batch_cancelled"}
    assert server.batch(1).history == ["validating", "in_progress", "cancelling", "cancelled"]
    with pytest.raises(openai.ConflictError):  # a finished batch cannot be cancelled
        server.plan()
        other = submit(client, request_lines(1, prefix="x"))
        server.finish(other.id)
        client.batches.cancel(other.id)


def test_cancel_unrun_lines_can_be_left_out(server: FakeBatchServer, client: openai.OpenAI) -> None:
    server.plan(run_lines=None, list_unrun=False)
    batch = submit(client, request_lines(2))
    client.batches.cancel(batch.id)  # still validating: nothing runs
    server.finish()
    done = client.batches.retrieve(batch.id)
    assert done.status == "cancelled"
    assert done.output_file_id is None and done.error_file_id is None and server.requests == []


def test_list_batches(server: FakeBatchServer, client: openai.OpenAI) -> None:
    ids = [submit(client, request_lines(1, prefix=f"p{i}")).id for i in range(3)]
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # newest first, all pages
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[:0:-1] and page.has_more


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        (request_lines(2) + [request_lines(1)[0]], "duplicate_custom_id"),
        (request_lines(1) + request_lines(1, model="gpt-4o", prefix="b"), "mixed_models"),
        ([dict(request_lines(1)[0], method="GET")], "invalid_method"),
        ([dict(request_lines(1)[0], url="/v1/nope")], "invalid_url"),
        ([dict(request_lines(1)[0], body={"messages": []})], "missing_model"),
        ([{"method": "POST", "url": URL, "body": {"model": "m"}}], "missing_custom_id"),
        (request_lines(4), "too_many_requests"),  # the fake's max_lines is 3 here
    ],
)
def test_upload_rejects_bad_files(lines: list[dict[str, Any]], code: str) -> None:
    with FakeBatchServer(echo_invoice_responder, max_lines=3) as fake:
        c = sdk(fake.base_url, "k")
        with pytest.raises(openai.BadRequestError) as info:
            c.files.create(file=("bad.jsonl", jsonl(lines)), purpose="batch")
        assert info.value.code == code
        assert fake.files == {}


def test_upload_rejects_oversized_files_and_wrong_keys() -> None:
    with FakeBatchServer(echo_invoice_responder, max_bytes=100, api_key="sk-right") as fake:
        c = sdk(fake.base_url, "sk-right")
        with pytest.raises(openai.BadRequestError, match="at most 100"):
            c.files.create(file=("big.jsonl", jsonl(request_lines(3))), purpose="batch")
        wrong = sdk(fake.base_url, "sk-wrong")
        with pytest.raises(openai.AuthenticationError):
            wrong.batches.list()
        with pytest.raises(openai.NotFoundError):
            c.batches.retrieve("batch_nope")


def test_async_client_and_a_planner() -> None:
    """The async client (what extractkit drives) and a planner deciding per batch."""

    def planner(no: int, lines: list[dict[str, Any]]) -> BatchPlan:
        return BatchPlan(end="expired", run_lines=len(lines) - 1) if no == 2 else BatchPlan()

    async def main(fake: FakeBatchServer) -> list[str]:
        c = openai.AsyncOpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        out = []
        for wave in range(2):
            f = await c.files.create(
                file=("w.jsonl", jsonl(request_lines(3, prefix=f"w{wave}"))), purpose="batch"
            )
            b = await c.batches.create(input_file_id=f.id, endpoint=URL, completion_window="24h")
            while b.status not in ("completed", "expired"):
                b = await c.batches.retrieve(b.id)
            text = (await c.files.content(b.error_file_id)).text if b.error_file_id else ""
            out.append(f"{b.status}:{len(text.splitlines())}")
        await c.close()
        return out

    with FakeBatchServer(echo_invoice_responder, advance_on_poll=1, planner=planner) as fake:
        assert asyncio.run(main(fake)) == ["completed:0", "expired:1"]


def test_one_script_answers_both_paths_in_the_same_order() -> None:
    """A ScriptedResponder replays its script per (document, model) to whichever fake asks."""
    bad = completion({"issuer": "Acme 0", "total": "abc"})
    good = completion({"issuer": "Acme 0", "total": 0.0})
    limited: Reply = (429, error_body("Rate limit reached", "rate_limit_exceeded", "requests"), {})

    def script() -> ScriptedResponder:
        return ScriptedResponder({
            ("Acme 0\n", "gpt-4o-mini"): [(200, bad, {}), (200, good, {})],
            ("Acme 1\n", "gpt-4o-mini"): [limited, (200, good, {})],
        })  # fmt: skip

    lines = request_lines(2)
    live_script, batch_script = script(), script()
    with FakeLLMServer(live_script) as live, FakeBatchServer(batch_script) as fake:
        c = sdk(live.base_url)
        live_seen = []
        for _ in range(2):
            for line in lines:
                try:
                    live_seen.append(c.chat.completions.create(**line["body"]).choices[0].message.tool_calls)
                except openai.RateLimitError:
                    live_seen.append("429")
        b = sdk(fake.base_url)
        batch_seen = []
        for wave in range(2):
            batch = submit(b, [dict(x, custom_id=f"{x['custom_id']}-w{wave}") for x in lines])
            fake.finish()
            done = b.batches.retrieve(batch.id)
            got = {x["custom_id"]: x for x in read_lines(b, done.output_file_id)}
            got.update(
                {x["custom_id"]: x for x in read_lines(b, done.error_file_id)} if done.error_file_id else {}
            )
            for x in lines:
                r = got[f"{x['custom_id']}-w{wave}"]["response"]
                batch_seen.append(
                    "429" if r["status_code"] == 429 else openai.types.chat.ChatCompletion.model_validate(
                        r["body"]).choices[0].message.tool_calls
                )  # fmt: skip
        assert live_seen == batch_seen
        assert live_seen[1] == "429" and live_seen[3] != "429"
        assert (
            live_script.calls
            == batch_script.calls
            == {("Acme 0\n", "gpt-4o-mini"): 2, ("Acme 1\n", "gpt-4o-mini"): 2}
        )
        fast = ScriptedResponder({("doc-7", "m"): [(200, good, {})]}, marker=lambda body: body.get("user"))
        assert fast({"model": "m", "user": "doc-7"})[0] == 200 and fast({"model": "m", "user": "x"})[0] == 400
        unscripted = request_lines(1, model="gpt-4o")
        with pytest.raises(openai.BadRequestError, match="no scripted reply"):
            c.chat.completions.create(**unscripted[0]["body"])
