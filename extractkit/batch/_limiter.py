"""Pacing rate limiters for requests/minute and tokens/minute.

They space requests out (one every 60/rpm seconds, and tokens at tpm/60 a second) instead of
letting a burst through and retrying 429s: a provider may enforce a per-minute limit over
shorter windows, and a burst-and-retry loop was measured here to lose most of its requests.

``RateLimiter`` paces one process (the SQLite ledger, library use). ``SharedLimiter`` paces
every process that shares a PostgreSQL ledger under one limit per model: each leases slices of
the limit's timeline from a row in the database (``extractkit.ledger.LimitStore``: one round trip
per slice, not per request), spends them itself, gives back what it did not spend, and a 429 seen
by one pauses them all. ``limiter_for(ledger, rpm, tpm)`` picks the one that fits the ledger.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from .._errors import LedgerError, LedgerUnavailable
from .._results import Usage

log = logging.getLogger("extractkit")

_EPS = 1e-9
_MAX_SLICE_REQUESTS = 10_000  # requests counted into one slice, at most


@runtime_checkable
class Limiter(Protocol):
    """What a tier call needs of a rate limiter: ``acquire`` before each request (``tokens``: its
    estimated prompt and output tokens) and ``penalize`` after a 429 (``retry_after``: seconds,
    or None when the provider did not say). ``RateLimiter`` and ``SharedLimiter`` are two.

    Optional, looked up by the tier call: ``for_model(model, base_url)`` -> the limiter of that
    model (``SharedLimiter`` keeps one limit per model and base URL), and ``settle(tokens, usage)``
    after an answer (the estimate charged, the usage the provider reported)."""

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


class Lease:
    """The pacing of one key in one process, as pure state (no I/O, no clock of its own: every
    method takes ``now``, ``time.monotonic()`` seconds). ``SharedLimiter`` drives it.

    A lease is a slice of the shared timeline: ``remaining`` seconds of the limit to spend from
    ``cursor`` on, one request every ``cost`` seconds at most, until ``expires`` (the slice's end
    plus ``grace_s``: a process that asks for a little less than its demand still spends it).
    ``lease_s`` caps a slice (what a process that dies with it unspent can hold back)."""

    def __init__(self, lease_s: float = 1.0, grace_s: float = 0.25, tau_s: float = 1.0):
        self.lease_s, self.grace_s, self.tau_s = lease_s, grace_s, tau_s
        self.cursor = 0.0  # no request before this
        self.remaining = 0.0  # leased budget not spent yet
        self.end = 0.0  # where the slice ends on the timeline (what is after now is returnable)
        self.expires = 0.0  # the budget is usable until then
        self.paused_until = 0.0
        self.rate = 0.0  # demand: seconds of the limit asked for per second (decaying average)
        self._seen = 0.0

    def _decay(self, now: float) -> None:
        if self._seen:
            self.rate *= math.exp(-max(0.0, now - self._seen) / self.tau_s)
        self._seen = now

    def demand(self, now: float, cost: float) -> None:
        """Note a request of ``cost`` asked for at ``now`` (sizes the next slice)."""
        self._decay(now)
        self.rate += cost / self.tau_s

    def slot(self, now: float, cost: float) -> float | None:
        """When a request of ``cost`` may go out, or None when this lease cannot pay for it."""
        slot = max(self.cursor, now, self.paused_until)
        if self.remaining + _EPS < cost or slot > self.expires:
            return None
        return slot

    def spend(self, slot: float, cost: float) -> None:
        self.cursor = slot + cost
        self.remaining -= cost

    def give(self, cost: float) -> None:
        """A request that was let through and then not sent (its caller was cancelled)."""
        self.remaining += cost

    def size(self, now: float, costs: Iterable[float]) -> float:
        """How much to lease for the requests waiting (``costs``, in order, the first included):
        as many whole requests as fit in ``lease_s`` (at least the first, however big), so that
        nothing is left over when demand outruns the limit; or, when few wait, what the demand
        of the last moments asks for over ``grace_s`` (what is not spent is given back)."""
        total = 0.0
        for n, c in enumerate(costs):
            if (total and total + c > self.lease_s + _EPS) or n >= _MAX_SLICE_REQUESTS:
                return total  # more wait than a slice holds: whole requests, none left over
            total += c
        self._decay(now)
        return max(total, min(self.rate * self.grace_s, self.lease_s))

    def returnable(self, now: float) -> float:
        """The unspent part of the slice that is still ahead on the timeline (the past is gone)."""
        if now >= self.expires:
            return 0.0
        return max(0.0, min(self.remaining, self.end - max(now, self.cursor)))

    def grant(self, start: float, amount: float, paused_until: float) -> None:
        """A new slice of ``amount`` starting at ``start`` (the old one was given back)."""
        self.cursor = start
        self.remaining = amount
        self.end = start + amount
        self.expires = self.end + self.grace_s
        self.paused_until = max(self.paused_until, paused_until)

    def drop(self) -> None:
        """Forget the slice (given back, or gone)."""
        self.remaining = 0.0
        self.end = self.expires = 0.0

    def pause(self, now: float, until: float, delta: float) -> None:
        """A 429 (here or anywhere): nothing before ``until``; what this slice has not spent yet
        moves ``delta`` later, as the shared timeline did."""
        self.paused_until = max(self.paused_until, until)
        if delta > 0 and self.expires > now:
            self.cursor += delta
            self.end += delta
            self.expires += delta


DEFAULT_PAUSE_S = 1.0  # a 429 without Retry-After (and no rpm to take one slot from)
PATIENCE_S = 30.0  # how long a lease is retried while the database does not answer


def model_key(model: str, base_url: str | None = None) -> str:
    """The shared limit's key of a model: ``model @ host/path`` (no credentials, no query)."""
    if not base_url:
        return model
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{model} @ {host}{parts.path.rstrip('/')}"


