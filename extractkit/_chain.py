"""The Extractor: runs the tiers in order and applies the escalation policy.

The core is async (``aextract``); ``extract`` is a thin sync wrapper that runs it on the
extractor's own event loop in a background thread, kept between calls so that connections are
reused (``close()`` or ``with extractor:`` ends it; so does garbage collection). Async callers
reuse connections per event loop and close them with ``await extractor.aclose()`` or
``async with extractor``.

Who owns what: the extractor's ``ledger`` and ``limiter`` are given to it at construction and
only this module assigns them. A driver that owns a run of its own (the batch runner, eval) does
not change them: it passes its ledger, run id and limiter to each call (``aextract_in_run``), and
it does not close the extractor, which stays open for its caller (whoever made it closes it). A
ledger the extractor opened from a path is closed by the extractor.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from . import _retry
from ._chunking import MIN_CHUNK_TOKENS, Chunk
from ._chunking import split as split_chunks
from ._errors import ConfigError, DocumentError, ExtractionFailed, ProviderUnreachable
from ._grounding import Span, grounding_source, has_grounded, spans_for
from ._llm import MAX_RESPONSE_BYTES, TierCall, make_client
from ._merge import Conflict, merge, relaxed_schema
from ._merge import policies as merge_policies
from ._pages import Page
from ._pricing import Price, lookup_price
from ._results import FAILURE_OUTCOMES, Attempt, Outcome, Result
from ._schema import canonical_json, check_schema, schema_hash, short_hash
from ._steps import ERROR_KEEP_CHARS, Answer, Steps, classify_parse_error
from ._sync import LoopThread
from ._tiers import BoundTier, Tier
from ._tokens import png_size
from .ledger import Ledger, RecordingLedger, is_url

if TYPE_CHECKING:
    from ._pages import Page
    from .batch import URI, ItemResult, Limiter

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")


@dataclass(frozen=True)
class EscalationPolicy:
    """What the chain does when a tier fails.

    A tier ends when it answers validly, exhausts its re-asks (invalid_json, schema_invalid,
    ungrounded), or hits an outcome that re-asking cannot fix (refusal, truncated,
    content_filter, context_overflow) or transient failures outlast ``retry``. If the tier's last
    outcome is in ``escalate_on`` the next tier runs; otherwise the chain stops there.
    """

    escalate_on: frozenset[Outcome] = FAILURE_OUTCOMES
    retry: _retry.RetryPolicy = field(default_factory=_retry.RetryPolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "escalate_on", frozenset(Outcome(o) for o in self.escalate_on))
        if Outcome.OK in self.escalate_on:
            raise ConfigError("escalate_on cannot contain 'ok'")

    def should_escalate(self, last: Attempt | None) -> bool:
        return last is None or last.outcome in self.escalate_on


CHUNK_CONCURRENCY = 4  # a long document's chunks in flight at once (each paced by the limiter)
CHUNK_ROOM_SHARE = 0.9  # of a tier's room for document text a chunk may fill (a margin on the count)


def _no_room(steps: Steps, error: str | None, budget: int | None) -> str:
    """A live run's context_overflow for a tier whose context leaves no room for a chunk: what the
    prompt and the output cap take of the context, and what to change (the overflow's note on
    Batch API waves is for a batch run: left out)."""
    said = (error or "context_overflow").split('; long_documents = "chunk" splits', 1)[0]
    window, fixed, out = steps.context_window, steps.prompt_tokens(), steps.max_tokens
    left = "no room" if budget is None or budget <= 0 else f"only {budget} tokens"
    used = f"{(fixed or 0) + out} of the {window}-token context"
    return (f"{said}; too small a context to chunk it: the tier's prompt without the document (about {fixed} "
            f"tokens) and its {out} output tokens take {used}, leaving {left} for a chunk (at least "
            f"{MIN_CHUNK_TOKENS} needed): raise context_window if the model has more, lower "
            'max_output_tokens, or set long_documents = "refuse"')


def _overflowed(attempts: list[Attempt]) -> bool:
    """The tier refused the whole document unsent, for its length: the one attempt it made."""
    return len(attempts) == 1 and attempts[0].outcome is Outcome.CONTEXT_OVERFLOW


def document_sha256(text: str, images: Sequence[bytes] = ()) -> str:
    """A document's identity: the sha256 of its text; with page images (a vision tier's answer
    depends on the pixels) of its text, a NUL and the sha256 of the images' own digests."""
    if not images:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    pixels = hashlib.sha256(b"".join(hashlib.sha256(png).digest() for png in images)).hexdigest()
    return hashlib.sha256(f"{text}\0{pixels}".encode()).hexdigest()


