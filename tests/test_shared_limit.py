"""One rate limit for every worker (issue 17, section 2): N processes sharing a PostgreSQL ledger
stay under the configured RPM/TPM together, and a 429 seen by one pauses the others.

The processes are real (subprocesses), the database is real (``pg_url``), the provider is a real
HTTP server on 127.0.0.1 that writes down when each request arrived. Assertions count requests
per window with generous margins, or bound waits from below (a slow machine only waits longer).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from extractkit import ConfigError
from extractkit.batch import Lease, RateLimiter, SharedLimiter, limiter_for, model_key, open_limiter
from extractkit.ledger import Ledger, LimitStore, limit_store

from .fakes import FakeLLMServer, completion, error_body

ROOT = Path(__file__).resolve().parents[1]
_REF = re.compile(r"Ref: (\w+)")

# One worker process: ``mode`` "extract" runs documents through an Extractor (tier calls acquire,
# penalize and settle through the SharedLimiter), "acquire" only asks the limiter and prints when
# each request was let through (time.monotonic(): one clock for every process of a machine).
WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pydantic import BaseModel
    from extractkit import Extractor, ZeroShot
    from extractkit.batch import SharedLimiter

    class Invoice(BaseModel):
        issuer: str
        total: float

    a = json.loads(sys.argv[1])
    limiter = SharedLimiter(a["pg"], a.get("rpm"), a.get("tpm"), lease_s=a.get("lease_s", 1.0))

    async def main():
        sem = asyncio.Semaphore(a.get("concurrency", 8))
        out = []
        if a["mode"] == "extract":
            ex = Extractor(Invoice, tiers=[ZeroShot(model="m", base_url=a["base_url"], api_key="sk-test",
                                                    max_reasks=0)], limiter=limiter)
            async def one(i):
                async with sem:
                    r = await ex.aextract(f"Ref: {a['name']}{i}\\nFrom: Firm {i}\\nTotal: {i}.50")
                    out.append(r.ok)
        else:
            async def one(i):
                async with sem:
                    await limiter.acquire(a.get("tokens", 10))
                    out.append(time.monotonic())
        print("ready", flush=True)
        sys.stdin.readline()  # the go
        await asyncio.gather(*(one(i) for i in range(a["n"])))
        if a["mode"] == "extract":
            await ex.aclose()
        await limiter.aclose()
        print(json.dumps({"out": out, "leases": limiter.leases}), flush=True)

    asyncio.run(main())
    """
)


def start_workers(configs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(c)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)  # fmt: skip
        for c in configs
    ]
    for p in procs:  # imports done, connections not yet: start together
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return procs


def finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> list[dict[str, Any]]:
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def state_of(pg_url: str, key: str) -> dict[str, Any] | None:
    store = LimitStore(pg_url)
    try:
        return store.state(key)
    finally:
        store.close()


