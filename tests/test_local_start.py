"""The local server starts off the event loop, once (issue 15, point 7).

The real start (a llama.cpp process loading its model) takes seconds to a minute; here it is
faked: ``LocalServer.start`` blocks its thread until the event loop has visibly gone on (its
heartbeat ticked), or gives up after a few seconds. Counts, not timings, are asserted.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest
import respx

import extractkit.local as local
from extractkit import Extractor, LocalModelError, ZeroShot

from .conftest import Invoice
from .fakes import completion

PORT = 49_151  # never bound: requests to it are answered by respx
LOCAL_URL = f"http://127.0.0.1:{PORT}/v1"


class _Proc:
    """A server process that is running until stopped."""

    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def terminate(self) -> None:
        self.returncode = 0

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def kill(self) -> None:
        self.returncode = -9


class FakeStart:
    """Replaces ``LocalServer.start``: counts the starts, and blocks (as the real one does) until
    ``ticks`` has advanced ``wait_ticks`` times while it waits (at most ``give_up_s``)."""

    def __init__(self, ticks: list[int], *, wait_ticks: int = 3, give_up_s: float = 5.0, fail_first: bool = False):
        self.ticks = ticks
        self.wait_ticks = wait_ticks
        self.give_up_s = give_up_s
        self.fail_first = fail_first
        self.starts = 0
        self.ticks_during: list[int] = []  # how far the event loop went on during each start
        self.threads: list[str] = []
        self.servers: list[local.LocalServer] = []
        self._lock = threading.Lock()

    def __call__(self, server: local.LocalServer, timeout_s: float = 0) -> local.LocalServer:
        with self._lock:
            self.starts += 1
            n = self.starts
        self.threads.append(threading.current_thread().name)
        begin, deadline = self.ticks[0], time.monotonic() + self.give_up_s
        while self.ticks[0] < begin + self.wait_ticks and time.monotonic() < deadline:
            time.sleep(0.005)
        self.ticks_during.append(self.ticks[0] - begin)
        if self.fail_first and n == 1:
            server.stop()  # as the real start does (closes its log)
            raise LocalModelError("the local model server exited with code 1:\n(fake)")
        server.proc = _Proc()  # type: ignore[assignment]
        self.servers.append(server)
        return server


@pytest.fixture
def fake_start(monkeypatch: pytest.MonkeyPatch):
    """No shared server yet; ``LocalServer.start`` faked; the fake servers stopped afterwards."""
    monkeypatch.delenv("EXTRACTKIT_LOCAL_URL", raising=False)
    monkeypatch.setattr(local, "_shared", None)
    monkeypatch.setattr(local, "_starting", None)
    monkeypatch.setattr(local, "free_port", lambda: PORT)
    monkeypatch.setattr(local.atexit, "register", lambda *a, **k: None)
    made: list[FakeStart] = []

    def install(ticks: list[int], **kw: Any) -> FakeStart:
        fake = FakeStart(ticks, **kw)
        monkeypatch.setattr(local.LocalServer, "start", lambda server, timeout_s=0: fake(server, timeout_s))
        made.append(fake)
        return fake

    yield install
    for fake in made:
        for server in fake.servers:
            server.stop()


async def heartbeat(ticks: list[int]) -> None:
    while True:
        await asyncio.sleep(0.005)
        ticks[0] += 1


def answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    content = json.dumps({"issuer": "ACME Ltd", "total": 12.5})
    return httpx.Response(200, json=completion(content=content, model=body["model"]))


async def test_the_first_calls_start_the_server_once_while_the_event_loop_goes_on(fake_start):
    ticks = [0]
    fake = fake_start(ticks)
    beat = asyncio.create_task(heartbeat(ticks))
    try:
        with respx.mock(base_url=LOCAL_URL, using="httpx", assert_all_called=False) as router:
            route = router.post("/chat/completions").mock(side_effect=answer)
            async with Extractor(Invoice, [ZeroShot(model="local", base_url="local", max_reasks=0)]) as ex:
                results = await asyncio.gather(*(ex.aextract("ACME Ltd, total 12.50") for _ in range(6)))
                assert all(r.ok for r in results), [r.error for r in results]
                assert (await ex.aextract("ACME Ltd, total 12.50")).ok  # started: not again
    finally:
        beat.cancel()
    assert fake.starts == 1 and route.call_count == 7
    # the loop kept running while the server started (on the old code it stood still: 0 ticks)
    assert fake.ticks_during[0] >= fake.wait_ticks
    assert fake.threads == ["extractkit-local-start"]


def test_callers_on_several_event_loops_share_one_start(fake_start):
    ticks = [0]
    fake = fake_start(ticks)
    urls: list[str] = []
    errors: list[BaseException] = []

    async def ask() -> None:
        beat = asyncio.create_task(heartbeat(ticks))  # every loop ticks: the start waits for them
        try:
            urls.append(await local.alocal_base_url())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            beat.cancel()

    threads = [threading.Thread(target=asyncio.run, args=(ask(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and urls == [LOCAL_URL] * 4
    assert fake.starts == 1
    assert local.local_base_url() == LOCAL_URL and fake.starts == 1  # the sync path finds it running


async def test_a_failed_start_fails_every_waiter_once_and_the_next_call_tries_again(fake_start):
    ticks = [0]
    fake = fake_start(ticks, fail_first=True)
    beat = asyncio.create_task(heartbeat(ticks))
    try:
        got = await asyncio.gather(*(local.alocal_base_url() for _ in range(3)), return_exceptions=True)
        assert fake.starts == 1
        assert all(isinstance(g, LocalModelError) for g in got), got
        assert await local.alocal_base_url() == LOCAL_URL
        assert fake.starts == 2
    finally:
        beat.cancel()


async def test_a_waiter_that_gives_up_does_not_cancel_the_start_for_the_others(fake_start):
    ticks = [0]
    fake = fake_start(ticks, wait_ticks=20)
    beat = asyncio.create_task(heartbeat(ticks))
    try:
        impatient = asyncio.create_task(local.alocal_base_url())
        patient = asyncio.create_task(local.alocal_base_url())
        await asyncio.sleep(0.02)
        impatient.cancel()
        assert await patient == LOCAL_URL
        with pytest.raises(asyncio.CancelledError):
            await impatient
        assert fake.starts == 1
    finally:
        beat.cancel()


async def test_a_set_local_url_starts_nothing(fake_start, monkeypatch):
    fake = fake_start([0])
    monkeypatch.setenv("EXTRACTKIT_LOCAL_URL", "http://127.0.0.1:8012/v1/")
    assert await local.alocal_base_url() == "http://127.0.0.1:8012/v1"
    assert fake.starts == 0
