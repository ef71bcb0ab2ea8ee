"""What both transports (the live one, ``_llm.TierCall``, and the Batch API one,
``batch/_provider.BatchProvider``) put around an HTTP call to a provider: a cap on every body
read (``BODY_CAP``, set per call and read by the client's response hook ``cap_body``, so an error
body the SDK reads itself is capped too; ``read_capped`` for a body read here), and a total
deadline (``within``: the SDK's timeout is per socket read, a slow drip evades it)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable
from contextvars import ContextVar
from typing import TypeVar

import httpx

from . import _retry

T = TypeVar("T")

# the body cap of the call in progress, read by the HTTP client's response hook (an error body is
# read by the SDK itself before it raises: the hook caps that read too)
BODY_CAP: ContextVar[int | None] = ContextVar("extractkit_body_cap", default=None)


class CappedStream(httpx.AsyncByteStream):
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


async def cap_body(response: httpx.Response) -> None:
    """httpx response hook (headers in, body not yet read): cap the body of every status."""
    limit = BODY_CAP.get()
    if limit is not None and isinstance(response.stream, httpx.AsyncByteStream):
        response.stream = CappedStream(response.stream, limit, response.status_code)


if sys.version_info >= (3, 11):

    async def within(seconds: float, work: Awaitable[T]) -> T:
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

    async def within(seconds: float, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, seconds)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no complete response within the {seconds:g} s timeout") from None


async def read_capped(raw: httpx.Response, limit: int) -> bytes:
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
