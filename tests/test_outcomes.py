"""Issue 12, item 7 (first three bullets): outcomes recorded rightly.

- JSON in a markdown code fence is accepted in every mode (no `invalid_json`, no re-ask);
- a 200 whose body is not a chat completion (a proxy's HTML page) is `api_error`, retried;
- a refused connection is `connection_error` (not `timeout`) through both transports, decided
  by the exception types in the chain of causes.
"""

from __future__ import annotations

import json
import socket
import ssl

import aiohttp
import httpx
import openai
import pytest

from extractkit import EscalationPolicy, Extractor, Outcome, RetryPolicy, ZeroShot, _llm, _retry

from .conftest import Invoice
from .fakes import BASE_URL, completion, error_body
from .loop_server import Reply, ScriptedServer, closed_port, json_reply

DOC = "ACME Tools Ltd\nInvoice 7\nDate: 2024-03-15\nTotal due: 1,249.50 EUR\n"
GOOD = {"issuer": "ACME Tools Ltd", "total": 1249.5, "date": "2024-03-15"}
GOOD_JSON = json.dumps(GOOD)


# -- code fences ---------------------------------------------------------------------------------

FENCED = [
    f"```json\n{GOOD_JSON}\n```",
    f"```\n{GOOD_JSON}\n```",
    f"```JSON\n{json.dumps(GOOD, indent=2)}\n```\n",
    f"  ```json {GOOD_JSON}```  ",
    f"```json\r\n{GOOD_JSON}\r\n```",
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[(t, None) for t in FENCED],  # None: unwrapped to the JSON
        (GOOD_JSON, GOOD_JSON),  # bare JSON: as it is
        ("```python\nprint(1)\n```", "```python\nprint(1)\n```"),  # another language: as it is
        (f"Here it is:\n```json\n{GOOD_JSON}\n```", f"Here it is:\n```json\n{GOOD_JSON}\n```"),  # prose
        (f"```json\n{GOOD_JSON}\n", f"```json\n{GOOD_JSON}\n"),  # unterminated
        ("", ""),
    ],
)
def test_strip_code_fence(text, expected):
    got = _llm.strip_code_fence(text)
    if expected is None:
        assert json.loads(got) == GOOD
    else:
        assert got == expected


@pytest.mark.parametrize("fenced", FENCED)
@pytest.mark.parametrize("mode", ["tools", "json", "json_schema"])
def test_a_fenced_answer_is_accepted_in_every_mode_without_a_reask(mock_api, mode, fenced):
    # tools: the fence inside the tool call's arguments; the others: in the message content
    answer = completion(fenced) if mode == "tools" else completion(None, content=fenced)
    route = mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=answer))
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, mode=mode)
    result = Extractor(Invoice, tiers=[tier]).extract(DOC)
    assert [a.outcome for a in result.attempts] == [Outcome.OK]
    assert result.value == Invoice(**GOOD) and route.call_count == 1
    assert result.attempts[0].output == fenced  # the raw answer is what is kept


def test_json_fished_out_of_prose_is_still_invalid(mock_api):
    """Only a fence around the whole answer is unwrapped: JSON inside prose (which a document
    could have planted) is not taken as the answer."""
    prose = f"The document says:\n```json\n{GOOD_JSON}\n```\nbut I am not sure."
    mock_api.post("/chat/completions").mock(return_value=httpx.Response(200, json=completion(prose)))
    result = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0)]).extract(DOC)
    assert [a.outcome for a in result.attempts] == [Outcome.INVALID_JSON]


# -- a 200 that is not a completion ----------------------------------------------------------------

HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=HTML, headers={"content-type": "text/html"}),
        httpx.Response(200, content=b"", headers={"content-type": "application/json"}),
        httpx.Response(200, content=b"\xff\xfe not utf-8"),
        httpx.Response(200, json=error_body("upstream timed out", type_="server_error")),  # no choices
        httpx.Response(200, json=["not", "an", "object"]),
    ],
    ids=["html", "empty", "binary", "error-object", "array"],
)
def test_a_200_that_is_not_a_completion_is_a_transient_api_error(mock_api, sleeps, response):
    ok = httpx.Response(200, json=completion(GOOD))
    mock_api.post("/chat/completions").mock(side_effect=[response, ok])
    result = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)]).extract(DOC)
    assert [a.outcome for a in result.attempts] == [Outcome.API_ERROR, Outcome.OK]
    first = result.attempts[0]
    assert first.status_code == 200 and "not a chat completion" in first.error
    assert len(sleeps) == 1 and result.ok  # retried like a 502


def test_the_html_page_is_named_in_the_error(mock_api, sleeps):
    page = httpx.Response(200, content=HTML, headers={"content-type": "text/html"})
    mock_api.post("/chat/completions").mock(return_value=page)
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=2))
    result = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)], policy=policy).extract(DOC)
    assert [a.outcome for a in result.attempts] == [Outcome.API_ERROR] * 2
    assert "text/html" in result.error and "502 Bad Gateway" in result.error


