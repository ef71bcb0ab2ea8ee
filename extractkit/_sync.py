"""The sync wrappers' event loop: one per extractor, in a daemon thread, kept between calls.

``asyncio.run`` per call would build a new loop, a new HTTP client and a new connection (a TCP
and TLS handshake with a remote provider) for every document: 20 ms per call against a local
server, where the async path takes under 1 ms. Here the loop, and the clients made on it, live
as long as the extractor (or until ``close()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread; ``run`` blocks the caller until a coroutine ends."""

    def __init__(self, name: str = "extractkit-sync"):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._lock = threading.Lock()
        self._closed = False
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def usable(self) -> bool:
        """False once closed, or in a child process after fork (the thread is gone)."""
        return not self._closed and self.thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a sync extractkit call from inside its own event loop: await the async one")
        if not self.usable:
            coro.close()
            raise RuntimeError("this extractor's sync event loop is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C in the caller: do not leave the call running behind it
            future.cancel()
            raise

    def close(self, cleanup: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> None:
        """Run ``cleanup`` (closing clients) on the loop, then stop the loop and its thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self.thread.is_alive():
            return
        if cleanup is not None:
            with contextlib.suppress(Exception):  # closing must not raise from a finaliser
                asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()

