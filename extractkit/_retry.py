"""Retry policy for transient API failures: small pure functions, constants in one place.

tenacity drives the loop (``_llm.TierCall._create``); these functions decide what it does.

Validation failures are *not* handled here: those are re-asks, done by instructor inside a tier.
This module decides what to do when the HTTP call itself fails.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import openai

from ._results import Outcome

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
CONTEXT_OVERFLOW_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "exceeds the context",
    "context window",
    "too many tokens",
)
MAX_RETRY_AFTER_S = 120.0  # a Retry-After longer than this is not waited out


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures (408/409/429/5xx, timeouts, connection errors) are retried.

    ``max_attempts`` counts the first call: 4 means one call and up to three retries.
    """

    max_attempts: int = 4
    initial_delay_s: float = 0.5
    max_delay_s: float = 20.0
    jitter: float = 0.25  # +/- fraction of the computed backoff
    max_retry_after_s: float = MAX_RETRY_AFTER_S


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


def is_context_overflow(exc: BaseException) -> bool:
    if not isinstance(exc, openai.APIStatusError) or exc.status_code not in (400, 413):
        return False
    code = getattr(exc, "code", None)
    text = f"{code} {exc.message} {getattr(exc, 'body', '')}".lower()
    return any(marker in text for marker in CONTEXT_OVERFLOW_MARKERS)


def classify(exc: BaseException) -> Outcome:
    """The attempt outcome for an exception raised by the HTTP call."""
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError)):
        return Outcome.TIMEOUT
    if isinstance(exc, openai.RateLimitError):
        return Outcome.RATE_LIMITED
    if is_context_overflow(exc):
        return Outcome.CONTEXT_OVERFLOW
    return Outcome.API_ERROR


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same request may succeed."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUSES
    return False


def status_code(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, openai.APIStatusError) else None


def response_headers(exc: BaseException | None) -> Mapping[str, str] | None:
    if isinstance(exc, openai.APIStatusError):
        return exc.response.headers
    return None
