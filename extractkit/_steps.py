"""The attempt steps: one document at one tier, as pure steps that both transports drive.

A tier's work on one document is a small state machine. ``Steps.start`` makes the state of its
first request; ``build_request`` turns a state into what is sent (the HTTP body, which is also a
batch line's ``body``); ``interpret`` turns what came back (an ``Answer``: a completion, or a
``Failure`` that brought none) into the ``Attempt`` to record and the parsed value; ``decide``
says what comes next (``Next``): done, a re-ask, a retry of the same request, or the end of the
tier (the chain's ``EscalationPolicy.should_escalate`` then says whether the next tier runs).

Nothing here does I/O, awaits, sleeps or reads a clock (an answer brings its own times): the live
transport (``_llm.TierCall``: one HTTP call at a time, with the rate limiter, the circuit breaker,
the body cap and the retry sleep) and the batch transport (``batch/_waves.py``: request lines in
waves) drive the same steps, so request building, answer interpretation and the re-ask / retry
rules exist once::

    state = steps.start(document)
    while True:
        request = steps.build_request(state)  # a worker thread when steps.needs_counting(state)
        answer = <send request.body> or Answer(failure=Failure.context_overflow(request.overflow))
        it = steps.interpret(state, answer, document)  # it.attempt is recorded
        nxt = steps.decide(state, it)                  # DONE | REASK | RETRY | END_TIER
        state = nxt.state or state

A ``TierState`` is plain data with a JSON round trip (``to_json`` / ``from_json``): the batch
transport keeps it in the ledger between waves, re-ask turns included.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import openai
from instructor.core.exceptions import AsyncValidationError, IncompleteOutputException, ResponseParsingError
from openai import NotGiven, Omit
from pydantic import BaseModel, ValidationError

from . import _redact, _retry
from ._grounding import SourceIndex, grounding_source
from ._pricing import Price, cost
from ._results import Attempt, Outcome, Usage
from ._tiers import BoundTier
from ._tokens import (
    PER_MESSAGE_OVERHEAD,
    count_request_tokens,
    count_tokens,
    image_parts,
    message_text,
    request_image_tokens,
    truncate_to_tokens,
)

OUTPUT_KEEP_CHARS = 4000  # how much of a model answer an Attempt keeps
TOKEN_SAFETY = 1.15  # margin on offline token estimates (the server's tokenizer may differ)
ERROR_KEEP_CHARS = 1500
# recorded as the error of an answer whose Grounded fields could not be checked (page images, no text)
NOT_GROUNDED = ("grounding not checked: the document has no text (page images only, no text layer or OCR "
                "text), so its Grounded fields were not verified against it")  # fmt: skip
# a re-ask quotes at most max_tokens tokens of the failed answer (a longer one was never a valid
# answer: it would have ended in `truncated`); the answer is first cut to this many characters
# per token, so tokenising it is bounded too (tiktoken is superlinear on long runs of one letter)
QUOTE_CHARS_PER_TOKEN = 8

# what instructor re-asks on (as its own retry loop does)
_PARSE_ERRORS = (ValidationError, json.JSONDecodeError, AsyncValidationError, ResponseParsingError)
_NO_USAGE = Usage()

Via = Literal["live", "batch"]


# -- the state between two attempts -----------------------------------------------------------------
@dataclass
class TierState:
    """One document at one tier between two attempts: plain data, JSON round trip.

    ``kwargs`` is the request as create() takes it, re-ask turns included (messages are plain
    dicts), before the per-send adaptation (``Steps.build_request``). ``tries`` counts the sends
    of the current request already answered (a re-ask starts a new request: 0); ``number`` is
    the ``Attempt.number`` of the tier's last attempt. ``memo`` (token counts of this document's
    messages, counted once) is a cache: not part of the JSON, not compared."""

    tier: str
    kwargs: dict[str, Any]
    n_original: int  # messages before any re-ask turn
    reasks: int = 0
    tries: int = 0
    number: int = 0
    memo: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    # needs_counting's answer for this state, kept for build_request (not copied by replace)
    counting: bool | None = field(default=None, init=False, repr=False, compare=False)

    def to_json(self) -> str:
        kwargs = {k: v for k, v in self.kwargs.items() if not isinstance(v, (NotGiven, Omit))}
        return json.dumps(
            {"tier": self.tier, "kwargs": kwargs, "n_original": self.n_original, "reasks": self.reasks,
             "tries": self.tries, "number": self.number},
            ensure_ascii=False, default=_plain,
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> TierState:
        d = json.loads(text)
        return cls(tier=d["tier"], kwargs=d["kwargs"], n_original=d["n_original"], reasks=d["reasks"],
                   tries=d["tries"], number=d["number"])  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    raise TypeError(f"a request value that is not JSON: {type(value).__name__}")


@dataclass(frozen=True)
class Request:
    """What ``build_request`` returns: ``kwargs`` as sent (adapted, fitted to the context) and
    ``body``, the HTTP request body (a batch line's ``body``). ``overflow`` not None: nothing may
    be sent (the prompt does not fit the context); the driver records
    ``Answer(failure=Failure.context_overflow(overflow))`` instead."""

    kwargs: dict[str, Any]
    body: dict[str, Any]
    overflow: str | None = None


@dataclass(frozen=True)
class Failure:
    """A request that brought no completion: what the attempt records, and whether the same
    request may pass if sent again. ``headers``: the reply's headers (Retry-After), live only."""

    outcome: Outcome
    error: str
    status_code: int | None = None
    transient: bool = False
    headers: Mapping[str, str] | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        """The live path: what the HTTP call raised (``_retry.classify`` by its types)."""
        return cls(_retry.classify(exc), error_text(exc), _retry.status_code(exc), _retry.is_transient(exc),
                   _retry.response_headers(exc))  # fmt: skip

    @classmethod
    def from_status(cls, status: int, body: Any, headers: Mapping[str, str] | None = None) -> Failure:
        """An HTTP error reply known by status and body (a batch error line's ``response``): the
        same outcome, error text and transience as the live path gives the same reply."""
        return cls(_retry.classify_status(status, body), status_error_text(status, body), status,
                   status in _retry.RETRYABLE_STATUSES, headers)  # fmt: skip

    @classmethod
    def not_run(cls, code: str, message: str) -> Failure:
        """A request the provider never ran (a batch line that expired): a transient timeout."""
        return cls(Outcome.TIMEOUT, _cut(f"not run ({code}): {message}"), None, True)

    @classmethod
    def context_overflow(cls, error: str) -> Failure:
        """A request not sent because it does not fit the context (``Request.overflow``)."""
        return cls(Outcome.CONTEXT_OVERFLOW, error, None, False)


@dataclass(frozen=True)
class Answer:
    """What one request got, by either transport: a completion or a failure. ``started_at``
    (unix time) and ``latency_s`` are the transport's; ``size``: the body's bytes (a driver
    interprets a large answer in a worker thread)."""

    response: Any = None  # ChatCompletion
    failure: Failure | None = None
    started_at: float = 0.0
    latency_s: float = 0.0
    via: Via = "live"
    size: int = 0


@dataclass(frozen=True)
class Interpretation:
    """``interpret``'s result: the attempt to record and what ``decide`` needs. ``stop``: no
    re-ask can help (no choices, refusal, content filter, truncated, an unreadable answer)."""

    attempt: Attempt
    value: BaseModel | None = None
    parse_error: Exception | None = None
    response: Any = None
    stop: bool = False
    failure: Failure | None = None


class NextKind(str, enum.Enum):
    DONE = "done"  # a valid value: the chain ends here
    REASK = "reask"  # a validation failure: ask again with the errors (Next.state)
    RETRY = "retry"  # a transient failure: send the same request again after Next.delay_s
    END_TIER = "end_tier"  # the tier is over; EscalationPolicy.should_escalate(last attempt) decides


@dataclass(frozen=True)
class Next:
    """What ``decide`` says comes next. ``state``: the state to go on with (REASK, RETRY).
    ``amend_error``: the last attempt's error as it must be recorded (the re-ask could not be
    written): ``apply`` gives the attempt with it."""

    kind: NextKind
    state: TierState | None = None
    value: BaseModel | None = None
    delay_s: float = 0.0
    amend_error: str | None = None

    def apply(self, attempt: Attempt) -> Attempt:
        if self.amend_error is None:
            return attempt
        return dataclasses.replace(attempt, error=self.amend_error)


# -- the steps ------------------------------------------------------------------------------------
class Steps:
    """The attempt steps of one tier bound to a schema: made once per tier (prices, policy),
    shared by every document, by both transports. Thread-safe (no per-document state here)."""

    def __init__(
        self,
        bound: BoundTier,
        *,
        schema_hash: str,
        retry_policy: _retry.RetryPolicy,
        price: Price | None,
        batch_price: Price | None = None,
    ):
        self.bound = bound
        self.tier = bound.tier
        self.schema_hash = schema_hash
        self.retry_policy = retry_policy
        self.price = price
        self.batch_price = batch_price
        self.max_tokens = bound.max_tokens
        self.context_window = bound.context_window

    # -- start ----------------------------------------------------------------------------------
    def start(self, document: str, images: Sequence[bytes] = ()) -> TierState:
        """The state of the tier's first request for ``document`` (prompt, examples, schema) and,
        for a tier that sends them (``Tier.input``), its page ``images`` (PNG bytes)."""
        tier, bound = self.tier, self.bound
        messages = bound.messages(document, images)
        _, kwargs = bound.prepare_request(
            {"messages": messages, "model": tier.model, "temperature": tier.temperature,
             "max_tokens": self.max_tokens}
        )  # fmt: skip
        return TierState(tier=tier.name, kwargs=kwargs, n_original=len(messages))

    # -- the request ----------------------------------------------------------------------------
    def _adapt(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        if self.bound.response_format is not None:
            kwargs["response_format"] = self.bound.response_format
        if self.tier.extra_body:
            kwargs["extra_body"] = dict(self.tier.extra_body)
        return kwargs

    def extra_text(self, kwargs: dict[str, Any]) -> str:
        """The tool / schema definition as JSON: the same for every call of this tier, dumped once
        (``kwargs``: a request as sent)."""
        if self.bound.extra_text is None:
            extra = kwargs.get("tools") or kwargs.get("response_format")
            self.bound.extra_text = json.dumps(extra, ensure_ascii=False) if extra else ""
        return self.bound.extra_text

    def image_tokens(self, kwargs: dict[str, Any]) -> int:
        """Context tokens of the request's page images, by the provider's rule (exact: no margin)."""
        if not self.tier.sends_images:
            return 0
        return request_image_tokens(kwargs["messages"], self.tier.model, context=True)

    def _estimate(self, kwargs: dict[str, Any], memo: dict[str, int]) -> int:
        if self.bound.extra_tokens is None:
            self.bound.extra_tokens = count_tokens(self.extra_text(kwargs))
        n = count_request_tokens(kwargs["messages"], memo=memo) + self.bound.extra_tokens
        return int(n * TOKEN_SAFETY) + self.image_tokens(kwargs)

    def _surely_fits(self, kwargs: dict[str, Any]) -> bool:
        """True when the request fits the context by a bound no tokenizer can exceed: every token
        of a byte-level BPE (or a SentencePiece model with byte fallback) covers at least one byte
        of UTF-8, so a prompt has at most as many tokens as bytes. Most documents are far inside
        the window and are never tokenized; the rest are counted."""
        n = sum(len(message_text(m).encode()) + PER_MESSAGE_OVERHEAD for m in kwargs["messages"]) + 3
        n += len(self.extra_text(kwargs).encode())
        assert self.context_window is not None
        return int(n * TOKEN_SAFETY) + self.image_tokens(kwargs) + self.max_tokens <= self.context_window

    def _quotes_oversized(self, kwargs: dict[str, Any], n_original: int) -> bool:
        """Whether a re-ask quotes back an answer longer than any valid one (``max_tokens``
        tokens, at ``QUOTE_CHARS_PER_TOKEN`` characters at most each)."""
        limit = self.max_tokens * QUOTE_CHARS_PER_TOKEN
        for m in kwargs["messages"][n_original:]:
            role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
            if role == "assistant" and len(message_text(m)) > limit:
                return True
        return False

    def _needs_counting(self, kwargs: dict[str, Any], n_original: int) -> bool:
        if len(kwargs["messages"]) > n_original and self._quotes_oversized(kwargs, n_original):
            return True
        return self.context_window is not None and not self._surely_fits(kwargs)

    def needs_counting(self, state: TierState) -> bool:
        """False (the common case) when the request goes out as it is without a token counted:
        it fits the context by the byte bound, or the context is unknown, and it quotes back no
        oversized answer. True: ``build_request`` counts tokens of long text (CPU-bound: a driver
        on an event loop runs it in a worker thread)."""
        if state.counting is None:
            state.counting = self._needs_counting(self._adapt(state.kwargs), state.n_original)
        return state.counting

    def build_request(self, state: TierState) -> Request:
        """What ``state`` sends: the request adapted (the tier's response_format, extra_body) and
        kept inside the context (the quoted failed answer of a re-ask trimmed), its HTTP body; or
        ``overflow``, why it cannot be sent at all."""
        kwargs = self._adapt(state.kwargs)
        counting = state.counting
        if counting is None:
            counting = self._needs_counting(kwargs, state.n_original)
        if not counting:
            return Request(kwargs, _body(kwargs))
        kwargs, estimate = self._fit(kwargs, state)
        window = self.context_window
        if window is not None and estimate is not None and estimate + self.max_tokens > window:
            images, n_images = self.image_tokens(kwargs), len(image_parts(kwargs["messages"]))
            pages = f" ({images} of them for {n_images} page images)" if images else ""
            overflow = (
                f"prompt of about {estimate} tokens{pages} + {self.max_tokens} output tokens "
                f"exceeds the {window}-token context of {self.tier.model} (not sent)"
            )
            if self.tier.long_documents == "chunk":  # the chain's live path chunks it (_chain)
                overflow += ('; long_documents = "chunk" splits a long document only when it is '
                             "extracted live (extract without --via batch), not in Batch API "
                             "waves")  # fmt: skip
            return Request(kwargs, {}, overflow)
        return Request(kwargs, _body(kwargs))

    def document_room(self) -> int | None:
        """How many tokens of document text fit a request of this tier beside its prompt (rendered
        for an empty document), the schema and the output bound, with the estimate's margin; None
        when the context is unknown. A long document's chunks are cut to this (``_chunking``).
        Counts the prompt: a driver on an event loop runs it in a worker thread."""
        overhead = self.prompt_tokens()
        if self.context_window is None or overhead is None:
            return None
        return int((self.context_window - self.max_tokens - overhead) / TOKEN_SAFETY)

    def prompt_tokens(self) -> int | None:
        """The tokens of this tier's request for an empty document (its prompt, examples, schema),
        estimated as the context check estimates them; None when the context is unknown."""
        if self.context_window is None:
            return None
        return self._estimate(self._adapt(self.start("").kwargs), {})

    def _fit(self, kwargs: dict[str, Any], state: TierState) -> tuple[dict[str, Any], int | None]:
        """Keep the request inside the context and what a re-ask quotes bounded: trim the quoted
        answer. Returns the request and its estimated prompt tokens (None: not counted, it fits
        by far or the context is unknown)."""
        window, n_original = self.context_window, state.n_original
        messages = kwargs["messages"]
        original, extra = messages[:n_original], messages[n_original:]
        # an oversized failed answer is never tokenised whole: it goes straight to _requote
        if not (extra and self._quotes_oversized(kwargs, n_original)):
            if window is None or self._surely_fits(kwargs):
                return kwargs, None
            estimate = self._estimate(kwargs, state.memo)
            if estimate + self.max_tokens <= window or not extra:
                return kwargs, estimate
        return self._requote(kwargs, original, extra, state.memo)

    def _requote(
        self, kwargs: dict[str, Any], original: list[Any], extra: list[Any], memo: dict[str, int]
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
            room = window - self.max_tokens - self._estimate(base, memo) - count_tokens(error_text) - 120
            if int(room / TOKEN_SAFETY) < limit:
                limit, why = int(room / TOKEN_SAFETY), "the context"
        quote = truncate_to_tokens(last_answer[: max(0, limit) * QUOTE_CHARS_PER_TOKEN], limit)
        note = "" if len(quote) == len(last_answer) else f" (cut short to fit {why})"
        parts = ["Your previous answer was rejected."]
        if quote:
            parts.append(f"Previous answer{note}:\n{quote}")
        parts.append(f"Errors:\n{error_text}\nAnswer again with corrected values.")
        fitted = dict(kwargs, messages=original + [{"role": "user", "content": "\n".join(parts)}])
        return fitted, (None if window is None else self._estimate(fitted, memo))

    # -- the answer -----------------------------------------------------------------------------
    def attempt(self, number: int, answer: Answer, outcome: Outcome, fields: dict[str, Any]) -> Attempt:
        """The recorded Attempt: priced at the tier's price, or at its batch price when the
        answer came by batch (then ``live_cost_usd``: what the same tokens cost live); text
        fields redacted (``Result.error`` / ``.attempts`` reach the application clean)."""
        usage = fields.pop("usage", _NO_USAGE)
        _redact.attempt_fields(fields)
        batch = answer.via == "batch"
        return Attempt(
            tier=self.tier.name,
            model=self.tier.model,
            number=number,
            outcome=outcome,
            usage=usage,
            cost_usd=cost(usage, self.batch_price if batch else self.price),
            latency_s=round(answer.latency_s, 6),
            started_at=answer.started_at,
            prompt_hash=self.tier.template.hash,
            schema_hash=self.schema_hash,
            via=answer.via,
            live_cost_usd=cost(usage, self.price) if batch else None,
            **fields,
        )

    def interpret(self, state: TierState, answer: Answer, document: str | SourceIndex) -> Interpretation:
        """The attempt ``answer`` makes (number ``state.number + 1``) and, for a completion, its
        value: the answer checked (choices, refusal, content filter, truncation), unwrapped from
        a code fence (in place), parsed and validated by instructor's handler for the tier's mode
        with ``document`` as the grounding source (its text, or a ``SourceIndex`` already built
        for it). CPU-bound on a large answer: a driver on an event loop runs it in a worker
        thread."""
        number = state.number + 1
        failure = answer.failure
        if failure is not None:
            attempt = self.attempt(number, answer, failure.outcome,
                                   {"error": failure.error, "status_code": failure.status_code})  # fmt: skip
            return Interpretation(attempt, stop=True, failure=failure)
        response = answer.response
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
        stop, outcome = True, Outcome.OK
        value: BaseModel | None = None
        parse_error: Exception | None = None
        refusal = getattr(getattr(choice, "message", None), "refusal", None) if choice is not None else None
        if choice is None:  # nothing to parse, and nothing a re-ask could quote back
            outcome, fields["error"] = Outcome.INVALID_JSON, "the response has no choices"
        elif refusal:
            outcome, fields["error"] = Outcome.REFUSAL, str(refusal)[:500]
        elif finish == "content_filter":
            outcome, fields["error"] = Outcome.CONTENT_FILTER, "content filtered"
        else:
            if finish == "length":
                outcome = Outcome.TRUNCATED
                fields["error"] = f"output reached the {self.max_tokens}-token bound (finish_reason=length)"
            strip_code_fences(response)
            bound = self.bound
            # page images and no text at all (no text layer, no OCR): nothing to ground values in,
            # so the Grounded fields are not checked and the attempt says so
            ungroundable = self.sends_images(state) and _blank(document)
            try:
                # the document reaches the Grounded validators through a context variable
                # (instructor's validation context is also a Jinja2 template context when its
                # wrapper is used)
                with nullcontext() if ungroundable else grounding_source(document):
                    parsed = bound.handlers.response_parser(
                        response=response, response_model=bound.response_model, validation_context=None,
                        strict=False, stream=False, is_async=True,
                    )  # fmt: skip
            except IncompleteOutputException:
                pass  # recorded as truncated: a re-ask with the same bound would be too
            except _PARSE_ERRORS as exc:
                outcome, fields["errors"] = classify_parse_error(exc)
                fields["error"] = str(exc)[:ERROR_KEEP_CHARS]
                # kept for the re-ask (which quotes it), without its traceback: that would hold
                # this frame, which holds it (a reference cycle per failed answer, left to the GC)
                exc.__traceback__ = exc.__context__ = None
                stop, parse_error = False, exc
            except Exception as exc:  # an answer instructor could not read at all
                outcome, fields["error"] = Outcome.INVALID_JSON, error_text(exc)
            else:
                # hand back a plain instance of the user's own class (instructor's carries its
                # raw completion) with the already-validated values
                schema = bound.schema
                values = {k: v for k, v in parsed.__dict__.items() if k in schema.model_fields}
                value = schema.model_construct(_fields_set=set(parsed.model_fields_set), **values)
                stop = False
                if ungroundable and bound.has_grounded and "error" not in fields:
                    fields["error"] = NOT_GROUNDED
        attempt = self.attempt(number, answer, outcome, fields)
        return Interpretation(attempt, value=value, parse_error=parse_error, response=response, stop=stop)

    def sends_images(self, state: TierState) -> bool:
        """The state's request carries page images."""
        return self.tier.sends_images and bool(image_parts(state.kwargs["messages"][: state.n_original]))

    # -- what next ------------------------------------------------------------------------------
    def decide(self, state: TierState, it: Interpretation) -> Next:
        """What comes after the attempt ``it`` made from ``state``:

        - a valid value: DONE;
        - a transient failure while the retry policy allows another send of the same request:
          RETRY after ``retry_delay`` (Retry-After honoured); any other failure: END_TIER;
        - no choices, a refusal, a content filter, a truncated or an unreadable answer: END_TIER;
        - a validation failure with re-asks left: REASK (instructor's re-ask turns appended; if
          it cannot write them, END_TIER with the reason added to the attempt's error); none
          left: END_TIER.

        Writing the re-ask quotes the failed answer back: CPU-bound on a large one."""
        number = it.attempt.number
        if it.value is not None:
            return Next(NextKind.DONE, value=it.value)
        failure = it.failure
        if failure is not None:
            sent = state.tries + 1
            policy = self.retry_policy
            if failure.transient and sent < policy.max_attempts:
                delay = _retry.retry_delay(sent, failure.headers, policy)
                retry = dataclasses.replace(state, tries=sent, number=number)
                return Next(NextKind.RETRY, retry, delay_s=delay)
            return Next(NextKind.END_TIER)
        if it.stop or it.parse_error is None or state.reasks >= self.tier.max_reasks:
            return Next(NextKind.END_TIER)
        kwargs = dict(state.kwargs, messages=list(state.kwargs["messages"]))  # the handler appends in place
        reask = self.bound.handlers.reask_handler
        try:
            kwargs = reask(kwargs=kwargs, response=it.response, exception=it.parse_error)
        except Exception as exc:  # an answer instructor cannot quote back
            amended = _redact.redact(f"{it.attempt.error} (no re-ask: {error_text(exc)})"[:ERROR_KEEP_CHARS])
            return Next(NextKind.END_TIER, amend_error=amended)
        nxt = dataclasses.replace(state, kwargs=kwargs, reasks=state.reasks + 1, tries=0, number=number)
        return Next(NextKind.REASK, nxt)


def _blank(document: str | SourceIndex) -> bool:
    """The document has no text at all (whitespace only)."""
    text = document.source if isinstance(document, SourceIndex) else document
    return not text or text.isspace()


# -- helpers shared with the live transport ---------------------------------------------------------
def _cut(text: str) -> str:
    return _redact.redact(text)[:ERROR_KEEP_CHARS]  # redacted before it is cut (a cut key matches nothing)


def error_text(exc: BaseException) -> str:
    """What an attempt records as the error of an exception: an HTTP status and the provider's
    message, else the exception (a connection failure by what the socket said); redacted, cut."""
    if isinstance(exc, openai.APIStatusError):
        text = f"HTTP {exc.status_code}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
        if _retry.is_connection_failure(exc):  # what the socket said: the aiohttp transport reports
            root = _retry.root_cause(exc)  # a refused connection as "APITimeoutError: Request timed out."
            if root is not exc:
                text = f"{type(root).__name__}: {root} (via {type(exc).__name__})"
    return _cut(text)


def status_error_text(status: int, body: Any) -> str:
    """``error_text`` of the SDK's status error for an HTTP reply ``status`` with ``body`` (its
    JSON value or text): a batch error line's error, as the live path records the same reply."""
    message, _ = _retry.status_error_message(status, body)
    return _cut(f"HTTP {status}: {message}")


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


def _body(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request body from create()-style arguments: unset values dropped, extra_body merged."""
    body = {k: v for k, v in kwargs.items() if k != "extra_body" and not isinstance(v, (NotGiven, Omit))}
    body.update(kwargs.get("extra_body") or {})
    return body


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
