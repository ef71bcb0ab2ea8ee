"""The live transport: one tier's requests sent one HTTP call at a time.

What is sent, what an answer means and what comes next (re-ask, retry, end of the tier) are the
attempt steps (``_steps.Steps``), shared with the batch transport; ``TierCall.run`` drives them
over HTTP, so each attempt is recorded as it happens. Around the HTTP call (``TierCall._send``)
extractkit adds what instructor and the openai SDK do not do:

- an output-token bound on every request, and a per-attempt timeout that is a *total* deadline
  around sending, reading and parsing (the SDK's timeout is per socket read: a slow drip evades
  it), so a recorded latency never exceeds ``timeout_s`` by more than scheduling slack;
- a cap on the response body, read incrementally and abandoned at the cap
  (``response_too_large``);
- nothing CPU-heavy on the event loop: a large body is parsed, interpreted and re-asked in a
  worker thread, and token counting of long text runs in one too (``Steps.needs_counting``);
- transient HTTP failures retried with backoff that honours Retry-After (``Steps.decide``, the
  sleep here), the client-side rate limiter told about 429s and usage, and the circuit breaker
  told about every connection failure and every answer;
- an ``Attempt`` for every HTTP call, its outcome set from the parse (``Steps.interpret``).

(instructor's patched ``create`` runs the same handlers, but per call it re-inspects the
response model six times and copies usage models: a third of the client's CPU per response at
batch concurrency, see BENCHMARKS.md.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from . import _redact, _retry
from ._errors import ProviderUnreachable
from ._grounding import SourceIndex
from ._pricing import Price, lookup_price
from ._results import Attempt, Outcome
from ._steps import ERROR_KEEP_CHARS, Answer, Failure, NextKind, Request, Steps, TierState, _usage
from ._steps import TOKEN_SAFETY as TOKEN_SAFETY  # re-exported: the batch estimate's margin
from ._steps import strip_code_fence as strip_code_fence  # re-exported (tests)
from ._tiers import BoundTier
from ._tokens import message_text, request_image_tokens
from ._transport import BODY_CAP, cap_body, read_capped, within

MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # default cap on a response body (Extractor(max_response_bytes=))
OFFLOAD_BYTES = 64 * 1024  # a body or answer larger than this is parsed in a worker thread

# instructor logs every failed validation at ERROR; for extractkit those are recorded outcomes,
# not errors. A NullHandler keeps them off stderr unless the application configures logging.
logging.getLogger("instructor").addHandler(logging.NullHandler())

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
    hooks: dict[str, list[Any]] = {"response": [cap_body]}
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


class TierCall:
    """Runs one tier on one document over HTTP: ``run()`` returns the value or None, and
    ``attempts`` holds every attempt made. The attempt logic is the tier's ``Steps`` (given, or
    made here from ``retry_policy``, ``schema_hash`` and ``prices``); this class is its live
    transport: the rate limiter, the circuit breaker, the deadline, the body cap, the retry
    sleep, and worker threads for what is CPU-heavy."""

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
        steps: Steps | None = None,
        images: Sequence[bytes] = (),
    ):
        self.bound = bound
        self.tier = bound.tier
        self.client = client
        self.document = document
        self.images = images  # page images (PNG), sent by a tier whose input includes them
        if steps is None:
            price = self.tier.price or lookup_price(self.tier.model, prices)
            steps = Steps(bound, schema_hash=schema_hash, retry_policy=retry_policy, price=price)
        self.steps = steps
        self.breaker = breaker
        self.url = str(client.base_url).rstrip("/")  # what the breaker counts failures against
        scope = getattr(limiter, "for_model", None)  # a shared limiter keeps one limit per model
        self.limiter = scope(self.tier.model, self.url) if scope is not None else limiter
        self.max_response_bytes = max_response_bytes
        self.attempts: list[Attempt] = []
        self.waited_s = 0.0  # time spent waiting for the client-side rate limiter (not latency)
        self.max_tokens = bound.max_tokens
        self.state: TierState | None = None

    def record_unreachable(self, exc: ProviderUnreachable) -> None:
        """The request the open circuit breaker kept from being sent, recorded as such."""
        # redacted before it is cut: a cut through a key would leave a piece no pattern matches
        error = _redact.redact(f"not sent: {exc}")[:ERROR_KEEP_CHARS]
        answer = Answer(failure=Failure(Outcome.CONNECTION_ERROR, error), started_at=time.time())
        self.attempts.append(self.steps.attempt(len(self.attempts) + 1, answer, Outcome.CONNECTION_ERROR,
                                                {"error": error, "status_code": None}))  # fmt: skip

    async def run(self) -> BaseModel | None:
        """The tier's attempts on the document, each recorded as it happens: build the request
        (counted in a worker thread when it may not fit), send it, interpret the answer (in a
        worker thread when it is large), then do what ``Steps.decide`` says: retry the same
        request after a delay, re-ask, or stop with the value or None. The first try goes
        straight out: nothing is set up for retries until a transient failure happens."""
        steps, document = self.steps, self.document
        state = self.state = steps.start(document, self.images)
        source = SourceIndex(document)  # the grounding source, indexed once for every answer
        while True:
            if steps.needs_counting(state):  # token counts of long text: off the event loop
                request = await asyncio.to_thread(steps.build_request, state)
            else:
                request = steps.build_request(state)
            if request.overflow is not None:
                answer = Answer(failure=Failure.context_overflow(request.overflow), started_at=time.time())
                self.attempts.append(steps.interpret(state, answer, source).attempt)
                return None
            while True:  # sends of this request: the first, then transient retries
                answer, exc = await self._send(request)
                large = answer.size > OFFLOAD_BYTES  # parsed, validated and re-asked off the loop
                if large:
                    it = await asyncio.to_thread(steps.interpret, state, answer, source)
                else:
                    it = steps.interpret(state, answer, source)
                self.attempts.append(it.attempt)
                if exc is not None:
                    self._failed(exc, it.attempt.outcome)  # may raise ProviderUnreachable
                    exc = None  # its traceback holds this frame: no cycle left for the GC
                nxt = await asyncio.to_thread(steps.decide, state, it) if large else steps.decide(state, it)
                if nxt.amend_error is not None:
                    self.attempts[-1] = nxt.apply(self.attempts[-1])
                kind = nxt.kind
                if kind is NextKind.DONE:
                    return nxt.value
                if kind is NextKind.END_TIER:
                    return None
                assert nxt.state is not None
                state = self.state = nxt.state
                if kind is NextKind.REASK:
                    break
                await _retry.sleep(nxt.delay_s)  # looked up at call time: patchable

    async def _send(self, request: Request) -> tuple[Answer, BaseException | None]:
        """One HTTP call: its answer, and the exception when it brought no completion (the
        caller records the attempt, then ``_failed`` tells the limiter and the breaker). An open
        circuit breaker raises ``ProviderUnreachable`` before anything is sent."""
        breaker = self.breaker
        if breaker is not None:
            breaker.check(self.url)
        charge = 0
        if self.limiter is not None:
            kwargs = request.kwargs
            charge = rate_limit_tokens(kwargs, self.max_tokens, len(self.steps.extra_text(kwargs)))
            waiting = time.perf_counter()
            await self.limiter.acquire(charge)
            self.waited_s += time.perf_counter() - waiting
            if breaker is not None:  # it may have opened while this call waited its turn
                breaker.check(self.url)
        started, t0 = time.time(), time.perf_counter()
        try:
            # one deadline over send + read + parse: the SDK's timeout applies per socket read
            response, size = await within(self.tier.timeout_s, self._exchange(request.body))
        except Exception as exc:
            failure = Failure.from_exception(exc)
            return Answer(failure=failure, started_at=started, latency_s=time.perf_counter() - t0), exc
        latency = time.perf_counter() - t0
        if breaker is not None:
            breaker.answered(self.url)
        settle = getattr(self.limiter, "settle", None)  # the estimate corrected by the usage reported
        if settle is not None:
            settle(charge, _usage(response))
        return Answer(response=response, started_at=started, latency_s=latency, size=size), None

    def _failed(self, exc: BaseException, outcome: Outcome) -> None:
        """A failed call, recorded: a 429 slows the limiter; the breaker counts a connection
        failure (raises ``ProviderUnreachable`` when that opens it), opens at once on a 401
        (raises ``ProviderRefused``: a wrong key fails them all), and counts any other answer."""
        penalize = getattr(self.limiter, "penalize", None)
        if penalize is not None and outcome is Outcome.RATE_LIMITED:
            penalize(_retry.parse_retry_after(_retry.response_headers(exc)))
        breaker = self.breaker
        if breaker is not None:
            if outcome is Outcome.CONNECTION_ERROR:
                breaker.failed(self.url, exc)
            elif _retry.status_code(exc) == 401:
                breaker.refused(self.url, exc)
            elif outcome is not Outcome.TIMEOUT:
                breaker.answered(self.url)

    async def _exchange(self, body: dict[str, Any]) -> tuple[ChatCompletion, int]:
        """Send, read the body up to the cap, parse it (in a worker thread when it is large)."""
        # the SDK's low-level post (its documented way to send a body as it is): the typed
        # create() walks every message through TypedDict introspection first, which costs more
        # than everything else extractkit does per attempt. stream=True: the body is read here,
        # incrementally, and abandoned at the cap
        cap = BODY_CAP.set(self.max_response_bytes)
        try:
            raw: httpx.Response = await self.client.post(
                "/chat/completions", cast_to=httpx.Response, body=body,
                options={"timeout": self.tier.timeout_s}, stream=True, stream_cls=None,
            )  # type: ignore[call-overload]  # fmt: skip
        finally:
            BODY_CAP.reset(cap)
        try:
            data = await read_capped(raw, self.max_response_bytes)
        finally:
            await raw.aclose()
        if len(data) > OFFLOAD_BYTES:
            return await asyncio.to_thread(_parse_completion, data, raw), len(data)
        return _parse_completion(data, raw), len(data)


def rate_limit_tokens(kwargs: dict[str, Any], max_tokens: int, extra_chars: int | None = None) -> int:
    """What a request counts against a tokens/minute limit, estimated the way OpenAI documents
    it: the request's characters / 4, plus max_tokens. (The tokenizer count with its safety
    margin is for the context check; charged here it would leave a few percent of the limit
    unused.) ``extra_chars``: the tool / schema definition's length, when already known. Page
    images count as their tokens by the provider's rule (``_tokens.request_image_tokens``), not
    as the characters of their data URLs."""
    messages = kwargs.get("messages", [])
    chars = sum(len(message_text(m)) for m in messages)
    if extra_chars is None:
        extra = kwargs.get("tools") or kwargs.get("response_format")
        extra_chars = len(json.dumps(extra, ensure_ascii=False)) if extra else 0
    images = request_image_tokens(messages, str(kwargs.get("model", "")))
    return -(-(chars + extra_chars) // 4) + images + max_tokens


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
