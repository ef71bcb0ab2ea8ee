"""A scripted chat-completions server for the event-loop and connection tests: raw HTTP/1.1 on
127.0.0.1, on its own event loop in its own thread (a client that stalls its loop cannot stall
the server, so what the client records is the client's doing). Unlike tests/fakes.py it can
hang, drip a body byte by byte, stream a huge body in chunks and count what it sent."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    hang: bool = False  # read the request, never answer
    drip_s: float | None = None  # send the body one byte per drip_s seconds
    chunks: Callable[[], Iterator[bytes]] | None = None  # a chunked body, generated as it is sent
    cut: bool = False  # announce the whole body, send half of it, then close (a reset mid-body)


def json_reply(payload: dict[str, Any], status: int = 200) -> Reply:
    return Reply(status=status, body=json.dumps(payload).encode())


class ScriptedServer:
    """``script(request_json) -> Reply``. ``.requests`` keeps the request bodies; ``.sent`` the
    body bytes each chunked reply got into the socket before the client went away."""

    def __init__(self, script: Callable[[dict[str, Any]], Reply], sock: socket.socket | None = None):
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.sent: list[int] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._sock = sock
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _start(self) -> None:
        if self._sock is not None:
            self._server = await asyncio.start_server(self._accept, sock=self._sock)
        else:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away: what these tests provoke
        except asyncio.CancelledError:
            pass  # stopped at exit (a cancelled connection task is logged as an error by asyncio)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        body = json.loads(await reader.readexactly(int(m.group(1)))) if m else {}
        self.requests.append(body)
        reply = self.script(body)
        if reply.hang:
            await asyncio.sleep(3600)
            return
        lines = [f"HTTP/1.1 {reply.status} X", f"content-type: {reply.content_type}", "connection: close"]
        if reply.chunks is not None:
            lines.append("transfer-encoding: chunked")
        else:
            lines.append(f"content-length: {len(reply.body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        if reply.chunks is not None:
            sent = 0
            self.sent.append(0)
            for chunk in reply.chunks():
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
                self.sent[-1] = sent
            writer.write(b"0\r\n\r\n")
        elif reply.drip_s is not None:
            for i in range(len(reply.body)):
                writer.write(reply.body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(reply.drip_s)
        elif reply.cut:
            writer.write(reply.body[: len(reply.body) // 2])
            await writer.drain()
            writer.transport.abort()  # RST, not a clean close: the rest never comes
            return
        else:
            writer.write(reply.body)
        await writer.drain()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound a moment ago, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content") or "") for m in body.get("messages", []) if m.get("role") == "user")
