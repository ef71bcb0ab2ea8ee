"""Retry policy for transient API failures: small pure functions, constants in one place.

The attempt steps (``_steps.Steps.decide``) and the live transport (``_llm.TierCall``) use them:
what an exception from the HTTP call means (``classify``, by the exception types in its chain of
causes, never by message text), what an HTTP error status means when no exception was raised (a
batch error line: ``classify_status``, ``status_error_message``, the same answers as for the
SDK's exception), whether the same request may pass if sent again (``is_transient``), how long to
wait (``retry_delay``), and when the provider counts as down (``CircuitBreaker``).

Validation failures are *not* handled here: those are re-asks (``Steps.decide``, instructor's
re-ask handler). This module decides what to do when the HTTP call itself fails.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import httpx
import openai

from ._errors import ConfigError, ProviderRefused, ProviderUnreachable
from ._results import Outcome

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
CONTEXT_OVERFLOW_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "exceeds the context",
    "context window",
    "too many tokens",
    # llama.cpp's server (the bundled local model): "request (N tokens) exceeds the available
    # context size (M tokens), try increasing it", type exceed_context_size_error
    "exceed_context_size",
    "available context size",
)
MAX_RETRY_AFTER_S = 120.0  # a Retry-After longer than this is not waited out
UNREACHABLE_AFTER = 6  # consecutive connection failures to one base URL before nothing more is sent


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures (408/409/429/5xx, timeouts, connection errors) are retried.

    ``max_attempts`` counts the first call: 4 means one call and up to three retries.
    ``unreachable_after``: after this many consecutive connection failures (refused, reset, DNS,
    TLS) to one base URL, counted across every concurrent call of an Extractor, the extractor
    stops sending to it and raises ``ProviderUnreachable`` (any answer from it resets the count).
    """

    max_attempts: int = 4
    initial_delay_s: float = 0.5
    max_delay_s: float = 20.0
    jitter: float = 0.25  # +/- fraction of the computed backoff
    max_retry_after_s: float = MAX_RETRY_AFTER_S
    unreachable_after: int = UNREACHABLE_AFTER

    def __post_init__(self) -> None:
        if self.unreachable_after < 1:
            raise ConfigError(f"RetryPolicy: unreachable_after must be >= 1, got {self.unreachable_after}")


class ResponseTooLarge(Exception):
    """The response body passed the size cap; reading stopped there."""

    def __init__(self, limit: int, seen: int, status_code: int | None):
        self.limit, self.seen, self.status_code = limit, seen, status_code
        super().__init__(
            f"the response body exceeds the {limit}-byte cap (read stopped at {seen} bytes;"
            " Extractor(max_response_bytes=...) sets the cap)"
        )


class NotACompletion(Exception):
    """HTTP 200 with a body that is not a chat completion (a proxy's HTML error page, an error
    object): an upstream failure, retried like a 502."""

    def __init__(self, message: str, status_code: int | None = 200):
        self.status_code = status_code
        super().__init__(message)