def busiest(times: list[float], window: float) -> int:
    """The most requests in any ``window`` seconds."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


class Recorder:
    """A provider that answers like ``echo`` and writes down (arrival, document ref, status)."""

    def __init__(self, rule: Any = None):
        self.log: list[tuple[float, str, int]] = []
        self.rule = rule
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        ref = _REF.findall(user)[-1]
        with self.lock:
            seen = sum(1 for _, r, _ in self.log if r == ref)
            answer = self.rule(ref, seen, len(self.log)) if self.rule else None
            status = answer[0] if answer else 200
            self.log.append((time.monotonic(), ref, status))
        if answer:
            return answer
        n = int(re.sub(r"\D", "", ref) or 0)
        return 200, completion({"issuer": f"Firm {n}", "total": n + 0.5}), {}


# -- several processes, one limit ------------------------------------------------------------------
def test_processes_sharing_a_limit_stay_under_it_together(pg_url):
    """Three processes, 300 requests/minute shared (5 a second): the requests that reach the
    provider from all three together keep to about 5 a second. Each alone would send at 5 a
    second, three together at 15: the busiest 2 s would hold about 30 requests, not 10."""
    rec = Recorder()
    with FakeLLMServer(rec) as server:
        base = {"mode": "extract", "pg": pg_url, "base_url": server.base_url, "rpm": 300, "n": 12}
        procs = start_workers([dict(base, name=name) for name in ("a", "b", "c")])
        results = finish(procs)
    assert all(all(r["out"]) for r in results)
    times = [t for t, _, _ in rec.log]
    assert len(times) == 36 and {ref[0] for _, ref, _ in rec.log} == {"a", "b", "c"}
    assert busiest(times, 2.0) <= 15, busiest(times, 2.0)  # 2 s of the limit is 10 (9.7 with headroom)
    span = max(times) - min(times)
    assert 35 / span <= 5 * 1.2, span  # on average under the limit (a slow machine only lowers it)
    # slices, not a round trip per request
    state = state_of(pg_url, model_key("m", server.base_url))
    assert state is not None and state["leases"] <= 36 / 2, state


def test_a_hundred_requests_a_second_across_processes_take_few_round_trips(pg_url):
    """Three processes under 6,000 requests/minute (100 a second) together: any second holds
    about 100 of them (not 300), and the database is asked once per slice, not per request."""
    base = {"mode": "acquire", "pg": pg_url, "rpm": 6000, "n": 150, "concurrency": 64}
    results = finish(start_workers([base, base, base]))
    times = [t for r in results for t in r["out"]]
    assert len(times) == 450
    assert busiest(times, 1.0) <= 130, busiest(times, 1.0)
    leases = sum(r["leases"] for r in results)
    assert leases <= 450 / 10, leases  # a slice is up to 1 s of the limit: about 97 requests


# -- a 429 seen by one ---------------------------------------------------------------------------
def test_a_429_seen_by_one_process_pauses_the_others(pg_url):
    """The 15th request to arrive (whoever sent it) is answered 429 with Retry-After: 3. The
    other process, on the same model, hears of it and sends nothing in the middle of the pause
    (without the shared pause it would send about 5 a second there), then goes on."""

    def rule(ref: str, seen: int, total: int) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        if total == 14:
            return 429, error_body("Rate limit reached", "rate_limit_exceeded"), {"retry-after": "3"}
        return None

    rec = Recorder(rule)
    with FakeLLMServer(rec) as server:
        base = {"mode": "extract", "pg": pg_url, "base_url": server.base_url, "rpm": 600, "n": 30}
        procs = start_workers([dict(base, name="a"), dict(base, name="b")])
        results = finish(procs)
    assert all(all(r["out"]) for r in results)  # the document answered 429 was sent again after it
    ((t429, ref429),) = [(t, ref) for t, ref, status in rec.log if status == 429]
    other = [t for t, ref, _ in rec.log if ref[0] != ref429[0]]
    assert any(t < t429 for t in other) and any(t > t429 + 3 for t in other)  # busy around it
    during = [t for t in other if t429 + 1.0 <= t <= t429 + 2.5]
    assert len(during) <= 1, [round(t - t429, 2) for t in other]


@pytest.mark.parametrize("retry_after", [None, 2.0])
def test_a_429_pauses_another_limiter_on_the_same_key_only(pg_url, retry_after):
    """Two limiters (two processes' worth: their own connections and listeners) under a tokens
    limit: a 429 without Retry-After pauses the key for 1 s, with one for its seconds. The other
    limiter's next request on that key waits for it; on another key it does not."""

    async def main() -> tuple[float, float, dict[str, Any] | None]:
        one = SharedLimiter(pg_url, tpm=600_000)
        other = SharedLimiter(pg_url, tpm=600_000)
        try:
            await other.for_model("m").acquire(10)  # listening
            await other.for_model("n").acquire(10)
            assert other._listener.listening.wait(10)
            one.for_model("m").penalize(retry_after)
            await asyncio.sleep(0.3)  # the notification travels
            t0 = time.monotonic()
            await other.for_model("n").acquire(10)
            free = time.monotonic() - t0
            t0 = time.monotonic()
            await other.for_model("m").acquire(10)
            held = time.monotonic() - t0
            return free, held, state_of(pg_url, "m")
        finally:
            await one.aclose()
            await other.aclose()

    free, held, state = asyncio.run(main())
    pause = retry_after or 1.0
    assert held >= pause - 0.3 - 0.05, held  # lower bounds: a slow machine only waits longer
    assert free < pause / 2, free
    assert state is not None and state["pauses"] == 1


def test_a_429_pushes_the_shared_timeline_once_per_pause(pg_url):
    """Two 429s at once (two processes seeing the same overload) pause the key once: the second
    extends it by what it adds, not by its whole Retry-After again."""
    store = LimitStore(pg_url)
    store.reserve("k", 0.1)
    first = store.pause("k", 2.0)
    second = store.pause("k", 2.0)
    assert first.delta == pytest.approx(2.0, abs=0.05)
    assert second.delta < 0.5 and second.until >= first.until
    state = store.state("k")
    assert state is not None and state["tat"] <= first.now + 0.1 + 2.0 + 0.5
    store.close()


# -- what is left unspent ------------------------------------------------------------------------
def test_unused_budget_is_given_back(pg_url):
    """A limiter that leased 5 requests' worth (60 rpm, slices up to 5 s) and sent one gives the
    rest back when it closes: the next process starts at once, not 4 s later."""

    async def main() -> tuple[float, float]:
        lim = SharedLimiter(pg_url, rpm=60, lease_s=5.0, listen=False)
        waiting = [asyncio.ensure_future(lim.acquire(1)) for _ in range(5)]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        held = state_of(pg_url, "*")
        for w in waiting:
            w.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await lim.aclose()
        after = state_of(pg_url, "*")
        assert held is not None and after is not None
        return held["tat"] - held["now"], after["tat"] - after["now"]

    held, after = asyncio.run(main())
    assert held > 4.0, held  # 5 requests of 1.03 s were leased
    assert after < 1.5, after  # the 4 unsent ones were given back


def test_a_dead_process_holds_back_no_more_than_its_slice(pg_url):
    """A process leases 5 s of a 60 rpm limit and is killed (-9) before sending: its slice is
    not given back, but it ends: the next process waits out the slice (the limit still holds:
    the dead one might have sent), and no longer."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from extractkit.batch import SharedLimiter
        async def main():
            lim = SharedLimiter(sys.argv[1], rpm=60, lease_s=5.0, listen=False)
            waiting = [asyncio.ensure_future(lim.acquire(1)) for _ in range(5)]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            print("leased", flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script, pg_url], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leased"
    finally:
        proc.kill()
        proc.communicate()
    store = LimitStore(pg_url)
    state = store.state("*")
    assert state is not None
    ahead = state["tat"] - state["now"]
    assert 3.0 < ahead <= 5.2, ahead  # the slice is bounded by lease_s

    async def next_process() -> float:
        lim = SharedLimiter(pg_url, rpm=60, listen=False)
        t0 = time.monotonic()
        await lim.acquire(1)
        waited = time.monotonic() - t0
        await lim.aclose()
        return waited

    waited = asyncio.run(next_process())
    assert waited >= ahead - 0.5, (waited, ahead)
    assert waited < ahead + 10, (waited, ahead)  # generous: it ends with the slice
    store.close()


# -- the estimate corrected by the usage --------------------------------------------------------
def test_usage_above_the_estimate_is_charged_to_the_shared_budget(pg_url):
    """A request estimated at 1,000 tokens that used 4,000 costs the others 3,000 tokens more
    of the limit (60,000 tpm with headroom: about 3.1 s); one that used less is not refunded
    unless asked (OpenAI counts the estimate)."""

    async def main() -> list[float]:
        ahead = []
        for refund, used in ((False, 4000), (False, 100), (True, 100)):
            lim = SharedLimiter(pg_url, tpm=60_000, key=f"k{refund}{used}", listen=False, refund=refund)
            await lim.acquire(1000)
            before = state_of(pg_url, lim.default_key)
            lim.settle(1000, used)
            await lim.aclose()  # the correction reaches the database with the next call or on close
            after = state_of(pg_url, lim.default_key)
            assert before is not None and after is not None
            ahead.append((after["tat"] - after["now"]) - (before["tat"] - before["now"]))
        return ahead

    more, none, refunded = asyncio.run(main())
    assert more == pytest.approx(3000 * 60 / (60_000 * 0.97), abs=0.5)
    assert abs(none) < 0.5
    assert refunded < -0.3


# -- the pure parts ------------------------------------------------------------------------------
def test_lease_paces_inside_its_slice_and_asks_for_the_next():
    lease = Lease(lease_s=1.0, grace_s=0.25)
    assert lease.slot(0.0, 0.2) is None  # nothing leased yet
    lease.grant(10.0, 1.0, 0.0)
    slots = []
    for _ in range(5):
        s = lease.slot(9.0, 0.2)
        assert s is not None
        lease.spend(s, 0.2)
        slots.append(round(s, 6))
    assert slots == [10.0, 10.2, 10.4, 10.6, 10.8]
    assert lease.slot(9.0, 0.2) is None  # spent
    # a request that comes late is let through at once, not in a burst of the ones missed
    lease.grant(20.0, 1.0, 0.0)
    assert lease.slot(20.5, 0.2) == 20.5
    lease.spend(20.5, 0.2)
    assert lease.slot(20.6, 0.2) == pytest.approx(20.7)
    # past the slice and its grace: the budget is gone
    assert lease.slot(21.3, 0.2) is None


def test_lease_size_follows_what_waits_and_the_demand():
    lease = Lease(lease_s=1.0, grace_s=0.25)
    assert lease.size(0.0, [0.1]) == pytest.approx(0.1)
    assert lease.size(0.0, [0.3] * 10) == pytest.approx(0.9)  # whole requests: nothing left over
    assert lease.size(0.0, [3.0, 0.1]) == 3.0  # one request bigger than a slice
    for i in range(100):  # 100 requests of 0.05 s in 1 s: a demand of several seconds a second
        lease.demand(i / 100, 0.05)
    assert lease.size(1.0, [0.05]) > 0.5  # what the next 0.25 s will ask for
    assert lease.size(20.0, [0.05]) == pytest.approx(0.05)  # a demand long past asks for nothing


def test_lease_returns_only_the_unspent_future():
    lease = Lease(lease_s=5.0, grace_s=0.25)
    lease.grant(100.0, 5.0, 0.0)
    lease.spend(100.0, 1.0)
    assert lease.returnable(100.5) == pytest.approx(4.0)
    assert lease.returnable(103.0) == pytest.approx(2.0)  # the past part is gone
    assert lease.returnable(106.0) == 0.0


def test_lease_moves_what_it_has_not_sent_by_a_pause():
    lease = Lease()
    lease.grant(10.0, 1.0, 0.0)
    lease.spend(10.0, 0.2)
    lease.pause(10.1, until=12.0, delta=2.0)
    assert lease.slot(10.1, 0.2) == pytest.approx(12.2)  # after the pause, in its order
    assert lease.expires == pytest.approx(13.25)


def test_model_key_names_model_and_host_without_credentials():
    assert model_key("gpt-4o-mini", "https://user:pw@api.example.com:8443/v1/?key=x") == (
        "gpt-4o-mini @ api.example.com:8443/v1"
    )
    assert model_key("m") == "m"


def test_the_limiter_is_shared_on_postgresql_and_local_otherwise(pg_url, tmp_path):
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        assert isinstance(limiter_for(ledger, rpm=10), RateLimiter)
        assert limiter_for(ledger) is None
        with pytest.raises(ConfigError, match="PostgreSQL ledger"):
            limit_store(ledger)
    with Ledger(pg_url) as ledger:
        assert "0009_shared_limits" in ledger.applied
        with open_limiter(ledger, tpm=1000) as shared:
            assert isinstance(shared, SharedLimiter) and shared.tpm
            asyncio.run(shared.acquire(10))  # the ledger's database holds the limit
        state = state_of(pg_url, "*")
        assert state is not None and state["leases"] == 1 and state["tpm"] == 1000
        # a limiter made by the library on the same URL finds the same row
        assert isinstance(limiter_for(ledger, rpm=10), SharedLimiter)
