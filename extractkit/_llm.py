"""One tier's call: instructor for the schema-bound call and the re-ask, plus what it lacks.

instructor's handlers for the tier's mode (``instructor.v2.mode_registry``) build the
schema-bound request, parse and validate each answer and write the re-ask message; the attempt
loop is ``TierCall.run``, so each attempt is recorded as it happens. Around the HTTP call
(``TierCall._create``) extractkit adds what instructor and the openai SDK do not do:

- an output-token bound on every request, and a per-attempt timeout that is a *total* deadline
  around sending, reading and parsing (the SDK's timeout is per socket read: a slow drip evades
  it), so a recorded latency never exceeds ``timeout_s`` by more than scheduling slack;
- a cap on the response body, read incrementally and abandoned at the cap
  (``response_too_large``);
- nothing CPU-heavy on the event loop: a large body is parsed and validated in a worker thread,
  token counting of long text runs in one too, and a re-ask quotes at most ``max_tokens`` tokens
  of the failed answer (cut by characters before it is tokenised);
- JSON wrapped in a markdown code fence accepted in every mode (the fence is stripped);
- the schema adapted for strict json_schema (keywords strict mode rejects removed);
- re-asks kept inside the context window (the quoted failed answer is trimmed), and a context
  overflow recorded as its own outcome, never retried as if transient;
- transient HTTP failures retried with backoff that honours Retry-After (``_retry``), and the
  circuit breaker told about every connection failure and every answer;
- an ``Attempt`` for every HTTP call, its outcome set from the parse.

(instructor's patched ``create`` runs the same handlers, but per call it re-inspects the
response model six times and copies usage models: a third of the client's CPU per response at
batch concurrency, see BENCHMARKS.md.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar

import httpx
import openai
from instructor.core.exceptions import AsyncValidationError, IncompleteOutputException, ResponseParsingError
from openai import NotGiven, Omit
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from . import _redact, _retry
from ._errors import ProviderUnreachable
from ._grounding import grounding_source
from ._pricing import Price, cost, lookup_price
from ._results import Attempt, Outcome, Usage
from ._tiers import BoundTier
from ._tokens import (
    PER_MESSAGE_OVERHEAD,
    count_request_tokens,
    count_tokens,
    message_text,
    truncate_to_tokens,
)

OUTPUT_KEEP_CHARS = 4000  # how much of a model answer an Attempt keeps
TOKEN_SAFETY = 1.15  # margin on offline token estimates (the server's tokenizer may differ)
ERROR_KEEP_CHARS = 1500
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # default cap on a response body (Extractor(max_response_bytes=))
OFFLOAD_BYTES = 64 * 1024  # a body or answer larger than this is parsed in a worker thread
# a re-ask quotes at most max_tokens tokens of the failed answer (a longer one was never a valid
# answer: it would have ended in `truncated`); the answer is first cut to this many characters
# per token, so tokenising it is bounded too (tiktoken is superlinear on long runs of one letter)
QUOTE_CHARS_PER_TOKEN = 8

T = TypeVar("T")

# instructor logs every failed validation at ERROR; for extractkit those are recorded outcomes,
# not errors. A NullHandler keeps them off stderr unless the application configures logging.
logging.getLogger("instructor").addHandler(logging.NullHandler())

# what instructor re-asks on (as its own retry loop does)
_PARSE_ERRORS = (ValidationError, json.JSONDecodeError, AsyncValidationError, ResponseParsingError)


class _TierStop(Exception):
    """Raised inside the create function to end the tier (already recorded as an Attempt)."""


# the body cap of the call in progress, read by the HTTP client's response hook (an error body is
# read by the SDK itself before it raises: the hook caps that read too)
_BODY_CAP: ContextVar[int | None] = ContextVar("extractkit_body_cap", default=None)


class _CappedStream(httpx.AsyncByteStream):
    """A response body that raises ``ResponseTooLarge`` once more than ``limit`` bytes came in."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int, status_code: int):
        self._inner, self._limit, self._status = inner, limit, status_code

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise _retry.ResponseTooLarge(self._limit, seen, self._status)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _cap_body(response: httpx.Response) -> None:
    """httpx response hook (headers in, body not yet read): cap the body of every status."""
    limit = _BODY_CAP.get()
    if limit is not None and isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = _CappedStream(response.stream, limit, response.status_code)


