"""A stub of the chat-completions API for benchmarks, on 127.0.0.1.

    python -m benchmarks.stub_server --latency 0.2 --tpm 60000 --rpm 0 --fail-rate 0.01

Prints ``{"port": N}`` on its first line, then serves until killed. It answers tool calls (and
json_schema requests) with an invoice copied from the document (``From: ...`` / ``Total: ...``),
so extractions validate and pass the grounding guard. Limits are enforced like a provider's:
a token bucket per minute (refilled continuously, ``--burst-s`` seconds of capacity), counting a
request as ceil(characters / 4) + max_tokens, the way OpenAI estimates a request against TPM;
beyond them it answers 429 with ``retry-after`` and ``retry-after-ms``. ``GET /stats`` returns
the counters; ``POST /reset`` zeroes them.

Fault injection (``--faults``; bench_faults, bench_kill): each request is identified by the
document's ``Ref: DOC-...`` line and the model (one model per tier) and numbered per document and
model (the n-th request for a document and a tier is that tier's attempt n). A document's
``Fault-plan: MODEL=KIND ...`` line decides the fault of the first request to each model it
names; other requests draw one with ``--fault-rate`` from a ``random.Random`` seeded with
(``--seed``, document, model, number), so a run is reproducible. Every request is written to
``--log`` (JSON Lines) when it arrives and again when it is answered (a hang: dropped), with the
fault injected.
``--echo-key`` puts the request's ``Authorization`` header into every field a provider could echo
it into: error bodies, refusal text, ``model``, ``system_fingerprint`` (and the tool arguments of
the ``echo_args`` fault).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
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
        self.faults = Faults(args) if args.faults or args.log else None
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

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.faults is not None:
            return await self.faults.chat(request, body)
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
        if self.faults is not None:
            return web.json_response(self.faults.stats)
        return web.json_response(self.stats)

    async def post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


FAULT_KINDS = (
    "hang", "huge", "drip", "fence", "html200", "reset", "http429", "http500", "http503", "refusal",
    "length", "invalid_json", "schema_invalid", "ungrounded", "echo_403", "echo_args",
)  # fmt: skip
_REF = re.compile(r"Ref: (DOC-[0-9A-Za-z_-]+)")
_PLAN = re.compile(r"Fault-plan: ([^\n]*)")


class Faults:
    """The fault-injecting answerer (``--faults``). See the module docstring."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.kinds = [k for k in (args.fault_kinds.split(",") if args.fault_kinds else FAULT_KINDS) if k]
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise SystemExit(f"unknown fault kinds: {sorted(unknown)}")
        self.seq: dict[tuple[str, str], int] = {}
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
        self.stats: dict[str, Any] = {"requests": 0, "answered": 0, "faults": {}}
        self._huge: bytes | None = None

    def write(self, **entry: Any) -> None:
        if self.log is not None:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    @staticmethod
    def document(body: dict[str, Any]) -> tuple[str, str]:
        """(the document's Ref, its text): from the message that carries the Ref line."""
        for m in body.get("messages", []):
            content = m.get("content")
            if isinstance(content, str) and _REF.search(content):
                text = content.rsplit("<document>", 1)[-1]
                ref = _REF.search(text) or _REF.search(content)
                assert ref is not None
                return ref.group(1), text
        return "unknown", ""

    def decide(self, doc: str, text: str, model: str, n: int) -> str:
        if n == 1:
            plan = _PLAN.search(text)
            for item in (plan.group(1).split() if plan else []):
                name, _, kind = item.partition("=")
                if name == model and kind:
                    return kind
        if self.args.fault_rate and self.kinds:
            rng = random.Random(f"{self.args.seed}/{doc}/{model}/{n}")
            if rng.random() < self.args.fault_rate:
                return rng.choice(self.kinds)
        return "none"

    async def chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        model = str(body.get("model", "stub"))
        doc, text = self.document(body)
        n = self.seq[(doc, model)] = self.seq.get((doc, model), 0) + 1
        kind = self.decide(doc, text, model, n)
        # the request's identity without its attempt number: the same request sent again hashes alike
        digest = hashlib.sha256(json.dumps(body.get("messages", []), sort_keys=True).encode()).hexdigest()[:16]
        entry = {"doc": doc, "model": model, "n": n, "fault": kind, "request": digest}
        self.stats["requests"] += 1
        self.stats["faults"][kind] = self.stats["faults"].get(kind, 0) + 1
        self.write(event="received", t=time.time(), **entry)
        if self.args.latency:
            await asyncio.sleep(self.args.latency)
        auth = request.headers.get("Authorization", "") if self.args.echo_key else ""
        try:
            response = await self.respond(request, body, kind, text, auth)
        except ConnectionError:  # the client gave up (a timeout) while a drip was still sending
            response = web.Response(status=204)
        finally:
            # "answered": the provider did the work (it bills it, whether the client is still there)
            self.stats["answered"] += 1
            self.write(event="dropped" if kind == "hang" else "answered", t=time.time(), **entry)
        return response

    # -- the answers ---------------------------------------------------------------------------
    def completion(self, body: dict[str, Any], args: str, auth: str, *, refusal: str | None = None,
                   finish: str | None = None) -> dict[str, Any]:  # fmt: skip
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": refusal}
        if refusal is not None:
            finish = finish or "stop"
        elif body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}]
            finish = finish or "tool_calls"
        else:
            message["content"] = args
            finish = finish or "stop"
        answer: dict[str, Any] = {
            "id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()),
            "model": f"{body.get('model', 'stub')} {auth}".strip(),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }  # fmt: skip
        if auth:
            answer["system_fingerprint"] = f"fp_{auth}"
        return answer

    @staticmethod
    def value(text: str) -> dict[str, Any]:
        issuer = re.search(r"(?m)^From: (.+)$", text)
        total = re.search(r"Total: ([\d.]+)", text)
        return {"issuer": issuer.group(1).strip() if issuer else "unknown",
                "total": float(total.group(1)) if total else 0.0}  # fmt: skip

    @staticmethod
    def error(status: int, message: str, auth: str, headers: dict[str, str] | None = None) -> web.Response:
        text = f"{message} {auth}".strip()
        return web.json_response({"error": {"message": text, "type": "fault", "code": str(status)}},
                                 status=status, headers=headers)  # fmt: skip

    async def respond(self, request: web.Request, body: dict[str, Any], kind: str, text: str,
                      auth: str) -> web.StreamResponse:  # fmt: skip
        good = json.dumps(self.value(text))
        if kind == "hang":  # never answers; the connection is dropped after --hang-s
            await asyncio.sleep(self.args.hang_s)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=204)
        if kind == "huge":
            if self._huge is None:
                filler = "x" * int(self.args.huge_mb * 1024 * 1024)
                args = json.dumps({"issuer": filler, "total": 1.0})
                self._huge = json.dumps(self.completion(body, args, "")).encode()
            return web.Response(body=self._huge, content_type="application/json")
        if kind in ("drip", "reset"):
            payload = json.dumps(self.completion(body, good, auth)).encode()
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                           "Content-Length": str(len(payload))})  # fmt: skip
            await resp.prepare(request)
            if kind == "reset":  # half the body, then the connection is cut
                await resp.write(payload[: len(payload) // 2])
                await asyncio.sleep(0.05)
                if request.transport is not None:
                    request.transport.abort()
                return resp
            step = max(1, len(payload) // 40)  # about 40 writes spread over --drip-s
            for i in range(0, len(payload), step):
                await resp.write(payload[i : i + step])
                await asyncio.sleep(self.args.drip_s / 40)
            await resp.write_eof()
            return resp
        if kind == "html200":
            page = f"<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1>{auth}</body></html>"
            return web.Response(text=page, content_type="text/html")
        if kind == "http429":
            return self.error(429, "Rate limit reached", auth, {"retry-after": "1"})
        if kind in ("http500", "http503"):
            return self.error(int(kind[4:]), "The server had an error", auth)
        if kind == "echo_403":
            # 403, not 401: a 401 (the key refused) now stops the whole run at once (ProviderRefused,
            # tests/test_refused.py); a 403 body echoing the key still tests the redaction of error bodies
            return self.error(403, f"Permission denied for key: {auth or 'sk-...'}", "")
        if kind == "refusal":
            return web.json_response(self.completion(body, "", auth, refusal=f"I can't help with that. {auth}".strip()))
        if kind == "length":
            return web.json_response(self.completion(body, good[: len(good) // 2], auth, finish="length"))
        args = {
            "fence": f"```json\n{good}\n```",
            "invalid_json": "{not json",
            "schema_invalid": json.dumps({"issuer": "Firm", "total": "a lot"}),
            "ungrounded": json.dumps({"issuer": "Nowhere Holdings", "total": 987654.32}),
            "echo_args": json.dumps({"issuer": auth or "Bearer sk-echo", "total": 1.0}),
        }.get(kind, good)
        return web.json_response(self.completion(body, args, auth))


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
    f = p.add_argument_group("fault injection (see the module docstring)")
    f.add_argument("--faults", type=int, default=0, help="1: answer by fault plan (Fault-plan: lines, --fault-rate)")
    f.add_argument("--log", type=str, default=None, help="JSON Lines log of every request (implies --faults)")
    f.add_argument("--fault-rate", type=float, default=0.0, help="share of unplanned requests given a random fault")
    f.add_argument("--fault-kinds", type=str, default="", help="comma list drawn from by --fault-rate (default all)")
    f.add_argument("--echo-key", type=int, default=0, help="1: echo the Authorization header into every field")
    f.add_argument("--hang-s", type=float, default=60.0, help="how long a hang holds the connection")
    f.add_argument("--drip-s", type=float, default=6.0, help="how long a slow drip takes to send its body")
    f.add_argument("--huge-mb", type=float, default=12.0, help="size of the huge body")
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