def _check_images(tiers: Sequence[Tier], images: Sequence[bytes]) -> tuple[bytes, ...]:
    """The page images the ``tiers`` are given, as a tuple, checked: each a PNG, and some for a
    tier that sends only them (``input = "images"``: ``DocumentError`` ``no_images`` before
    anything is sent). None when no tier sends images: then they change nothing, identity included."""
    if not any(t.sends_images for t in tiers):
        return ()
    images = tuple(images)
    for png in images:
        if not isinstance(png, (bytes, bytearray)):
            raise TypeError(f"images must be PNG bytes, got {type(png).__name__}")
        try:
            png_size(png)
        except ValueError as exc:
            raise DocumentError(f"a page image is not a PNG: {exc}", kind="bad_image") from None
    if not images:
        for tier in tiers:
            if tier.input == "images":
                raise DocumentError(
                    f'tier {tier.name} sends page images only (input = "images") and this document has '
                    'none (a text file, or loaded without images): use input = "text+images" to fall back '
                    "to the text, or give it a PDF or an image",
                    kind="no_images",
                )
    return images


SPANS_INLINE_CHARS = 32_000  # a longer text's spans are found in a worker thread, off the event loop


async def value_spans_of(value: BaseModel, text: str, pages: Sequence[Page] = ()) -> dict[str, list[Span]]:
    """Where each grounded value of a final ``value`` was found in ``text`` (``_grounding.spans_for``):
    inline for a short text, in a worker thread for a long one (linear, but a 2 MB text takes a
    while); nothing to do for a schema without grounded fields."""
    if not has_grounded(type(value)):
        return {}
    if len(text) <= SPANS_INLINE_CHARS:
        return spans_for(value, text, pages)
    return await asyncio.to_thread(spans_for, value, text, pages)


