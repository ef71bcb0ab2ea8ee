"""A pacing rate limiter for requests/minute and tokens/minute.

It spaces requests out (one every 60/rpm seconds, and tokens at tpm/60 a second) instead of
letting a burst through and retrying 429s: a provider may enforce a per-minute limit over
shorter windows, and a burst-and-retry loop was measured here to lose most of its requests.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Limiter(Protocol):
    """What a tier call needs of a rate limiter: ``acquire`` before each request (``tokens``: its
    estimated prompt and output tokens) and ``penalize`` after a 429 (``retry_after``: seconds,
    or None when the provider did not say). ``RateLimiter`` is one."""

    async def acquire(self, tokens: int) -> None: ...

    def penalize(self, retry_after: float | None) -> None: ...


class RateLimiter:
    def __init__(self, rpm: float | None = None, tpm: float | None = None, *,
                 headroom: float = 0.97):  # fmt: skip
        self.rpm = rpm * headroom if rpm else None
        self.tpm = tpm * headroom if tpm else None
        self._next_request = 0.0
        self._next_tokens = 0.0
        self._lock = asyncio.Lock()
        self.waited_s = 0.0

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self._lock:
            now = time.monotonic()
            start = now
            if self.rpm:
                start = max(start, self._next_request)
            if self.tpm:
                start = max(start, self._next_tokens)
            if self.rpm:
                self._next_request = max(start, self._next_request) + 60.0 / self.rpm
            if self.tpm:
                cost = min(tokens, self.tpm) * 60.0 / self.tpm
                self._next_tokens = max(start, self._next_tokens) + cost
        delay = start - time.monotonic()
        if delay > 0:
            self.waited_s += delay
            await asyncio.sleep(delay)

    def penalize(self, retry_after: float | None) -> None:
        """After a 429: hold every later request back by Retry-After (or one slot)."""
        pause = retry_after if retry_after is not None else (60.0 / self.rpm if self.rpm else 1.0)
        until = time.monotonic() + pause
        self._next_request = max(self._next_request, until)
        self._next_tokens = max(self._next_tokens, until)