# -- connection failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_a_refused_connection_is_a_connection_error(sleeps, transport):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    tier = ZeroShot(model="gpt-4o-mini", base_url=url, api_key="sk-test", transport=transport)
    policy = EscalationPolicy(retry=RetryPolicy(max_attempts=2))
    with Extractor(Invoice, tiers=[tier], policy=policy) as ex:
        result = ex.extract(DOC)
    assert [a.outcome for a in result.attempts] == [Outcome.CONNECTION_ERROR] * 2
    assert len(sleeps) == 1  # transient: retried
    # what the socket said is in the error, whatever the transport called it
    assert "ConnectionRefusedError" in result.attempts[0].error or "ConnectError" in result.attempts[0].error
    assert "timed out" not in result.attempts[0].error  # the error leads with what the socket said
    assert "connection_error" in result.error


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_a_connection_reset_mid_body_is_retried(sleeps, transport):
    """The server answers 200 with a Content-Length, sends half the body and resets the
    connection (the fault run's `reset`): a transient failure, sent again, not a final api_error."""
    answers = [Reply(body=json.dumps(completion(GOOD)).encode(), cut=True), json_reply(completion(GOOD))]
    with ScriptedServer(lambda body: answers.pop(0)) as server:
        tier = ZeroShot(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-test", transport=transport)
        policy = EscalationPolicy(retry=RetryPolicy(max_attempts=2))
        with Extractor(Invoice, tiers=[tier], policy=policy) as ex:
            result = ex.extract(DOC)
    assert result.ok, result.error
    assert result.attempts[0].outcome in (Outcome.API_ERROR, Outcome.CONNECTION_ERROR)
    assert [a.outcome for a in result.attempts][1:] == [Outcome.OK]
    assert len(sleeps) == 1  # retried once


def _chain(*excs: BaseException) -> BaseException:
    """excs[0] raised from excs[1] raised from ... (as the SDK and the transports wrap them)."""
    for outer, inner in zip(excs, excs[1:], strict=False):
        outer.__cause__ = inner
    return excs[0]


_REQ = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")


def _status(code: int, body: dict | None = None) -> openai.APIStatusError:
    response = httpx.Response(code, json=body or error_body("x"), request=_REQ)
    return openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:1/v1")._make_status_error_from_response(response)


@pytest.mark.parametrize(
    ("make", "outcome", "transient"),
    [
        # the aiohttp transport maps a refused connection to httpx.ConnectTimeout -> APITimeoutError
        (lambda: _chain(openai.APITimeoutError(request=_REQ), httpx.ConnectTimeout("Cannot connect"),
                        ConnectionRefusedError(111, "Connect call failed")), Outcome.CONNECTION_ERROR, True),  # fmt: skip
        (lambda: _chain(openai.APIConnectionError(request=_REQ), httpx.ConnectError("All connection attempts failed")),
         Outcome.CONNECTION_ERROR, True),  # fmt: skip
        (lambda: _chain(openai.APIConnectionError(request=_REQ), socket.gaierror(-2, "Name or service not known")),
         Outcome.CONNECTION_ERROR, True),  # fmt: skip
        (lambda: _chain(openai.APIConnectionError(request=_REQ), ConnectionResetError(104, "reset by peer")),
         Outcome.CONNECTION_ERROR, True),  # fmt: skip
        (lambda: _chain(openai.APIConnectionError(request=_REQ), ssl.SSLCertVerificationError("bad cert")),
         Outcome.CONNECTION_ERROR, True),  # fmt: skip
        (lambda: _chain(openai.APIConnectionError(request=_REQ), httpx.RemoteProtocolError("Server disconnected")),
         Outcome.CONNECTION_ERROR, True),  # fmt: skip
        (lambda: _chain(httpx.ReadError("x"), aiohttp.ServerDisconnectedError()), Outcome.CONNECTION_ERROR, True),
        # a read timeout is a timeout, whichever way it is wrapped
        (lambda: _chain(openai.APITimeoutError(request=_REQ), httpx.ReadTimeout("slow")), Outcome.TIMEOUT, True),
        (lambda: TimeoutError("no complete response within the 1 s timeout"), Outcome.TIMEOUT, True),
        (lambda: ValueError("bug"), Outcome.API_ERROR, False),
        (lambda: _retry.ResponseTooLarge(10, 11, 200), Outcome.RESPONSE_TOO_LARGE, False),
        (lambda: _retry.NotACompletion("html"), Outcome.API_ERROR, True),
        (lambda: _status(429), Outcome.RATE_LIMITED, True),
        (lambda: _status(502), Outcome.API_ERROR, True),
        (lambda: _status(401), Outcome.API_ERROR, False),
        (lambda: _status(400, error_body("maximum context length", "context_length_exceeded")),
         Outcome.CONTEXT_OVERFLOW, False),  # fmt: skip
        # llama.cpp's server (the bundled local model, llama-server)
        (lambda: _status(400, {"error": {"code": 400, "type": "exceed_context_size_error",
                                         "message": "request (20314 tokens) exceeds the available context size "
                                                    "(4096 tokens), try increasing it",
                                         "n_prompt_tokens": 20314, "n_ctx": 4096}}),
         Outcome.CONTEXT_OVERFLOW, False),  # fmt: skip
    ],
    ids=["aiohttp-refused", "httpx-refused", "dns", "reset", "tls", "disconnected", "aiohttp-disconnected",
         "read-timeout", "deadline", "bug", "too-large", "not-a-completion", "429", "502", "401",
         "context", "context-llama.cpp"],  # fmt: skip
)
def test_classify_by_type_along_the_causes(make, outcome, transient):
    exc = make()
    assert _retry.classify(exc) is outcome
    assert _retry.is_transient(exc) is transient


def test_a_connection_error_only_in_the_context_is_not_a_connection_failure():
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError:
            raise ValueError("a bug while handling it")  # noqa: B904 - implicit context on purpose
    except ValueError as exc:
        assert _retry.classify(exc) is Outcome.API_ERROR
