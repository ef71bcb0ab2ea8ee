"""A stub of the chat-completions API for benchmarks, on 127.0.0.1.

    python -m benchmarks.stub_server --latency 0.2 --tpm 60000 --rpm 0 --fail-rate 0.01

Prints ``{"port": N}`` on its first line, then serves until killed. It answers tool calls (and
json_schema requests) with an invoice copied from the document (``From: ...`` / ``Total: ...``),
so extractions validate and pass the grounding guard. Limits are enforced like a provider's:
a token bucket per minute (refilled continuously, ``--burst-s`` seconds of capacity), counting a
request as ceil(characters / 4) + max_tokens, the way OpenAI estimates a request against TPM;
beyond them it answers 429 with ``retry-after`` and ``retry-after-ms``. ``GET /stats`` returns
the counters; ``POST /reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import re
import sys
import time
from typing import Any

from aiohttp import web


class Bucket:
    def __init__(self, per_minute: float, burst_s: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.t = time.monotonic()

    def take(self, amount: float) -> float:
        """0 when taken; else seconds until ``amount`` would be available (nothing taken)."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now
        need = min(amount, self.capacity)
        if self.level >= need:
            self.level -= need
            return 0.0
        return (need - self.level) / self.rate


class Stub:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.reset()

    def reset(self) -> None:
        a = self.args
        self.rpm = Bucket(a.rpm, a.burst_s) if a.rpm else None
        self.tpm = Bucket(a.tpm, a.burst_s) if a.tpm else None
        self.stats: dict[str, Any] = {"requests": 0, "ok": 0, "rate_limited": 0, "failed": 0, "invalid": 0,
                                      "tokens_accepted": 0, "first_accepted": None, "last_accepted": None}  # fmt: skip

    @staticmethod
    def tokens(body: dict[str, Any]) -> int:
        chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
        chars += len(json.dumps(body.get("tools", ""))) + len(json.dumps(body.get("response_format", "")))
        out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        return math.ceil(chars / 4) + int(out)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.stats["requests"] += 1
        cost = self.tokens(body)
        wait = max(self.rpm.take(1) if self.rpm else 0.0, self.tpm.take(cost) if self.tpm else 0.0)
        if wait > 0:
            self.stats["rate_limited"] += 1
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                status=429, headers={"retry-after": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))},
            )  # fmt: skip
        now = time.monotonic()
        self.stats["tokens_accepted"] += cost
        self.stats["first_accepted"] = self.stats["first_accepted"] or now
        self.stats["last_accepted"] = now
        if self.args.latency:
            await asyncio.sleep(self.args.latency)
        if self.rng.random() < self.args.fail_rate:
            self.stats["failed"] += 1
            return web.json_response({"error": {"message": "stub failure", "type": "server_error"}}, status=500)
        self.stats["ok"] += 1
        return web.json_response(self.answer(body, cost))

    def answer(self, body: dict[str, Any], cost: int) -> dict[str, Any]:
        user = next((m.get("content") or "" for m in reversed(body["messages"]) if m["role"] == "user"), "")
        doc = user.rsplit("<document>", 1)[-1]
        issuer = re.search(r"(?m)^From: (.+)$", doc)
        total = re.search(r"Total: ([\d.]+)", doc)
        value = {"issuer": issuer.group(1).strip() if issuer else "unknown",
                 "total": float(total.group(1)) if total else 0.0}  # fmt: skip
        args = json.dumps(value)
        if self.rng.random() < self.args.invalid_rate:
            self.stats["invalid"] += 1
            args = "{not json"
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}]
            finish = "tool_calls"
        else:
            message["content"] = args
            finish = "stop"
        prompt = cost - int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
        return {
            "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 20, "total_tokens": prompt + 20},
        }  # fmt: skip

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    p.add_argument("--rpm", type=float, default=0.0, help="requests/minute limit (0: none)")
    p.add_argument("--tpm", type=float, default=0.0, help="tokens/minute limit (0: none)")
    p.add_argument("--burst-s", type=float, default=5.0, help="bucket capacity, in seconds of the limit")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 500")
    p.add_argument("--invalid-rate", type=float, default=0.0, help="share answered with invalid JSON")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    stub = Stub(args)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", stub.chat)
    app.router.add_get("/stats", stub.get_stats)
    app.router.add_post("/reset", stub.post_reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"port": port}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parse(sys.argv[1:])))