class _Key:
    """One key's pacing in this process: the lease, and the requests waiting for it."""

    def __init__(self, lease: Lease):
        self.lease = lease
        self.queue: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        self.adjust = 0.0  # for the shared timeline at the next call: + usage over the estimate, - returned
        self.task: asyncio.Task[None] | None = None
        self.wake: asyncio.Event | None = None


class SharedLimiter:
    """Requests/minute and tokens/minute shared by every process that uses one PostgreSQL
    database: N processes together stay under ``rpm`` / ``tpm`` (times ``headroom``), per key
    (a model at a base URL: see ``for_model``; ``key=`` puts every model under one limit).

    ``store``: a ``postgresql://`` URL or an ``extractkit.ledger.LimitStore``. Each process leases
    slices of at most ``lease_s`` seconds of the limit from the key's row (one round trip per
    slice), paces its requests inside them and gives back what it leaves unspent; a process
    that dies holds back at most its slice, until the slice's time has passed. A 429 seen by
    any process pauses the key for all of them (Retry-After, or one request's slot, or 1 s): the
    others hear of it at once (LISTEN/NOTIFY, unless ``listen=False``) and at their next lease.
    Token estimates are corrected after each answer: usage above the estimate is charged to the
    shared budget; below it, given back only with ``refund=True`` (OpenAI counts a request's
    estimate, characters / 4 + max_tokens, against its limit, not its usage).

    Database calls run in a thread of the limiter's own, never on the event loop. ``close()``
    (or ``aclose()``, ``with``) gives back the unspent budget and closes the connections.
    """

    def __init__(self, store: Any, rpm: float | None = None, tpm: float | None = None, *,
                 key: str | None = None, headroom: float = 0.97, lease_s: float = 1.0,
                 grace_s: float = 0.25, listen: bool = True, refund: bool = False):  # fmt: skip
        from ..ledger import LimitStore

        self.store: LimitStore = LimitStore(store) if isinstance(store, str) else store
        self.limits = (rpm, tpm)  # as configured (recorded in the row)
        self.rpm = rpm * headroom if rpm else None
        self.tpm = tpm * headroom if tpm else None
        self.key = key
        self.lease_s, self.grace_s = lease_s, grace_s
        self.refund = refund
        self.origin = uuid.uuid4().hex  # our own notifications are not news
        self.waited_s = 0.0
        self.leases = 0  # round trips for slices (tests and benchmarks read it)
        self._listen = listen
        self._listener: Any = None
        self._keys: dict[str, _Key] = {}
        self._scoped: dict[str, _Scoped] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._background: set[asyncio.Future[Any]] = set()
        # a worker's ``ledger.Outage``: leases then wait through a database outage on the worker's
        # clock, quietly (the worker says it once), instead of PATIENCE_S with a warning per try
        self.outage: Any = None

    # -- the Limiter protocol (the default key) -----------------------------------------------------
    @property
    def default_key(self) -> str:
        return self.key or "*"

    async def acquire(self, tokens: int) -> None:
        await self.acquire_for(self.default_key, tokens)

    def penalize(self, retry_after: float | None) -> None:
        self.penalize_for(self.default_key, retry_after)

    def settle(self, tokens: int, usage: Usage | int) -> None:
        self.settle_for(self.default_key, tokens, usage)

    def for_model(self, model: str, base_url: str | None = None) -> _Scoped:
        """The limiter of one model at one base URL (every model's is the same with ``key=``)."""
        key = self.key or model_key(model, base_url)
        scoped = self._scoped.get(key)
        if scoped is None:
            scoped = self._scoped[key] = _Scoped(self, key)
        return scoped

    # -- costs ------------------------------------------------------------------------------------
    def cost(self, tokens: int) -> float:
        """Seconds of the limit a request of ``tokens`` takes."""
        c = 0.0
        if self.rpm:
            c = 60.0 / self.rpm
        if self.tpm:
            c = max(c, min(tokens, self.tpm) * 60.0 / self.tpm)
        return c

    def _pause_s(self, retry_after: float | None) -> float:
        if retry_after is not None:
            return max(0.0, retry_after)
        return 60.0 / self.rpm if self.rpm else DEFAULT_PAUSE_S

    # -- per key ------------------------------------------------------------------------------------
    def _state(self, key: str) -> _Key:
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _Key(Lease(self.lease_s, self.grace_s))
        return st

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (asyncio.run again): its own waiters and tasks
            self._loop = loop
            for st in self._keys.values():
                st.queue.clear()
                st.task = None
                st.wake = None
        if self._listen and self._listener is None:
            self._listener = self.store.listen(self._heard)
        return loop

    async def _db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extractkit-limits")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def acquire_for(self, key: str, tokens: int) -> None:
        loop = self._bind()
        cost = self.cost(tokens)
        st = self._state(key)
        now = time.monotonic()
        if cost <= 0:  # no limits: only a pause holds a request back
            if st.lease.paused_until > now:
                self.waited_s += st.lease.paused_until - now
                await asyncio.sleep(st.lease.paused_until - now)
            return
        st.lease.demand(now, cost)
        fut: asyncio.Future[None] = loop.create_future()
        st.queue.append((cost, fut))
        if st.task is None or st.task.done():
            st.task = loop.create_task(self._dispatch(key, st))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # let through, then not sent: its budget is unspent
                st.lease.give(cost)
            raise
        self.waited_s += time.monotonic() - now

    async def _dispatch(self, key: str, st: _Key) -> None:
        """Let the queue's requests through one by one, at their slots, leasing slices as needed."""
        st.wake = st.wake or asyncio.Event()
        while st.queue:
            cost, fut = st.queue[0]
            if fut.done():  # its caller was cancelled
                st.queue.popleft()
                continue
            now = time.monotonic()
            slot = st.lease.slot(now, cost)
            if slot is None:
                try:
                    await self._lease(key, st, now)
                except Exception as exc:  # the database did not answer in PATIENCE_S: fail the waiters
                    while st.queue:
                        _, waiting = st.queue.popleft()
                        if not waiting.done():
                            waiting.set_exception(exc)
                        return
                continue
            if slot > now:  # sleep until the slot, or until a pause moves it
                st.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(st.wake.wait(), slot - now)
                if st.wake.is_set() or fut.done():
                    continue  # a pause (or the caller gave up): look again
                # woken a little late by a busy loop: spent at the slot planned, so that the
                # lateness of one wake-up does not add up over the next requests
            st.queue.popleft()
            st.lease.spend(slot, cost)
            fut.set_result(None)

    async def _lease(self, key: str, st: _Key, now: float) -> None:
        amount = st.lease.size(now, (c for c, _ in st.queue))
        given = st.lease.returnable(now)
        st.lease.drop()
        adjust, st.adjust = st.adjust - given, 0.0
        delay = 0.1
        deadline = now + PATIENCE_S
        outage = self.outage
        while True:
            try:
                grant = await self._db(self.store.reserve, key, amount, adjust=adjust, rpm=self.limits[0],
                                       tpm=self.limits[1])  # fmt: skip
                break
            except LedgerError as exc:
                if outage is not None:
                    # the worker's clock: past its limit the worker stops itself (its claims and
                    # heartbeats fail too); the requests waiting here wait, never fail for it
                    with contextlib.suppress(LedgerUnavailable):
                        outage.failed(exc)
                elif time.monotonic() + delay > deadline:
                    raise
                else:
                    log.warning("shared rate limit %s: %s (trying again in %.1f s)", key, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0 if outage is None else outage.max_wait_s)
        if outage is not None:
            outage.ok()
        self.leases += 1
        here = time.monotonic()  # the reply's arrival: the database's "now" is at most this late
        paused = here + (grant.paused_until - grant.now) if grant.paused_until > grant.now else 0.0
        st.lease.grant(here + (grant.start - grant.now), amount, paused)

    # -- 429s ---------------------------------------------------------------------------------------
    def penalize_for(self, key: str, retry_after: float | None) -> None:
        """A 429 on ``key``: pause here at once, then in the database, which tells the others."""
        loop = self._bind()
        seconds = self._pause_s(retry_after)
        st = self._state(key)
        now = time.monotonic()
        until = now + seconds
        st.lease.pause(now, until, max(0.0, until - max(st.lease.paused_until, now)))
        if st.wake is not None:
            st.wake.set()
        task = asyncio.ensure_future(self._db(self.store.pause, key, seconds, origin=self.origin), loop=loop)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("shared rate limit: a 429 could not be shared: %s", task.exception())

    def _heard(self, pause: Any, received: float) -> None:
        """(listener thread) Another process recorded a 429."""
        if pause.origin == self.origin:
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._apply_pause, pause, received)

    def _apply_pause(self, pause: Any, received: float) -> None:
        st = self._state(pause.key)
        st.lease.pause(time.monotonic(), received + (pause.until - pause.now), pause.delta)
        if st.wake is not None:
            st.wake.set()

    # -- after the answer ---------------------------------------------------------------------------
    def settle_for(self, key: str, tokens: int, usage: Usage | int) -> None:
        """The provider reported ``usage`` for a request charged ``tokens``: charge what it used
        beyond that to the shared budget (give back what it did not use, with ``refund``)."""
        if not self.tpm:
            return
        used = usage if isinstance(usage, int) else usage.total_tokens
        extra = used - tokens
        if extra > 0 or (self.refund and extra < 0):
            self._state(key).adjust += extra * 60.0 / self.tpm

    # -- the end ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Give back every unspent slice and charge what is owed, stop listening, close the
        connection. The limiter can be used again (it reconnects)."""
        now = time.monotonic()
        try:
            for key, st in self._keys.items():
                adjust = st.adjust - st.lease.returnable(now)
                st.lease.drop()
                st.adjust = 0.0
                if abs(adjust) > _EPS:
                    try:
                        self.store.adjust(key, adjust)
                    except LedgerError as exc:  # the database is away: the budget is not returned,
                        # which only slows the others until this slice's time has passed
                        log.debug("shared rate limit %s: unspent budget not returned: %s", key, exc)
        finally:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None
            self.store.close()
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None

    async def aclose(self) -> None:
        for st in self._keys.values():
            if st.task is not None and not st.task.done():
                st.task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.to_thread(self.close)

    def __enter__(self) -> SharedLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SharedLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Scoped:
    """A ``SharedLimiter`` seen from one key (``SharedLimiter.for_model``)."""

    def __init__(self, owner: SharedLimiter, key: str):
        self.owner, self.key = owner, key

    async def acquire(self, tokens: int) -> None:
        await self.owner.acquire_for(self.key, tokens)

    def penalize(self, retry_after: float | None) -> None:
        self.owner.penalize_for(self.key, retry_after)

    def settle(self, tokens: int, usage: Usage | int) -> None:
        self.owner.settle_for(self.key, tokens, usage)


def limiter_for(ledger: Any, rpm: float | None = None, tpm: float | None = None, **options: Any) -> Any:
    """The limiter for a run recording into ``ledger``: shared by every process on a PostgreSQL
    ledger (``SharedLimiter``, a 429 pauses them all even without rpm / tpm), this process's own
    otherwise (``RateLimiter``; None when neither rpm nor tpm is set)."""
    if getattr(ledger, "engine", "sqlite") == "postgresql":
        from ..ledger import limit_store

        return SharedLimiter(limit_store(ledger), rpm, tpm, **options)
    return RateLimiter(rpm, tpm) if rpm or tpm else None


@contextlib.contextmanager
def open_limiter(ledger: Any, rpm: float | None = None, tpm: float | None = None) -> Iterator[Any]:
    """``limiter_for(ledger, rpm, tpm)``, closed at the end (a shared one gives back what it did
    not spend). For a caller that runs its event loop inside the block (``asyncio.run``)."""
    limiter = limiter_for(ledger, rpm, tpm)
    try:
        yield limiter
    finally:
        if isinstance(limiter, SharedLimiter):
            limiter.close()