async def sleep(seconds: float) -> None:
    """The sleep used between retries (tests patch this to record delays)."""
    await asyncio.sleep(seconds)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date)."""
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    at = email.utils.mktime_tz(parsed)
    return max(0.0, at - (time.time() if now is None else now))


def backoff_delay(attempt: int, policy: RetryPolicy, rand: float | None = None) -> float:
    """Exponential backoff for retry number ``attempt`` (1 = first retry), with jitter."""
    base = min(policy.max_delay_s, policy.initial_delay_s * (2 ** max(0, attempt - 1)))
    r = random.random() if rand is None else rand
    return max(0.0, base * (1 + policy.jitter * (2 * r - 1)))


def retry_delay(
    attempt: int, headers: Mapping[str, str] | None, policy: RetryPolicy, rand: float | None = None
) -> float:
    """Retry-After when the server gave a usable one, otherwise backoff."""
    after = parse_retry_after(headers)
    if after is not None and after <= policy.max_retry_after_s:
        return after
    return backoff_delay(attempt, policy, rand)


def _overflow_said(status: int, code: object, message: str, body: object) -> bool:
    if status not in (400, 413):
        return False
    text = f"{code} {message} {body}".lower()
    return any(marker in text for marker in CONTEXT_OVERFLOW_MARKERS)


def is_context_overflow(exc: BaseException) -> bool:
    if not isinstance(exc, openai.APIStatusError):
        return False
    return _overflow_said(exc.status_code, getattr(exc, "code", None), exc.message, getattr(exc, "body", ""))


def status_error_message(status: int, body: object) -> tuple[str, object]:
    """The message and the error body of the SDK's ``APIStatusError`` for an HTTP error reply
    whose body is ``body`` (its JSON value, or its text; None: empty), built as the openai client
    builds them (``_make_status_error_from_response``): a batch error line is described exactly
    as the same reply on the live path."""
    value: object = body
    if body is None or isinstance(body, (str, bytes)):
        text = (body.decode("utf-8", "replace") if isinstance(body, bytes) else body or "").strip()
        try:
            value = json.loads(text)
        except ValueError:
            return text or f"Error code: {status}", text
    data = value.get("error", value) if isinstance(value, Mapping) else value
    return f"Error code: {status} - {value}", data


def classify_status(status: int, body: object) -> Outcome:
    """``classify`` for an HTTP error reply known by its status and body (a batch error line):
    the outcome the live path records for the same reply."""
    if status == 429:
        return Outcome.RATE_LIMITED
    message, data = status_error_message(status, body)
    code = data.get("code") if isinstance(data, dict) else None
    return Outcome.CONTEXT_OVERFLOW if _overflow_said(status, code, message, data) else Outcome.API_ERROR


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was explicitly raised from (``raise ... from``), outermost first: the
    SDK and the transports wrap the socket's error that way (openai.APITimeoutError <-
    httpx.ConnectTimeout <- aiohttp.ClientConnectorError <- ConnectionRefusedError)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(seen) < 16:
        seen.add(id(e))
        yield e
        e = e.__cause__


# nothing answered: the connection was refused, reset or dropped before a response, the name did
# not resolve, or TLS failed. (Connect *timeouts* stay `timeout`.)
_CONNECTION_FAILURES: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted, broken pipe
    socket.gaierror,  # DNS
    ssl.SSLError,  # TLS (certificate verification included)
    httpx.ConnectError,
    httpx.RemoteProtocolError,  # "Server disconnected without sending a response"
)


_TIMEOUTS = (openai.APITimeoutError, httpx.TimeoutException, TimeoutError, asyncio.TimeoutError)

# the server answered, then the connection broke while the body was read (reset mid-body, a
# Content-Length never met): the same request may well pass, but the provider is reachable, so
# it is a transient api_error, not a connection failure for the circuit breaker
_BROKEN_READS: tuple[type[BaseException], ...] = (httpx.ReadError, httpx.WriteError, httpx.CloseError,
                                                  httpx.RemoteProtocolError)  # fmt: skip


def _broken_reads() -> tuple[type[BaseException], ...]:
    aiohttp = sys.modules.get("aiohttp")
    return _BROKEN_READS if aiohttp is None else (*_BROKEN_READS, aiohttp.ClientPayloadError)


def _connection_failures() -> tuple[type[BaseException], ...]:
    # the aiohttp transport's own types, when it is in use (no import otherwise: none can occur).
    # It maps a refused connection to httpx.ConnectTimeout, so its types are checked by name here.
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return _CONNECTION_FAILURES
    return (*_CONNECTION_FAILURES, aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError)


def is_connection_failure(exc: BaseException) -> bool:
    kinds = _connection_failures()
    return any(isinstance(e, kinds) for e in causes(exc))


def classify(exc: BaseException) -> Outcome:
    """The attempt outcome for an exception raised by the HTTP call (by type, along its causes)."""
    if isinstance(exc, ResponseTooLarge):
        return Outcome.RESPONSE_TOO_LARGE
    if isinstance(exc, openai.APIStatusError):  # the server answered
        if isinstance(exc, openai.RateLimitError):
            return Outcome.RATE_LIMITED
        return Outcome.CONTEXT_OVERFLOW if is_context_overflow(exc) else Outcome.API_ERROR
    if is_connection_failure(exc):
        return Outcome.CONNECTION_ERROR
    if any(isinstance(e, _TIMEOUTS) for e in causes(exc)):
        return Outcome.TIMEOUT
    return Outcome.API_ERROR


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same request may succeed."""
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUSES
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, NotACompletion)):
        return True
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return True
    if classify(exc) in (Outcome.TIMEOUT, Outcome.CONNECTION_ERROR):
        return True
    kinds = _broken_reads()
    return any(isinstance(e, kinds) for e in causes(exc))


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of the chain (what the socket said)."""
    *_, last = causes(exc)
    return last


def status_code(exc: BaseException) -> int | None:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, int) else None


def response_headers(exc: BaseException | None) -> Mapping[str, str] | None:
    if isinstance(exc, openai.APIStatusError):
        return exc.response.headers
    return None


class CircuitBreaker:
    """Consecutive connection failures per base URL, shared by every call of one Extractor.

    ``failed`` counts one; at ``threshold`` the URL is *open*: ``check`` raises
    ``ProviderUnreachable`` before anything is sent to it, in this call and every later one,
    until ``reset`` (the extractor's ``close`` / ``aclose``). ``answered`` (any HTTP response,
    even an error status) sets the count back to zero. Timeouts count neither way.
    """

    def __init__(self, threshold: int):
        self.threshold = threshold
        self._failures: dict[str, int] = {}
        self._last: dict[str, str] = {}
        self._refused: dict[str, str] = {}  # URLs that refused the credentials (401): why
        self._lock = threading.Lock()

    def check(self, url: str) -> None:
        n = self._failures.get(url, 0)
        if n >= self.threshold:
            raise self._error(url, n)

    def failed(self, url: str, exc: BaseException) -> None:
        """One more connection failure; raises ``ProviderUnreachable`` when that opens the URL."""
        root = root_cause(exc)
        with self._lock:
            n = self._failures[url] = self._failures.get(url, 0) + 1
            self._last[url] = f"{type(root).__name__}: {root}"[:300]
        if n >= self.threshold:
            raise self._error(url, n) from exc

    def refused(self, url: str, exc: BaseException) -> None:
        """The provider refused the credentials (HTTP 401): open the URL at once and raise
        ``ProviderRefused``; nothing more is sent there until ``reset``."""
        # the kind of refusal, never the provider's message: a 401 body often quotes the key it refused
        code = getattr(exc, "code", None)
        detail = type(exc).__name__ + (f", code {code}" if isinstance(code, str) and len(code) < 60 else "")
        with self._lock:
            self._failures[url] = max(self.threshold, 1)
            self._last[url] = detail
            self._refused[url] = detail
        raise self._error(url, 1) from None  # not chained: the SDK's error quotes the refused key

    def answered(self, url: str) -> None:
        if self._failures:  # the common case (nothing failed) costs one truth test
            with self._lock:
                if url not in self._refused:  # a refused key stays refused until reset
                    self._failures.pop(url, None)

    def is_open(self, url: str) -> bool:
        return self._failures.get(url, 0) >= self.threshold

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()
            self._last.clear()
            self._refused.clear()

    def _error(self, url: str, n: int) -> ProviderUnreachable:
        refused = self._refused.get(url)
        if refused is not None:
            return ProviderRefused(
                f"the provider refused the API key: {url} answered HTTP 401 ({refused}); check "
                "OPENAI_API_KEY (or the variable the tier's api_key_env names); nothing more is sent to it",
                url=url,
                failures=1,
            )
        last = self._last.get(url)
        return ProviderUnreachable(
            f"provider unreachable: {url} did not answer {n} consecutive requests"
            + (f" (last: {last})" if last else "")
            + "; nothing more is sent to it until the extractor is closed",
            url=url,
            failures=n,
        )
