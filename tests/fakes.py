"""Fakes of the chat-completions API for tests: response builders (for respx) and a real
scripted HTTP server on 127.0.0.1 (for subprocesses such as the CLI and the examples)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BASE_URL = "http://fake-llm.test/v1"


def completion(
    arguments: dict[str, Any] | str | None = None,
    *,
    content: str | None = None,
    name: str = "Invoice",
    finish_reason: str | None = None,
    usage: tuple[int, int, int] = (100, 20, 0),
    refusal: str | None = None,
    model: str = "gpt-4o-mini",
) -> dict[str, Any]:
    """A chat.completion body. ``arguments`` -> a tool call; ``content`` -> a text answer."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if arguments is not None:
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        message["tool_calls"] = [
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}
        ]
    finish = finish_reason or ("tool_calls" if arguments is not None else "stop")
    prompt, completion_tokens, cached = usage
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


def error_body(message: str, code: str | None = None, type_: str = "invalid_request_error"):
    return {"error": {"message": message, "type": type_, "code": code, "param": None}}


Responder = Callable[[dict[str, Any]], tuple[int, dict[str, Any], dict[str, str]]]


class FakeLLMServer:
    """A real HTTP server on 127.0.0.1 answering /v1/chat/completions with ``responder``.

    ``responder(request_json) -> (status, body, headers)``. Requests are kept in ``.requests``.
    """

    def __init__(self, responder: Responder):
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer.lock:
                    outer.requests.append(body)
                status, payload, headers = outer.responder(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away (killed on purpose) is not a test failure

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeLLMServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def echo_invoice_responder(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Answers with values copied from the document (so grounding passes): a toy 'model'."""
    import re

    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    doc = user.rsplit("<document>", 1)[-1]
    issuer = re.search(r"(?im)^\s*(?:from|issuer|seller)[:\s]+(.+)$", doc)
    total = re.search(r"(?i)total[^\d]*([\d.,]+)", doc)
    args = {
        "issuer": issuer.group(1).strip() if issuer else "unknown",
        "total": float(total.group(1).replace(",", "")) if total else 0,
    }
    name = body.get("tools", [{}])[0].get("function", {}).get("name", "Invoice")
    return 200, completion(args, name=name, model=body.get("model", "m")), {}