class _Cookies(httpx.Cookies):
    """The client's cookie jar as httpx keeps it, except that an answer without a cookie header
    (every provider answer, in practice) skips the standard library's cookie-jar pass that httpx
    makes on each response (a few percent of a request's CPU); one that sets a cookie is stored
    exactly as before."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


def make_client(tier: Any, *, local_url: str | None = None) -> openai.AsyncOpenAI:
    """The tier's client. ``local_url``: the local server's URL, for a local tier, when the
    caller has started it (``Extractor`` does, off the event loop); else it is started here."""
    hooks: dict[str, list[Any]] = {"response": [_cap_body]}
    if tier.transport == "aiohttp":
        http_client = openai.DefaultAioHttpClient(event_hooks=hooks)
    else:
        http_client = openai.DefaultAsyncHttpxClient(event_hooks=hooks)
    http_client._cookies = _Cookies(http_client.cookies.jar)  # the same (empty) jar
    base_url = tier.base_url
    if tier.is_local:
        from .local import local_base_url

        base_url = local_url or local_base_url()
    return openai.AsyncOpenAI(
        api_key=tier.resolve_api_key(),
        base_url=base_url,
        timeout=tier.timeout_s,
        max_retries=0,  # transient retries are ours (recorded, Retry-After honoured)
        http_client=http_client,
        default_headers=dict(tier.headers) if getattr(tier, "headers", None) else None,
    )


def _pydantic_errors(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False):
        out.append(
            {
                "type": err.get("type"),
                "loc": [str(p) for p in err.get("loc", ())],
                "msg": err.get("msg"),
                "input": repr(err.get("input"))[:200],
            }
        )
    return out


def classify_parse_error(exc: BaseException) -> tuple[Outcome, list[dict[str, Any]] | None]:
    if isinstance(exc, ValidationError):
        errors = _pydantic_errors(exc)
        types = {e["type"] for e in errors}
        if types and types <= {"json_invalid", "json_type"}:
            return Outcome.INVALID_JSON, errors
        if types == {"ungrounded"}:
            return Outcome.UNGROUNDED, errors
        return Outcome.SCHEMA_INVALID, errors
    return Outcome.INVALID_JSON, None


def _answer_text(response: Any) -> str | None:
    try:
        message = response.choices[0].message.model_dump()
    except (AttributeError, IndexError):
        return None
    return _message_answer(message) or None


def _usage(response: Any) -> Usage:
    u = getattr(response, "usage", None)
    if u is None:
        return Usage()
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) or 0
    return Usage(u.prompt_tokens or 0, u.completion_tokens or 0, cached)


def _short(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        text = f"HTTP {exc.status_code}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
        if _retry.is_connection_failure(exc):  # what the socket said: the aiohttp transport reports
            root = _retry.root_cause(exc)  # a refused connection as "APITimeoutError: Request timed out."
            if root is not exc:
                text = f"{type(root).__name__}: {root} (via {type(exc).__name__})"
    return _redact.redact(text)[:ERROR_KEEP_CHARS]  # redacted before it is cut (a cut key matches nothing)


if sys.version_info >= (3, 11):

    async def _within(seconds: float, work: Awaitable[T]) -> T:
        """``work`` under a total deadline: ``TimeoutError`` when it is not done in ``seconds``."""
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await work
        except TimeoutError:
            if deadline.expired():
                raise TimeoutError(f"no complete response within the {seconds:g} s timeout") from None
            raise

else:  # pragma: no cover - Python 3.10

    async def _within(seconds: float, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, seconds)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no complete response within the {seconds:g} s timeout") from None


class TierCall:
    """Runs one tier on one document and returns (value or None, attempts)."""

    def __init__(
        self,
        bound: BoundTier,
        client: openai.AsyncOpenAI,
        document: str,
        *,
        retry_policy: _retry.RetryPolicy,
        schema_hash: str,
        prices: dict[str, Price] | None = None,
        limiter: Any = None,
        breaker: _retry.CircuitBreaker | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self.bound = bound
        self.tier = bound.tier
        self.client = client
        self.document = document
        self.retry_policy = retry_policy
        self.schema_hash = schema_hash
        self.price = self.tier.price or lookup_price(self.tier.model, prices)
        self.breaker = breaker
        self.url = str(client.base_url).rstrip("/")  # what the breaker counts failures against
        scope = getattr(limiter, "for_model", None)  # a shared limiter keeps one limit per model
        self.limiter = scope(self.tier.model, self.url) if scope is not None else limiter
        self.max_response_bytes = max_response_bytes
        self.attempts: list[Attempt] = []
        self.waited_s = 0.0  # time spent waiting for the client-side rate limiter (not latency)
        self._large = False  # the last answer was large: parse it off the event loop
        self.max_tokens = bound.max_tokens
        self.context_window = bound.context_window
        self._token_memo: dict[str, int] = {}  # this document's messages, counted once
        self._n_original = 0

    # -- recording ----------------------------------------------------------------------------
    def _record(self, outcome: Outcome, started: float, t0: float, **fields: Any) -> None:
        usage = fields.pop("usage", Usage())
        _redact.attempt_fields(fields)  # Result.error / .attempts reach the application clean
        self.attempts.append(
            Attempt(
                tier=self.tier.name,
                model=self.tier.model,
                number=len(self.attempts) + 1,
                outcome=outcome,
                usage=usage,
                cost_usd=cost(usage, self.price),
                latency_s=round(time.perf_counter() - t0, 6),
                started_at=started,
                prompt_hash=self.tier.template.hash,
                schema_hash=self.schema_hash,
                **fields,
            )
        )

    def _amend_last(self, **changes: Any) -> None:
        if self.attempts:
            self.attempts[-1] = dataclasses.replace(self.attempts[-1], **_redact.attempt_fields(changes))

    def record_unreachable(self, exc: ProviderUnreachable) -> None:
        """The request the open circuit breaker kept from being sent, recorded as such."""
        now = time.time(), time.perf_counter()
        # redacted before it is cut: a cut through a key would leave a piece no pattern matches
        error = _redact.redact(f"not sent: {exc}")[:ERROR_KEEP_CHARS]
        self._record(Outcome.CONNECTION_ERROR, *now, error=error)

    def _on_parse_error(self, error: Exception, **_: Any) -> None:
        outcome, errors = classify_parse_error(error)
        self._amend_last(outcome=outcome, error=str(error)[:ERROR_KEEP_CHARS], errors=errors)

    # -- the request ----------------------------------------------------------------------------
    def _adapt(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        if self.bound.response_format is not None:
            kwargs["response_format"] = self.bound.response_format
        if self.tier.extra_body:
            kwargs["extra_body"] = dict(self.tier.extra_body)
        return kwargs

    def _extra_text(self, kwargs: dict[str, Any]) -> str:
        """The tool / schema definition as JSON: the same for every call of this tier, dumped once."""
        if self.bound.extra_text is None:
            extra = kwargs.get("tools") or kwargs.get("response_format")
            self.bound.extra_text = json.dumps(extra, ensure_ascii=False) if extra else ""
        return self.bound.extra_text

    def _estimate(self, kwargs: dict[str, Any]) -> int:
        if self.bound.extra_tokens is None:
            self.bound.extra_tokens = count_tokens(self._extra_text(kwargs))
        n = count_request_tokens(kwargs["messages"], memo=self._token_memo) + self.bound.extra_tokens
        return int(n * TOKEN_SAFETY)

    def _surely_fits(self, kwargs: dict[str, Any]) -> bool:
        """True when the request fits the context by a bound no tokenizer can exceed: every token
        of a byte-level BPE (or a SentencePiece model with byte fallback) covers at least one byte
        of UTF-8, so a prompt has at most as many tokens as bytes. Most documents are far inside
        the window and are never tokenized; the rest are counted."""
        n = sum(len(message_text(m).encode()) + PER_MESSAGE_OVERHEAD for m in kwargs["messages"]) + 3
        n += len(self._extra_text(kwargs).encode())
        assert self.context_window is not None
        return int(n * TOKEN_SAFETY) + self.max_tokens <= self.context_window

    def _quotes_oversized(self, kwargs: dict[str, Any]) -> bool:
        """Whether a re-ask quotes back an answer longer than any valid one (``max_tokens``
        tokens, at ``QUOTE_CHARS_PER_TOKEN`` characters at most each)."""
        limit = self.max_tokens * QUOTE_CHARS_PER_TOKEN
        for m in kwargs["messages"][self._n_original :]:
            role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
            if role == "assistant" and len(message_text(m)) > limit:
                return True
        return False

    def _needs_counting(self, kwargs: dict[str, Any]) -> bool:
        """False (the common case) when the request goes out as it is without a token counted:
        it fits the context by the byte bound, or the context is unknown, and it quotes back no
        oversized answer. True sends ``_fit`` to a worker thread."""
        if len(kwargs["messages"]) > self._n_original and self._quotes_oversized(kwargs):
            return True
        return self.context_window is not None and not self._surely_fits(kwargs)

    def _fit(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        """Keep the request inside the context and what a re-ask quotes bounded: trim the quoted
        answer. Returns the request and its estimated prompt tokens (None: not counted, it fits
        by far or the context is unknown). CPU-bound on long text: run in a worker thread."""
        window = self.context_window
        messages = kwargs["messages"]
        original, extra = messages[: self._n_original], messages[self._n_original :]
        # an oversized failed answer is never tokenised whole: it goes straight to _requote
        if not (extra and self._quotes_oversized(kwargs)):
            if window is None or self._surely_fits(kwargs):
                return kwargs, None
            estimate = self._estimate(kwargs)
            if estimate + self.max_tokens <= window or not extra:
                return kwargs, estimate
        return self._requote(kwargs, original, extra)

    def _requote(
        self, kwargs: dict[str, Any], original: list[Any], extra: list[Any]
    ) -> tuple[dict[str, Any], int | None]:
        """The re-ask as one message quoting the failed answer cut short: at most ``max_tokens``
        tokens of it (a longer one was never a valid answer) and no more than the context holds."""
        last_answer = ""
        feedback: list[str] = []
        for m in extra:
            m = m if isinstance(m, dict) else m.model_dump()
            if m.get("role") == "assistant":
                last_answer = _message_answer(m)
                feedback = []
            elif m.get("content"):
                feedback.append(str(m["content"])[:ERROR_KEEP_CHARS])
        error_text = "\n".join(feedback)[:ERROR_KEEP_CHARS]
        window = self.context_window
        limit, why = self.max_tokens, "the output bound"
        if window is not None:
            base = dict(kwargs, messages=original)
            room = window - self.max_tokens - self._estimate(base) - count_tokens(error_text) - 120
            if int(room / TOKEN_SAFETY) < limit:
                limit, why = int(room / TOKEN_SAFETY), "the context"
        quote = truncate_to_tokens(last_answer[: max(0, limit) * QUOTE_CHARS_PER_TOKEN], limit)
        note = "" if len(quote) == len(last_answer) else f" (cut short to fit {why})"
        parts = ["Your previous answer was rejected."]
        if quote:
            parts.append(f"Previous answer{note}:\n{quote}")
        parts.append(f"Errors:\n{error_text}\nAnswer again with corrected values.")
        fitted = dict(kwargs, messages=original + [{"role": "user", "content": "\n".join(parts)}])
        return fitted, (None if window is None else self._estimate(fitted))

    async def _create(self, **kwargs: Any) -> Any:
        kwargs = self._adapt(kwargs)
        estimate: int | None = None
        if self._needs_counting(kwargs):  # token counts of long text: off the event loop
            kwargs, estimate = await asyncio.to_thread(self._fit, kwargs)
        window = self.context_window
        if window is not None and estimate is not None and estimate + self.max_tokens > window:
            started, t0 = time.time(), time.perf_counter()
            self._record(
                Outcome.CONTEXT_OVERFLOW,
                started,
                t0,
                error=(
                    f"prompt of about {estimate} tokens + {self.max_tokens} output tokens "
                    f"exceeds the {window}-token context of {self.tier.model} (not sent)"
                ),
            )
            raise _TierStop("context overflow")
        policy = self.retry_policy
        # the first try goes straight out; tenacity's machinery is set up only after a transient
        # failure (it costs more per call than the rest of the attempt's bookkeeping)
        try:
            return await self._send(kwargs)
        except (_TierStop, ProviderUnreachable):
            raise
        except Exception as exc:
            if policy.max_attempts <= 1 or not _retry.is_transient(exc):
                raise _TierStop(str(exc)) from exc
            first = exc
        await _retry.sleep(_retry.retry_delay(1, _retry.response_headers(first), policy))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts - 1),
            retry=retry_if_exception(_retry.is_transient),
            wait=lambda state: _retry.retry_delay(
                state.attempt_number + 1,  # the first attempt was made above
                _retry.response_headers(state.outcome.exception()) if state.outcome else None,
                policy,
            ),
            sleep=lambda seconds: _retry.sleep(seconds),  # looked up at call time: patchable
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._send(kwargs)
            return response
        except (_TierStop, ProviderUnreachable):
            raise
        except Exception as exc:
            raise _TierStop(str(exc)) from exc

    async def _send(self, kwargs: dict[str, Any]) -> Any:
        """One HTTP call, recorded as an Attempt whatever happens. An open circuit breaker
        raises ``ProviderUnreachable`` before anything is sent."""
        breaker = self.breaker
        if breaker is not None:
            breaker.check(self.url)
        charge = 0
        if self.limiter is not None:
            charge = rate_limit_tokens(kwargs, self.max_tokens, len(self._extra_text(kwargs)))
            waiting = time.perf_counter()
            await self.limiter.acquire(charge)
            self.waited_s += time.perf_counter() - waiting
            if breaker is not None:  # it may have opened while this call waited its turn
                breaker.check(self.url)
        started, t0 = time.time(), time.perf_counter()
        try:
            # one deadline over send + read + parse: the SDK's timeout applies per socket read
            response = await _within(self.tier.timeout_s, self._exchange(kwargs))
        except Exception as exc:
            outcome = _retry.classify(exc)
            self._record(outcome, started, t0, error=_short(exc), status_code=_retry.status_code(exc))
            penalize = getattr(self.limiter, "penalize", None)
            if penalize is not None and outcome is Outcome.RATE_LIMITED:
                penalize(_retry.parse_retry_after(_retry.response_headers(exc)))
            if breaker is not None:
                if outcome is Outcome.CONNECTION_ERROR:
                    breaker.failed(self.url, exc)  # raises ProviderUnreachable when that opens it
                elif _retry.status_code(exc) == 401:
                    breaker.refused(self.url, exc)  # raises ProviderRefused: a wrong key fails them all
                elif outcome is not Outcome.TIMEOUT:
                    breaker.answered(self.url)
            raise
        if breaker is not None:
            breaker.answered(self.url)
        settle = getattr(self.limiter, "settle", None)  # the estimate corrected by the usage reported
        if settle is not None:
            settle(charge, _usage(response))
        return self._accept(response, started, t0)

    async def _exchange(self, kwargs: dict[str, Any]) -> ChatCompletion:
        """Send, read the body up to the cap, parse it (in a worker thread when it is large)."""
        # the SDK's low-level post (its documented way to send a body as it is): the typed
        # create() walks every message through TypedDict introspection first, which costs more
        # than everything else extractkit does per attempt. stream=True: the body is read here,
        # incrementally, and abandoned at the cap
        cap = _BODY_CAP.set(self.max_response_bytes)
        try:
            raw: httpx.Response = await self.client.post(
                "/chat/completions", cast_to=httpx.Response, body=_body(kwargs),
                options={"timeout": self.tier.timeout_s}, stream=True, stream_cls=None,
            )  # type: ignore[call-overload]  # fmt: skip
        finally:
            _BODY_CAP.reset(cap)
        try:
            body = await _read_capped(raw, self.max_response_bytes)
        finally:
            await raw.aclose()
        self._large = len(body) > OFFLOAD_BYTES
        if self._large:
            return await asyncio.to_thread(_parse_completion, body, raw)
        return _parse_completion(body, raw)

    async def _off_loop(self, fn: Any, **kwargs: Any) -> Any:
        """``fn(**kwargs)`` in a worker thread when the last answer was large, else inline (a
        thread hop costs more than parsing a small answer). The thread sees this task's context
        variables (the grounding source)."""
        if self._large:
            return await asyncio.to_thread(functools.partial(fn, **kwargs))
        return fn(**kwargs)

    def _accept(self, response: Any, started: float, t0: float) -> Any:
        choice = response.choices[0] if getattr(response, "choices", None) else None
        finish = getattr(choice, "finish_reason", None)
        text = _answer_text(response)
        fields: dict[str, Any] = {
            "usage": _usage(response),
            "finish_reason": finish,
            "output": text[:OUTPUT_KEEP_CHARS] if text else None,
            "status_code": 200,
            # what actually answered: a model name can move to a new snapshot under the same alias
            "served_model": getattr(response, "model", None) or None,
            "fingerprint": getattr(response, "system_fingerprint", None) or None,
        }
        if choice is None:  # nothing to parse, and nothing a re-ask could quote back
            self._record(Outcome.INVALID_JSON, started, t0, error="the response has no choices", **fields)
            raise _TierStop("no choices")
        refusal = getattr(getattr(choice, "message", None), "refusal", None)
        if refusal:
            self._record(Outcome.REFUSAL, started, t0, error=str(refusal)[:500], **fields)
            raise _TierStop("refusal")
        if finish == "content_filter":
            self._record(Outcome.CONTENT_FILTER, started, t0, error="content filtered", **fields)
            raise _TierStop("content_filter")
        if finish == "length":
            self._record(
                Outcome.TRUNCATED, started, t0,
                error=f"output reached the {self.max_tokens}-token bound (finish_reason=length)",
                **fields,
            )  # fmt: skip
            return response  # instructor's parser raises IncompleteOutputException on it
        self._record(Outcome.OK, started, t0, **fields)  # amended when the parse fails
        return response

    async def run(self) -> BaseModel | None:
        """Attempt, validate, re-ask: instructor's handlers for this mode build the schema-bound
        request, parse and validate each answer and write the re-ask; the loop is ours, so every
        attempt is recorded as it happens (and instructor's per-call wrapper, which re-inspects
        the response model several times per call, stays off the hot path)."""
        tier, bound = self.tier, self.bound
        handlers = bound.handlers
        messages = bound.messages(self.document)
        self._n_original = len(messages)
        model, kwargs = bound.prepare_request(
            {"messages": messages, "model": tier.model, "temperature": tier.temperature,
             "max_tokens": self.max_tokens}
        )  # fmt: skip
        # the document reaches the Grounded validators through a context variable (instructor's
        # validation context is also a Jinja2 template context when its wrapper is used)
        with grounding_source(self.document):
            for reask in range(tier.max_reasks + 1):
                try:
                    response = await self._create(**kwargs)
                except _TierStop:
                    return None
                strip_code_fences(response)
                try:
                    value = await self._off_loop(
                        handlers.response_parser, response=response, response_model=model,
                        validation_context=None, strict=False, stream=False, is_async=True,
                    )  # fmt: skip
                except IncompleteOutputException:
                    return None  # recorded as truncated: a re-ask with the same bound would be too
                except _PARSE_ERRORS as exc:
                    self._on_parse_error(exc)
                    if reask == tier.max_reasks:
                        return None
                    try:
                        kwargs = await self._off_loop(
                            handlers.reask_handler, kwargs=kwargs, response=response, exception=exc
                        )
                    except Exception as reask_exc:  # an answer instructor cannot quote back
                        error = f"{self.attempts[-1].error} (no re-ask: {_short(reask_exc)})"
                        self._amend_last(error=error[:ERROR_KEEP_CHARS])
                        return None
                    continue
                except Exception as exc:  # an answer instructor could not read at all
                    self._amend_last(outcome=Outcome.INVALID_JSON, error=_short(exc))
                    return None
                # hand back a plain instance of the user's own class (instructor's carries its
                # raw completion) with the already-validated values
                schema = bound.schema
                fields = {k: v for k, v in value.__dict__.items() if k in schema.model_fields}
                return schema.model_construct(_fields_set=set(value.model_fields_set), **fields)
        return None


def rate_limit_tokens(kwargs: dict[str, Any], max_tokens: int, extra_chars: int | None = None) -> int:
    """What a request counts against a tokens/minute limit, estimated the way OpenAI documents
    it: the request's characters / 4, plus max_tokens. (The tokenizer count with its safety
    margin is for the context check; charged here it would leave a few percent of the limit
    unused.) ``extra_chars``: the tool / schema definition's length, when already known."""
    chars = sum(len(message_text(m)) for m in kwargs.get("messages", []))
    if extra_chars is None:
        extra = kwargs.get("tools") or kwargs.get("response_format")
        extra_chars = len(json.dumps(extra, ensure_ascii=False)) if extra else 0
    return -(-(chars + extra_chars) // 4) + max_tokens


def _body(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request body from create()-style arguments: unset values dropped, extra_body merged."""
    body = {k: v for k, v in kwargs.items() if k != "extra_body" and not isinstance(v, (NotGiven, Omit))}
    body.update(kwargs.get("extra_body") or {})
    return body


async def _read_capped(raw: httpx.Response, limit: int) -> bytes:
    """The body, read chunk by chunk and abandoned as soon as it passes ``limit`` bytes (decoded;
    a declared Content-Length over the limit is refused before reading)."""
    declared = raw.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _retry.ResponseTooLarge(limit, 0, raw.status_code)
    chunks: list[bytes] = []
    size = 0
    async for chunk in raw.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _retry.ResponseTooLarge(limit, size, raw.status_code)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_completion(body: bytes, raw: httpx.Response | None = None) -> ChatCompletion:
    """The SDK builds its response objects with Python-level type introspection; pydantic-core
    parses the same JSON into the same type far faster. A body it rejects (a provider that leaves
    out a field) falls back to the SDK's lenient construction; a body that is not a completion at
    all (a proxy's HTML error page with status 200) is an upstream failure, retried."""
    try:
        return ChatCompletion.model_validate_json(body)
    except ValidationError:
        pass
    try:
        data = json.loads(body)
    except ValueError:  # not JSON (or not UTF-8)
        data = None
    if not isinstance(data, dict) or "choices" not in data:
        kind = raw.headers.get("content-type", "no content-type") if raw is not None else "?"
        head = body[:200].decode("utf-8", "replace")
        raise _retry.NotACompletion(
            f"HTTP 200 with a body that is not a chat completion ({kind}, {len(body)} bytes): {head!r}"
        )
    from openai._models import construct_type

    return construct_type(type_=ChatCompletion, value=data)  # type: ignore[return-value]


# an answer that is one markdown code fence: ```json\n{...}\n``` (the language tag optional)
_FENCE_OPEN = re.compile(r"\s*```[ \t]*(?:json)?[ \t]*(?:\r?\n|(?=[\[{]))", re.IGNORECASE)


def strip_code_fence(text: str) -> str:
    """JSON wrapped in one markdown code fence, unwrapped; any other text as it is. Only a fence
    around the whole answer counts (no JSON fished out of prose, which a document could plant)."""
    m = _FENCE_OPEN.match(text)
    if m is None:
        return text
    inner = text[m.end() :].rstrip()
    if not inner.endswith("```"):
        return text
    return inner[:-3].strip()


def strip_code_fences(response: Any) -> None:
    """Unwrap a fenced answer in place, in every mode: the message content (json, json_schema)
    and each tool call's arguments (tools). instructor parses each as bare JSON."""
    try:
        message = response.choices[0].message
    except (AttributeError, IndexError, TypeError):
        return
    content = getattr(message, "content", None)
    if isinstance(content, str) and "```" in content:
        message.content = strip_code_fence(content)
    for call in getattr(message, "tool_calls", None) or ():
        fn = getattr(call, "function", None)
        args = getattr(fn, "arguments", None)
        if isinstance(args, str) and "```" in args:
            fn.arguments = strip_code_fence(args)  # type: ignore[union-attr]


def _message_answer(m: dict[str, Any]) -> str:
    """What an assistant message answered: its tool-call arguments, else its content."""
    calls = m.get("tool_calls") or []
    if calls:
        return "\n".join(str(c.get("function", {}).get("arguments", "")) for c in calls)
    return str(m.get("content") or "")