class Extractor(Generic[T]):
    """Extracts ``schema`` from text with a chain of tiers, cheapest first.

    >>> extractor = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini")])  # doctest: +SKIP
    >>> result = extractor.extract(text)                                         # doctest: +SKIP

    ``max_response_bytes`` caps a response body: reading stops there and the attempt is recorded
    ``response_too_large`` (default 4 MiB; an answer bounded by the tier's output tokens is a few
    kB). The extractor holds a circuit breaker per base URL (see ``aextract``).

    ``ledger`` records every call: a ``Ledger`` (or any ``RecordingLedger``), left open for its
    owner to close, or a path (str or ``os.PathLike``) that the extractor opens as a ``Ledger``
    and closes in ``close()`` / ``aclose()`` (the next call reopens it). ``limiter`` (a
    ``Limiter``, e.g. ``RateLimiter(rpm=500)``) paces every request. Both are fixed here: a batch
    or an eval records into its own ledger without changing them (see ``aextract_in_run``).
    """

    def __init__(
        self,
        schema: type[T],
        tiers: Sequence[Tier],
        *,
        policy: EscalationPolicy | None = None,
        raise_on_failure: bool = False,
        prices: Mapping[str, Price] | None = None,
        ledger: RecordingLedger | str | os.PathLike[str] | None = None,
        limiter: Limiter | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self.schema: type[T] = check_schema(schema)  # type: ignore[assignment]
        if max_response_bytes <= 0:
            raise ConfigError(f"max_response_bytes must be > 0, got {max_response_bytes}")
        self.max_response_bytes = max_response_bytes
        if not tiers:
            raise ConfigError("an Extractor needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"tier names must be unique, got {names}; set name= on a tier")
        self.tiers = list(tiers)
        self.policy = policy or EscalationPolicy()
        self.raise_on_failure = raise_on_failure
        self.prices = dict(prices) if prices else None
        # a path is opened here and closed by close() / aclose() (a later call reopens it)
        self._ledger_path: str | Path | None = None
        self._owned_ledger: Ledger | None = None
        if isinstance(ledger, (str, os.PathLike)):
            self._ledger_path = ledger if isinstance(ledger, str) and is_url(ledger) else Path(ledger)
            ledger = self._owned_ledger = Ledger(self._ledger_path)
        elif ledger is not None and not isinstance(ledger, RecordingLedger):
            raise TypeError(f"ledger must be a Ledger, a path or None, got {type(ledger).__name__}")
        self.ledger: RecordingLedger | None = ledger
        self.limiter: Limiter | None = limiter
        # consecutive connection failures per base URL, across every concurrent call
        self._breaker = _retry.CircuitBreaker(self.policy.retry.unreachable_after)
        self.schema_hash = schema_hash(self.schema)
        # examples are validated and indexed once, here, not per call
        self._bound = {t.name: BoundTier(t, self.schema) for t in self.tiers}
        # each tier's attempt steps (request, interpretation, re-ask / retry rules), shared by
        # the live transport (TierCall) and the batch waves
        self._chunk_steps_made: dict[str, Steps] = {}  # per tier, for long documents (_chunk_steps)
        self._steps = {
            t.name: Steps(self._bound[t.name], schema_hash=self.schema_hash, retry_policy=self.policy.retry,
                          price=t.price or lookup_price(t.model, self.prices),
                          batch_price=t.resolved_batch_price(self.prices))  # fmt: skip
            for t in self.tiers
        }
        # tiers and policy are frozen: the chain's identity is computed once
        self.config_hash = short_hash(canonical_json(self.describe()))
        # a tier run alone (eval) is identified by itself, not by the chain around it
        self.tier_hashes = {
            name: short_hash(canonical_json({"schema_hash": self.schema_hash, "tier": bound.describe()}))
            for name, bound in self._bound.items()
        }
        self._batches: set[asyncio.Task[Any]] = set()  # aextract_many runs in flight: aclose stops them
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, openai.AsyncOpenAI]] = (
            weakref.WeakKeyDictionary()
        )
        self._run_id: str | None = None  # the library run of calls without a run_id
        self._run_counts: dict[str, int] = {}
        self._sync_lock = threading.Lock()
        self._loop_thread: LoopThread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- identity -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Everything that changes answers; hashed into ``config_hash``. No secrets."""
        return {
            "schema": self.schema.__name__,
            "schema_hash": self.schema_hash,
            "tiers": [self._bound[t.name].describe() for t in self.tiers],  # examples by content
            "escalate_on": sorted(o.value for o in self.policy.escalate_on),
            # how a long document's chunks are merged, when the schema declares it (Merge)
            **({"merge": merging} if (merging := merge_policies(self.schema)) else {}),
        }

    @property
    def needs_images(self) -> bool:
        """Some tier sends page images (``input`` "images" or "text+images"): documents are then
        loaded with their page images (the batch runner, ``--dry-run``)."""
        return any(t.sends_images for t in self.tiers)

    def steps(self, name: str) -> Steps:
        """The attempt steps of tier ``name`` (``_steps.Steps``): what the batch waves drive."""
        self.tier(name)  # a ConfigError naming the tiers when there is none by that name
        return self._steps[name]

    def tier(self, name: str) -> Tier:
        for t in self.tiers:
            if t.name == name:
                return t
        raise ConfigError(f"no tier named {name!r}; tiers are {[t.name for t in self.tiers]}")

    def _library_run_id(self) -> str:
        """Library calls are grouped in one run per extractor and ledger, from the first call to
        ``close()`` / ``aclose()``, which mark it done with its counts."""
        if self._run_id is None:
            describe, ledger = self.describe(), self.ledger
            assert ledger is not None, "a library run is started only to record into a ledger"
            self._run_id = ledger.start_run("library", describe, self.config_hash, self.schema_hash)
            self._run_counts = {"n_documents": 0, "n_ok": 0, "n_failed": 0}
        return self._run_id

    def _finish_library_run(self) -> None:
        run_id, self._run_id = self._run_id, None
        if run_id is not None and self.ledger is not None:
            self.ledger.finish_run(run_id, "done", **self._run_counts)
        owned, self._owned_ledger = self._owned_ledger, None
        if owned is not None:  # opened from a path by this extractor: closed with it
            owned.close()
            if self.ledger is owned:
                self.ledger = None  # reopened by the next call

    def _current_ledger(self) -> RecordingLedger | None:
        """The ledger this extractor's own calls record into; a ledger given as a path and closed
        by ``close()`` / ``aclose()`` is opened again."""
        if self.ledger is None:
            with self._sync_lock:
                if self.ledger is None and self._ledger_path is not None and self._owned_ledger is None:
                    self.ledger = self._owned_ledger = Ledger(self._ledger_path)
        return self.ledger

    # -- clients --------------------------------------------------------------------------------
    async def _client(self, tier: Tier) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        per_loop = self._clients.setdefault(loop, {})
        client = per_loop.get(tier.name)
        if client is None:
            local_url = None
            if tier.is_local:  # the local server takes up to a minute to start: off the loop, once
                from .local import alocal_base_url

                local_url = await alocal_base_url()
            client = per_loop.get(tier.name)  # another call may have made it meanwhile
            if client is None:
                client = per_loop[tier.name] = make_client(tier, local_url=local_url)
        return client

    async def aclose(self) -> None:
        """Close this event loop's connections, mark the library run (if any) done and reset the
        circuit breaker (a provider found unreachable is tried again by the next call)."""
        loop = asyncio.get_running_loop()
        # an `aextract_many` left early (a `break` in `async for`) still runs until its iterator is
        # closed: stop it first, so its run is marked `interrupted` while its ledger is open
        batches = [t for t in self._batches if not t.done() and t.get_loop() is loop]
        for t in batches:
            t.cancel()
        if batches:
            await asyncio.gather(*batches, return_exceptions=True)
        for client in self._clients.pop(loop, {}).values():
            await client.close()
        self._finish_library_run()
        self._breaker.reset()

    def _adopt(self, task: asyncio.Task[Any]) -> None:
        """A batch ``aextract_many`` started: ``aclose`` stops it before closing what it records into."""
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def __aenter__(self) -> Extractor[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _sync(self) -> LoopThread:
        """The event loop of the sync calls, started at the first one."""
        with self._sync_lock:
            lt = self._loop_thread
            if lt is None or not lt.usable:
                lt = self._loop_thread = LoopThread()
                clients = self._clients.setdefault(lt.loop, {})
                # closes the loop's connections when the extractor is collected or at exit
                self._finalizer = weakref.finalize(self, lt.close, functools.partial(_close_clients, clients))
            return lt

    def close(self) -> None:
        """End the sync calls' event loop and close its connections (async: ``await aclose()``),
        and reset the circuit breaker. A later ``extract`` starts a new loop."""
        with self._sync_lock:
            finalizer, self._finalizer, self._loop_thread = self._finalizer, None, None
        if finalizer is not None:
            finalizer()
        self._finish_library_run()
        self._breaker.reset()

    def __enter__(self) -> Extractor[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_sync(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro``, async code that uses this extractor, on the extractor's own event loop
        (the one ``extract`` runs on) and return its result: its connections are reused and
        closed by ``close()``. Sync wrappers such as ``evaluate`` use it."""
        return self._sync().run(coro)

    # -- extraction -----------------------------------------------------------------------------
    async def aextract(
        self,
        text: str,
        *,
        only: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
        size: int | None = None,
        doc_type: str | None = None,
        config_hash: str | None = None,
        forced_tier: str | None = None,
        pages: Sequence[Page] = (),
        sha256: str | None = None,
        images: Sequence[bytes] = (),
    ) -> Result[T]:
        """Extract from ``text``. ``only="few_shot"`` forces one tier (no escalation), for eval.

        ``images``: the document's page images (PNG bytes, one per page), sent by the tiers whose
        ``input`` is ``"images"`` or ``"text+images"`` (``needs_images``) and ignored by the
        others. A tier with ``input = "images"`` and no images raises ``DocumentError``
        (``no_images``) before anything is sent; ``"text+images"`` without them sends the text.
        With images the document's identity covers them (``document_sha256``).

        ``Result.spans`` says where each grounded value was found in ``text`` (and on which of
        ``pages``, the document's ``_pages.Page`` list, when given).

        The other keywords are recorded in the ledger with the result (see ``Ledger.record``):
        ``run_id`` (default: the extractor's library run), the document's ``path``, ``size`` and
        ``doc_type``, and ``config_hash`` / ``forced_tier`` (set by ``only``); a loaded document's
        ``pages`` (``Document.pages``: where its text came from, recorded with it) and ``sha256``
        (``Document.sha256``, its identity when it is not the text's own: OCR'd pages, images).
        Any other keyword is a ``TypeError``.

        Provider unreachable: the extractor counts consecutive connection failures (refused,
        reset, DNS, TLS) per base URL across all its concurrent calls; any answer from that URL
        resets the count. At ``policy.retry.unreachable_after`` (``RetryPolicy``, default 6) it
        stops sending there: this call and every later one raise ``ProviderUnreachable`` (``.url``,
        ``.failures``; the message names the URL) before sending anything to it, until
        ``close()`` / ``aclose()``. A call that made attempts before the breaker stopped it is
        recorded in the ledger first, its final outcome ``connection_error`` (a transient failure:
        a rerun retries the document), then raises; a call stopped before its first attempt
        records nothing. (When the breaker stops a call between tiers, the tier it did not send
        is recorded as a ``connection_error`` attempt marked "not sent", as ``context_overflow``
        is, so the final outcome says why the call stopped.) A batch stops on it and leaves the
        remaining documents unattempted.
        """
        result, unreachable = await self._run_tiers(text, only, self.limiter, pages, images)
        if sha256:
            result = replace(result, document_sha256=sha256)
        record: dict[str, Any] = {"run_id": run_id, "path": path, "size": size, "doc_type": doc_type}
        record.update({k: v for k, v in (("config_hash", config_hash), ("forced_tier", forced_tier),
                                         ("pages", tuple(pages))) if v})  # fmt: skip
        ledger = self._current_ledger()
        if ledger is not None and run_id is None:
            record["run_id"] = self._library_run_id()
            counts = self._run_counts
            counts["n_documents"] += 1
            counts["n_ok" if result.ok else "n_failed"] += 1
        return await self._finish(text, result, unreachable, ledger, only, record, pages)

    async def aextract_in_run(
        self,
        text: str,
        *,
        ledger: RecordingLedger | None,
        run_id: str,
        limiter: Limiter | None = None,
        only: str | None = None,
        path: str | None = None,
        size: int | None = None,
        doc_type: str | None = None,
        pages: Sequence[Page] = (),
        sha256: str | None = None,
        images: Sequence[bytes] = (),
    ) -> Result[T]:
        """``aextract`` for a driver that owns a run of its own (the batch runner, eval): the
        result is recorded into ``ledger`` (None: not recorded) under ``run_id``, and the requests
        are paced by ``limiter`` (None: not paced). The extractor's own ``ledger`` and ``limiter``
        are neither used nor changed, and the extractor stays open: the driver passes what its
        run needs, and closes only what it opened. Raises as ``aextract`` does."""
        result, unreachable = await self._run_tiers(text, only, limiter, pages, images)
        if sha256:
            result = replace(result, document_sha256=sha256)
        record: dict[str, Any] = {"run_id": run_id, "path": path, "size": size, "doc_type": doc_type}
        if pages:
            record["pages"] = tuple(pages)
        return await self._finish(text, result, unreachable, ledger, only, record, pages)

    async def _run_tiers(
        self,
        text: str,
        only: str | None,
        limiter: Limiter | None,
        pages: Sequence[Any] = (),
        images: Sequence[bytes] = (),
    ) -> tuple[Result[T], ProviderUnreachable | None]:
        """Run the tiers (or tier ``only``) on ``text``: the result, and the ``ProviderUnreachable``
        that stopped it after it made attempts (raised here when it stopped before the first).
        A document too long for a tier with ``long_documents = "chunk"`` is extracted in chunks
        (cut on ``pages``' boundaries when given, see ``_run_chunks``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        tiers = [self.tier(only)] if only else self.tiers
        images = _check_images(tiers, images)
        started = time.perf_counter()
        attempts: list[Attempt] = []
        value: T | None = None
        winner: str | None = None
        unreachable: ProviderUnreachable | None = None
        waited = 0.0  # in the client-side rate limiter's queue: the run's pacing, not this document's latency
        conflicts: tuple[Conflict, ...] = ()
        for tier in tiers:
            call = await self._tier_call(tier, text, limiter, images=images)
            try:
                got = await call.run()
                # a tier sending page images is not chunked (the pages are the document): it
                # stays context_overflow; its text alone is chunked when it has no images to send
                chunkable = tier.long_documents == "chunk" and not (images and tier.sends_images)
                if got is None and chunkable and _overflowed(call.attempts):
                    got, conflicts = await self._run_chunks(tier, text, pages, limiter, call)
            except ProviderUnreachable as exc:
                unreachable = exc
                last = call.attempts[-1] if call.attempts else None
                # its last attempt already says why (a connection failure, a refused key)
                said = last is not None and (
                    last.outcome is Outcome.CONNECTION_ERROR or last.status_code == 401
                )
                if (attempts or call.attempts) and not said:
                    call.record_unreachable(exc)  # so the final outcome says why it stopped
                break
            finally:
                attempts.extend(call.attempts)
                waited += call.waited_s
            if got is not None:
                value, winner = got, tier.name  # type: ignore[assignment]
                break
            if not self.policy.should_escalate(call.attempts[-1] if call.attempts else None):
                break
        if unreachable is not None and not attempts:
            raise unreachable  # stopped before its first request: nothing to record
        result: Result[T] = Result(
            value=value,
            tier=winner,
            attempts=attempts,
            latency_s=round(max(0.0, time.perf_counter() - started - waited), 6),
            schema_hash=self.schema_hash,
            document_sha256=document_sha256(text, images),
            conflicts=conflicts if value is not None else (),
        )
        return result, unreachable

    async def _tier_call(
        self,
        tier: Tier,
        text: str,
        limiter: Limiter | None,
        steps: Steps | None = None,
        images: Sequence[bytes] = (),
    ) -> TierCall:
        steps = steps or self._steps[tier.name]
        return TierCall(
            steps.bound,
            await self._client(tier),
            text,
            retry_policy=self.policy.retry,
            schema_hash=self.schema_hash,
            limiter=limiter,
            breaker=self._breaker,
            max_response_bytes=self.max_response_bytes,
            steps=steps,
            images=images,
        )

    # -- long documents ---------------------------------------------------------------------------
    def _chunk_steps(self, tier: Tier) -> Steps:
        """The steps of ``tier`` asking for the relaxed schema (every field optional): what one
        chunk of a long document is asked. Made the first time a document needs them."""
        steps = self._chunk_steps_made.get(tier.name)
        if steps is None:
            whole = self._steps[tier.name]
            steps = Steps(BoundTier(tier, relaxed_schema(self.schema)), schema_hash=self.schema_hash,
                          retry_policy=self.policy.retry, price=whole.price,
                          batch_price=whole.batch_price)  # fmt: skip
            self._chunk_steps_made[tier.name] = steps
        return steps

    async def _run_chunks(
        self, tier: Tier, text: str, pages: Sequence[Any], limiter: Limiter | None, call: TierCall
    ) -> tuple[T | None, tuple[Conflict, ...]]:
        """``text`` did not fit ``tier``'s context (``call`` holds the one attempt that says so):
        cut it into chunks that fit (``_chunking.split``, in a worker thread), extract each with
        the relaxed schema, ``CHUNK_CONCURRENCY`` at a time (each request paced by ``limiter``
        as any other), each answer grounded against its own chunk; then merge them by the
        schema's ``Merge`` policies and validate the merged value against the full schema,
        grounded against the whole document. ``call.attempts`` becomes the chunks' attempts
        (``Attempt.chunk`` set, numbered from 1 across the tier), in chunk order with a failed
        chunk's last; a merged value that
        fails validation adds one attempt (``chunk`` None, nothing sent) with its outcome, so
        the chain escalates on it like on any validation failure. Returns the value (None: a
        chunk failed, or the merged value did) and the conflicts between chunks."""
        steps = self._chunk_steps(tier)
        room = await asyncio.to_thread(steps.document_room)
        budget = None if room is None else int(room * CHUNK_ROOM_SHARE)
        if tier.chunk_tokens is not None and budget is not None:
            budget = min(budget, tier.chunk_tokens)
        if budget is None or budget < MIN_CHUNK_TOKENS:
            last = call.attempts[-1]
            said = await asyncio.to_thread(_no_room, steps, last.error, budget)  # counts the prompt
            call.attempts[-1] = replace(last, error=said)
            return None, ()
        chunks = await asyncio.to_thread(split_chunks, text, max_tokens=budget,
                                         overlap_tokens=tier.chunk_overlap, pages=pages)  # fmt: skip
        gate = asyncio.Semaphore(CHUNK_CONCURRENCY)

        async def one(chunk: Chunk) -> tuple[Chunk, TierCall, BaseModel | None | BaseException]:
            async with gate:
                c = await self._tier_call(tier, chunk.text, limiter, steps)
                try:
                    return chunk, c, await c.run()
                except Exception as exc:  # ProviderUnreachable: raised below, after every chunk
                    return chunk, c, exc

        done = await asyncio.gather(*(one(c) for c in chunks))
        failed = [isinstance(v, BaseException) or v is None for _, _, v in done]
        # the failed chunks last: the tier's last attempt says why it failed
        order = sorted(range(len(done)), key=lambda k: (failed[k], k))
        # numbered in the tier as one run of attempts (the reports count a tier's documents by its
        # attempt number 1): chunk by chunk, each chunk's own in order
        made = [(done[k][0].index, a) for k in order for a in done[k][1].attempts]
        call.attempts[:] = [replace(a, chunk=chunk, number=i) for i, (chunk, a) in enumerate(made, 1)]
        call.waited_s += max((c.waited_s for _, c, _ in done), default=0.0)
        errors = [v for _, _, v in done if isinstance(v, BaseException)]
        if errors:
            raise errors[0]
        if any(failed):
            return None, ()
        parts = [(chunk.index, v.model_dump(mode="json", by_alias=True)) for chunk, _, v in done]  # type: ignore[union-attr]
        merged, conflicts = merge(self.schema, parts)
        value, attempt = await asyncio.to_thread(self._validate_merged, steps, merged, text, len(chunks),
                                                 len(call.attempts) + 1)  # fmt: skip
        if attempt is not None:
            call.attempts.append(attempt)
        return value, tuple(conflicts)

    def _validate_merged(
        self, steps: Steps, merged: dict[str, Any], text: str, n: int, number: int
    ) -> tuple[T | None, Attempt | None]:
        """The merged value validated by the full schema with the whole document as the
        grounding source: the value, or the attempt (nothing sent) that records why not."""
        try:
            with grounding_source(text):
                return self.schema.model_validate(merged), None
        except ValidationError as exc:
            outcome, errs = classify_parse_error(exc)
            error = f"the merged value of {n} chunks: {exc}"[:ERROR_KEEP_CHARS]
            answer = Answer(started_at=time.time())
            return None, steps.attempt(number, answer, outcome, {"error": error, "errors": errs})

    async def arun_tier(
        self, name: str, text: str, limiter: Limiter | None = None, *, images: Sequence[bytes] = ()
    ) -> tuple[T | None, list[Attempt]]:
        """Tier ``name`` alone on ``text`` over HTTP, as the chain runs it: its value (None when
        the tier failed) and its attempts, numbered from 1. Nothing is recorded and the chain's
        escalation is not applied (``policy.should_escalate(attempts[-1])`` says whether the next
        tier would run): the batch waves run a ``via = "live"`` tier this way. Raises
        ``ProviderUnreachable`` (``ProviderRefused``) as ``aextract`` does, its ``.result``
        holding the attempts made before it (not recorded)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        tier = self.tier(name)
        images = _check_images([tier], images)
        call = await self._tier_call(tier, text, limiter, images=images)
        started = time.perf_counter()
        try:
            value = await call.run()
        except ProviderUnreachable as exc:
            result: Result[T] = Result(
                value=None, tier=None, attempts=list(call.attempts), schema_hash=self.schema_hash,
                latency_s=round(max(0.0, time.perf_counter() - started - call.waited_s), 6),
                document_sha256=document_sha256(text, images),
            )  # fmt: skip
            raise type(exc)(str(exc), url=exc.url, failures=exc.failures, result=result) from exc
        return value, call.attempts  # type: ignore[return-value]

    async def _finish(
        self,
        text: str,
        result: Result[T],
        unreachable: ProviderUnreachable | None,
        ledger: RecordingLedger | None,
        only: str | None,
        record: dict[str, Any],
        pages: Sequence[Page] = (),
    ) -> Result[T]:
        """The final result: where its values were found (``spans``), recorded into ``ledger`` (if
        any); then raise what the call raises."""
        if result.value is not None:
            result = replace(result, spans=await value_spans_of(result.value, text, pages))
        if ledger is not None:
            if only:
                record.setdefault("forced_tier", only)
                record.setdefault("config_hash", self.tier_hashes[only])
            ext_id = await ledger.arecord(self, result, text=text, **record)
            result = replace(result, extraction_id=ext_id)
        if unreachable is not None:  # this call's failed result travels with it (recorded above)
            raise type(unreachable)(  # ProviderRefused stays ProviderRefused
                str(unreachable), url=unreachable.url, failures=unreachable.failures, result=result
            ) from unreachable
        if self.raise_on_failure and not result.ok:
            raise ExtractionFailed(f"every tier failed: {result.error}", result=result)
        return result

    def extract(
        self,
        text: str,
        *,
        only: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
        size: int | None = None,
        doc_type: str | None = None,
        config_hash: str | None = None,
        forced_tier: str | None = None,
        pages: Sequence[Page] = (),
        sha256: str | None = None,
        images: Sequence[bytes] = (),
    ) -> Result[T]:
        """Synchronous ``aextract``, run on the extractor's own event loop (kept between calls, so
        connections are reused). Thread-safe; inside a running event loop (a notebook) it blocks
        that loop until the answer: async code should ``await aextract`` instead."""
        return self._sync().run(
            self.aextract(
                text,
                only=only,
                run_id=run_id,
                path=path,
                size=size,
                doc_type=doc_type,
                config_hash=config_hash,
                forced_tier=forced_tier,
                pages=pages,
                sha256=sha256,
                images=images,
            )  # fmt: skip
        )

    # -- files and many documents -----------------------------------------------------------------
    async def aextract_file(
        self,
        path: str | os.PathLike[str] | URI,
        *,
        doc_type: str | None = None,
        max_bytes: int | None = None,
        max_chars: int | None = None,
    ) -> Result[T]:
        """Extract from a file, read as ``extractkit extract`` reads it (``.txt``, ``.md``,
        ``.json``, ``.html`` / ``.htm``: text without markup, ``.pdf``: its text layer), by the
        batch's loader: PDFs, HTML and any file over 64 KiB are read and parsed in a worker thread,
        off the event loop (a small text file is read inline: the thread hop would cost more).
        ``doc_type`` (``"txt"``, ``"pdf"``, ``"html"``, ...) reads a file whose name does not say
        its type. ``path`` may be an object on object storage: ``"s3://bucket/invoices/a.pdf"`` (a
        ``str`` of the form ``scheme://...``, or a ``URI``), read through fsspec under the same
        limits, recorded under its URI (redacted), identified by its text like any file.

        The document's identity is its text (a copy under another name is the same document);
        the ledger records the extraction with the file's path, size and type, and the path in
        ``document_paths``. A file that cannot be read raises ``DocumentError`` (``.kind``:
        ``empty``, ``encrypted_pdf``, ``no_text``, ``binary``, ``missing``, ``unreadable``, ...,
        as the batch records them), recorded in the ledger as the batch records it; a folder or a
        file of an unsupported type raises ``DocumentError`` (``unsupported``) before anything is
        read or recorded. ``max_bytes`` / ``max_chars`` default to the batch's limits.

        >>> result = extractor.extract_file("invoices/acme.pdf")  # doctest: +SKIP
        """
        from .batch import (
            MAX_BYTES,
            MAX_CHARS,
            SPECIAL,
            TEXT_TYPES,
            URI,
            aload,
            as_source,
            display_path,
            doc_type_of,
            path_bytes,
        )  # fmt: skip

        p = as_source(path)
        shown = display_path(p)
        kind = doc_type if doc_type is not None else doc_type_of(p)
        if isinstance(p, URI) and not p.name:
            raise DocumentError(f"{shown}: a prefix, not an object: extract_many([URI(...)]) lists prefixes",
                                path=shown, kind="unsupported")  # fmt: skip
        if not isinstance(p, URI) and p.is_dir():
            raise DocumentError(f"{shown}: a folder, not a file: extract_many([Path(...)]) walks folders",
                                path=shown, kind="unsupported")  # fmt: skip
        if kind == SPECIAL:
            raise DocumentError(f"{shown}: not a regular file (FIFO, socket or device)", path=shown,
                                kind="special_file")  # fmt: skip
        types = sorted(set(TEXT_TYPES.values()))
        if kind is None or kind not in types:
            suffix = p.suffix or "(none)"
            given = f"doc_type {doc_type!r}" if doc_type is not None else f"file type {suffix!r}"
            raise DocumentError(f"{shown}: unsupported {given}; pass doc_type= one of {', '.join(types)}",
                                path=shown, kind="unsupported")  # fmt: skip
        try:
            # with its page images when a tier sends them (``needs_images``)
            doc = await aload(p, kind, max_bytes or MAX_BYTES, max_chars or MAX_CHARS,
                              images=self.needs_images)  # fmt: skip
        except DocumentError as exc:  # recorded as the batch records an unreadable document
            ledger = self._current_ledger()
            if ledger is not None:
                run_id = self._library_run_id()
                self._run_counts["n_documents"] += 1
                self._run_counts["n_errors"] = self._run_counts.get("n_errors", 0) + 1
                await asyncio.to_thread(
                    ledger.record_error, run_id=run_id, path=shown, kind=exc.kind, message=str(exc),
                    schema_hash=self.schema_hash, config_hash=self.config_hash,
                )  # fmt: skip
            raise
        result = await self.aextract(doc.text, path=doc.path, size=doc.size, doc_type=doc.type,
                                     pages=doc.pages, sha256=doc.sha256, images=doc.images)  # fmt: skip
        if self.ledger is not None and self._run_id is not None:
            row = [(doc.sha256, doc.path, path_bytes(p), self._run_id)]
            await asyncio.to_thread(self.ledger.add_document_paths, row)
        return result

    def extract_file(
        self,
        path: str | os.PathLike[str] | URI,
        *,
        doc_type: str | None = None,
        max_bytes: int | None = None,
        max_chars: int | None = None,
    ) -> Result[T]:
        """Synchronous ``aextract_file`` (see there), on the extractor's own event loop."""
        return self._sync().run(
            self.aextract_file(path, doc_type=doc_type, max_bytes=max_bytes, max_chars=max_chars)
        )

    def aextract_many(
        self,
        inputs: Iterable[str | os.PathLike[str] | URI],
        *,
        concurrency: int = 8,
        rpm: float | None = None,
        tpm: float | None = None,
        force: bool = False,
        retry_failed: bool = False,
        include: list[str] | None = None,
    ) -> AsyncIterator[ItemResult[T]]:
        """Extract from many texts and files, ``concurrency`` at a time, yielding each result as
        it is ready (not in input order): an ``ItemResult`` whose ``index`` is its input's position
        (``input`` the input itself, ``path`` the file read).

        An input is a text (``str``: always text, never a file name) or a path (``Path`` or any
        ``os.PathLike``): a file is read as ``extract_file`` reads it, a folder is walked as
        ``extractkit extract`` walks it (every document in it gets its own result with the folder's
        ``index``; ``include`` globs filter file names, case-insensitively), or a ``URI``
        (``extractkit.URI("s3://bucket/invoices/")``: one object, or every object under the prefix,
        listed lazily). It is the CLI's batch
        runner: ``rpm`` / ``tpm`` pace this call's requests (default: the extractor's ``limiter``,
        if any); with a ledger, a document whose final result this chain already recorded is not
        sent again (``resumed=True``; transient failures are sent again, validation failures too
        with ``retry_failed``, everything with ``force``), identical content is sent once, and the
        call is recorded as one ``batch`` run with the paths of its files. Without a ledger,
        nothing is recorded or resumed.

        An input that cannot be read (an empty text or file, an encrypted PDF, a file of an
        unsupported type, something that is neither a str nor a path) yields a result with
        ``status="error"`` and the ``DocumentError`` kind as ``outcome``; the others go on. If the
        provider stops answering (``ProviderUnreachable``, see ``aextract``), the results finished
        are yielded, then ``ProviderUnreachable`` is raised: the rest were not sent (run the same
        call again to resume). Leaving the loop early stops sending and marks the run
        ``interrupted`` once the iterator is closed (when it is collected, or at once inside
        ``async with contextlib.aclosing(extractor.aextract_many(...)) as items``). The inputs are
        read lazily: a generator of a million paths is fine.

        >>> async for item in extractor.aextract_many(
        ...     [Path("invoices/"), "ACME Ltd, total 12.50"], concurrency=16, rpm=500
        ... ):  # doctest: +SKIP
        ...     print(item.index, item.path, item.status, item.value if item.ok else item.error)
        """
        from .batch import aextract_many

        # the extractor's own ledger, reopened (if close() closed it) when the iteration starts
        return aextract_many(self, inputs, ledger=self._current_ledger, concurrency=concurrency, rpm=rpm,
                             tpm=tpm, force=force, retry_failed=retry_failed, include=include)  # fmt: skip

    def extract_many(
        self,
        inputs: Iterable[str | os.PathLike[str] | URI],
        *,
        concurrency: int = 8,
        rpm: float | None = None,
        tpm: float | None = None,
        force: bool = False,
        retry_failed: bool = False,
        include: list[str] | None = None,
    ) -> Iterator[ItemResult[T]]:
        """Synchronous ``aextract_many`` (see there): an iterator of ``ItemResult`` in the order
        they finish, the work running on the extractor's own event loop while you iterate
        (``list(...)`` collects them all; sort by ``index`` for input order). Leaving the loop
        early stops sending.

        >>> for item in extractor.extract_many([Path("a.pdf"), Path("b.html")], rpm=500):  # doctest: +SKIP
        ...     print(item.index, item.status, item.value)
        """
        agen = self.aextract_many(inputs, concurrency=concurrency, rpm=rpm, tpm=tpm, force=force,
                                  retry_failed=retry_failed, include=include)  # fmt: skip
        return _iterate_on(self._sync(), agen)


def _iterate_on(lt: LoopThread, agen: AsyncIterator[Any]) -> Iterator[Any]:
    """Iterate an async iterator from sync code, each step run on ``lt``'s event loop."""

    async def step() -> tuple[bool, Any]:
        try:
            return True, await agen.__anext__()
        except StopAsyncIteration:
            return False, None

    async def close() -> None:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            await aclose()

    def gen() -> Iterator[Any]:
        finished = False
        try:
            while True:
                more, item = lt.run(step())
                if not more:
                    finished = True
                    return
                yield item
        finally:
            if not finished and lt.usable:  # left early: stop the work (see aextract_many)
                lt.run(close())

    return gen()


async def _close_clients(clients: dict[str, openai.AsyncOpenAI]) -> None:
    for client in list(clients.values()):
        await client.close()
    clients.clear()
