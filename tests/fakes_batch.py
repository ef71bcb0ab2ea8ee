"""A stateful fake of OpenAI's Batch API (the files and batches endpoints) for tests: a real HTTP
server on 127.0.0.1, driven by the same scripted ``responder`` as ``fakes.FakeLLMServer``, so one
script answers both the live path and the batch path.

Endpoints (under ``/v1``): ``POST /files`` (multipart, ``purpose=batch``; the JSON Lines are
validated as OpenAI validates them: a ``custom_id`` unique in the file, ``method`` POST, a ``url``,
a ``body`` naming a ``model``, one model per file, at most ``max_lines`` lines and ``max_bytes``
bytes: HTTP 400 otherwise), ``GET /files`` (``purpose``), ``GET /files/{id}``,
``GET /files/{id}/content``, ``POST /batches``
(``input_file_id``, ``endpoint``, ``completion_window``), ``GET /batches/{id}``,
``POST /batches/{id}/cancel``, ``GET /batches`` (``limit``, ``after``).

Progress is deterministic, under the test's control: ``step()`` moves every unfinished batch one
state on (validating -> in_progress -> finalizing -> completed; cancelling -> cancelled), and
``advance_on_poll=n`` moves a batch n states on each time it is retrieved (a driver that polls
reaches the end without a clock). The lines run (the responder is called) on leaving
``in_progress``, in input order. How a batch ends is scripted by a ``BatchPlan``: queued with
``plan(...)`` for the next batches created, or decided by ``planner(batch_no, lines)``:

- ``end="completed"``: every line runs; a responder status other than 200 puts the line in the
  error file (``response.status_code`` 429 / 500 and the error body, as OpenAI writes it);
- ``end="failed"``: validation fails (``errors.data``), nothing runs, no output file;
- ``end="expired"``: the first ``run_lines`` lines run, the others are in the error file with
  ``error.code == "batch_expired"`` and no response;
- cancelled: ``POST /batches/{id}/cancel`` (``cancelling``, then ``cancelled`` on the next step):
  the first ``run_lines`` lines of an in-progress batch run, the others are listed in the error
  file with ``batch_cancelled`` (``list_unrun=False``: left out of both files, as a driver must
  also expect);
- ``shuffle=True`` (the default): output and error lines in a seeded random order, never the
  input order (matched by ``custom_id``, as with the real API).

``ScriptedResponder`` scripts the replies per (document marker, model), in order, for both fakes.

Everything is recorded: ``.requests`` holds each request body the responder was asked to answer
(the same meaning as ``FakeLLMServer.requests``), ``.calls`` each HTTP call (method, path, JSON
body or form fields), ``.batches`` and ``.files`` the server's state.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from .fakes import Responder, error_body

MAX_LINES = 50_000  # OpenAI's limits on one batch input file
MAX_BYTES = 200 * 1024 * 1024
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_NEXT = {"validating": "in_progress", "in_progress": "finalizing", "finalizing": "completed",
         "cancelling": "cancelled"}  # fmt: skip
BASE_TIME = 1_700_000_000


@dataclass
class BatchPlan:
    """How one batch ends (see the module docstring)."""

    end: Literal["completed", "failed", "expired"] = "completed"
    run_lines: int | None = None  # expired / cancelled: how many lines ran first (None: all / none)
    shuffle: bool = True
    seed: int = 0
    list_unrun: bool = True  # cancelled: unrun lines in the error file (batch_cancelled)
    errors: list[dict[str, Any]] = field(
        default_factory=lambda: [{"code": "invalid_request", "message": "scripted failure", "line": 1}]
    )


@dataclass
class FakeFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}  # fmt: skip


@dataclass
class FakeBatch:
    id: str
    no: int  # 1-based, in creation order
    input_file_id: str
    endpoint: str
    completion_window: str
    lines: list[dict[str, Any]]
    plan: BatchPlan
    created_at: int
    metadata: dict[str, str] | None = None
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    times: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})
    history: list[str] = field(default_factory=lambda: ["validating"])
    was_running: bool = False  # cancelled while in progress (some lines may have run)

    def to_json(self) -> dict[str, Any]:
        t = self.times
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": (
                {"object": "list", "data": self.errors} if self.errors is not None else None),
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": self.created_at,
            "in_progress_at": t.get("in_progress"), "expires_at": self.created_at + 86_400,
            "finalizing_at": t.get("finalizing"), "completed_at": t.get("completed"),
            "failed_at": t.get("failed"), "expired_at": t.get("expired"),
            "cancelling_at": t.get("cancelling"), "cancelled_at": t.get("cancelled"),
            "request_counts": dict(self.counts), "metadata": self.metadata,
            "model": self.lines[0]["body"]["model"] if self.lines else None,
        }  # fmt: skip


class BadRequest(Exception):
    def __init__(self, message: str, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.code, self.status = code, status


def validate_lines(data: bytes, *, max_lines: int = MAX_LINES) -> list[dict[str, Any]]:
    """The request lines of a batch input file, or ``BadRequest`` naming the first problem."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the file is not UTF-8", "invalid_file_format") from None
    lines: list[dict[str, Any]] = []
    ids: set[str] = set()
    models: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            raise BadRequest(f"line {n}: empty line", "invalid_file_format")
        try:
            line = json.loads(raw)
        except ValueError:
            raise BadRequest(f"line {n}: not JSON", "invalid_json_line") from None
        if not isinstance(line, dict):
            raise BadRequest(f"line {n}: not a JSON object", "invalid_json_line")
        cid = line.get("custom_id")
        if not isinstance(cid, str) or not cid:
            raise BadRequest(f"line {n}: custom_id missing", "missing_custom_id")
        if cid in ids:
            raise BadRequest(f"line {n}: duplicate custom_id {cid!r}", "duplicate_custom_id")
        ids.add(cid)
        if line.get("method") != "POST":
            raise BadRequest(f"line {n}: method must be POST", "invalid_method")
        if line.get("url") not in ENDPOINTS:
            raise BadRequest(f"line {n}: url {line.get('url')!r} is not a batch endpoint", "invalid_url")
        body = line.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise BadRequest(f"line {n}: body with a model missing", "missing_model")
        models.add(body["model"])
        if len(models) > 1:
            raise BadRequest(f"line {n}: more than one model in the file: {sorted(models)}", "mixed_models")
        lines.append(line)
    if not lines:
        raise BadRequest("the file has no request lines", "empty_file")
    if len(lines) > max_lines:
        raise BadRequest(f"{len(lines)} lines: at most {max_lines} per batch", "too_many_requests")
    if len({line["url"] for line in lines}) > 1:
        raise BadRequest("more than one url in the file", "mixed_urls")
    return lines


def _form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data -> {name: (filename, bytes)} (the stdlib's MIME parser)."""
    msg = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    out: dict[str, tuple[str | None, bytes]] = {}
    if not msg.is_multipart():
        raise BadRequest("expected multipart/form-data")
    for part in msg.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)
            out[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return out


Reply = tuple[int, dict[str, Any], dict[str, str]]


class ScriptedResponder:
    """One script for both fakes: ``script[(marker, model)]`` is the replies, in order, to the
    requests for that model whose messages contain ``marker`` (a string unique to one document);
    the last reply repeats once the list is used up. Call counts per key are in ``.calls``, so a
    test can check that the live path and the batch path asked the same questions. A request no
    key matches gets a 400 naming it (a script error shows up as an outcome, not a hang).
    ``marker(body)``: the request's marker found directly (one lookup per request: for scripts of
    thousands of documents); by default each key's marker is searched for in the messages."""

    def __init__(
        self,
        script: dict[tuple[str, str], list[Reply]],
        marker: Callable[[dict[str, Any]], str | None] | None = None,
    ):
        self.script = script
        self.marker = marker
        self.calls: dict[tuple[str, str], int] = dict.fromkeys(script, 0)
        self.lock = threading.Lock()

    def key(self, body: dict[str, Any]) -> tuple[str, str] | None:
        model = body.get("model", "")
        if self.marker is not None:
            found = (self.marker(body) or "", model)
            return found if found in self.script else None
        text = json.dumps(body.get("messages", []), ensure_ascii=False)
        for marker, m in self.script:
            if m == model and (marker in text or json.dumps(marker, ensure_ascii=False)[1:-1] in text):
                return marker, m
        return None

    def __call__(self, body: dict[str, Any]) -> Reply:
        key = self.key(body)
        if key is None:
            return 400, error_body(f"no scripted reply for model {body.get('model')!r}"), {}
        with self.lock:
            n = self.calls[key]
            self.calls[key] = n + 1
        replies = self.script[key]
        return replies[min(n, len(replies) - 1)]


class FakeBatchServer:
    """A real HTTP server on 127.0.0.1 serving the files and batches endpoints (module docstring).

    ``responder(request_body) -> (status, body, headers)`` answers each request line, as for
    ``FakeLLMServer``. ``advance_on_poll``: states a batch moves on per ``GET /batches/{id}``
    (0: only ``step()`` moves it). ``api_key``: when set, any other bearer token gets a 401.
    """

    def __init__(
        self,
        responder: Responder,
        *,
        advance_on_poll: int = 0,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
        api_key: str | None = None,
        planner: Callable[[int, list[dict[str, Any]]], BatchPlan] | None = None,
    ):
        self.responder = responder
        self.advance_on_poll = advance_on_poll
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.api_key = api_key
        self.planner = planner
        self.plans: deque[BatchPlan] = deque()
        self.requests: list[dict[str, Any]] = []  # each request body the responder answered
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, JSON body / form fields)
        self.files: dict[str, FakeFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self._clock = itertools.count(BASE_TIME)
        self.httpd = self._make_server()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- scripting ------------------------------------------------------------------------------
    def plan(self, *plans: BatchPlan, **kwargs: Any) -> None:
        """Queue how the next batches end: ``plan(BatchPlan(...), ...)`` or ``plan(end="expired", ...)``."""
        with self.lock:
            self.plans.extend(plans or (BatchPlan(**kwargs),))

    def step(self, batch_id: str | None = None) -> None:
        """Move ``batch_id`` (default: every unfinished batch) one state on."""
        with self.lock:
            targets = [self.batches[batch_id]] if batch_id else list(self.batches.values())
            for b in targets:
                self._advance(b)

    def finish(self, batch_id: str | None = None) -> None:
        """Step until ``batch_id`` (default: every batch) is in a final state."""
        with self.lock:
            targets = [self.batches[batch_id]] if batch_id else list(self.batches.values())
            for b in targets:
                while b.status not in TERMINAL:
                    self._advance(b)

    def batch(self, n: int) -> FakeBatch:
        """The ``n``-th batch created (1-based)."""
        with self.lock:
            return next(b for b in self.batches.values() if b.no == n)

    def file_lines(self, file_id: str | None) -> list[dict[str, Any]]:
        with self.lock:
            if file_id is None:
                return []
            return [json.loads(x) for x in self.files[file_id].data.decode().splitlines()]

    # -- state ----------------------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def _now(self) -> int:
        return next(self._clock)

    def _set(self, b: FakeBatch, status: str) -> None:
        b.status = status
        b.times[status] = self._now()
        b.history.append(status)

    def _advance(self, b: FakeBatch) -> None:
        if b.status in TERMINAL:
            return
        if b.status == "validating" and b.plan.end == "failed":
            b.errors = list(b.plan.errors)
            self._set(b, "failed")
            return
        if b.status == "in_progress" and b.plan.end == "expired":
            self._run(b, b.plan.run_lines or 0, "batch_expired", "This request could not be executed "
                      "before the completion window expired.")  # fmt: skip
            self._set(b, "expired")
            return
        if b.status == "in_progress":
            self._run(b, len(b.lines), "", "")
        elif b.status == "cancelling":
            ran = (b.plan.run_lines or 0) if b.was_running else 0
            self._run(b, ran, "batch_cancelled", "This request was not executed: the batch was cancelled.")
        self._set(b, _NEXT[b.status])

    def _run(self, b: FakeBatch, n: int, unrun_code: str, unrun_message: str) -> None:
        """Run the first ``n`` lines through the responder; the rest, if ``unrun_code``, go to
        the error file with that code. Writes the output and error files."""
        out: list[dict[str, Any]] = []
        err: list[dict[str, Any]] = []
        for i, line in enumerate(b.lines):
            rid = f"batch_req_{b.id}_{i:05d}"
            if i < n:
                self.requests.append(line["body"])
                status, body, _headers = self.responder(line["body"])
                response = {"status_code": status, "request_id": f"req_{b.id}_{i:05d}", "body": body}
                entry = {"id": rid, "custom_id": line["custom_id"], "response": response, "error": None}
                (out if status == 200 else err).append(entry)
            elif unrun_code and (unrun_code != "batch_cancelled" or b.plan.list_unrun):
                err.append({"id": rid, "custom_id": line["custom_id"], "response": None,
                            "error": {"code": unrun_code, "message": unrun_message}})  # fmt: skip
        if b.plan.shuffle:
            rng = random.Random(b.plan.seed)
            for entries in (out, err):
                if len(entries) > 1:
                    order = list(entries)
                    while entries == order:  # never the input order
                        rng.shuffle(entries)
        b.counts = {"total": len(b.lines), "completed": len(out), "failed": len(err)}
        b.output_file_id = self._store_output(b, out, "output")
        b.error_file_id = self._store_output(b, err, "error")

    def _store_output(self, b: FakeBatch, entries: list[dict[str, Any]], kind: str) -> str | None:
        if not entries:
            return None  # as OpenAI: no file when there is nothing in it
        data = "".join(json.dumps(e) + "\n" for e in entries).encode()
        f = FakeFile(self._id("file"), f"{b.id}_{kind}.jsonl", "batch_output", data, self._now())
        self.files[f.id] = f
        return f.id

    # -- endpoints ------------------------------------------------------------------------------
    def _upload(self, fields: dict[str, tuple[str | None, bytes]]) -> dict[str, Any]:
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if "file" not in fields:
            raise BadRequest("file missing", "missing_file")
        filename, data = fields["file"]
        if purpose == "batch":
            if len(data) > self.max_bytes:
                raise BadRequest(
                    f"{len(data)} bytes: at most {self.max_bytes} per batch file", "file_too_large"
                )
            validate_lines(data, max_lines=self.max_lines)
        f = FakeFile(self._id("file"), filename or "upload.jsonl", purpose, data, self._now())
        self.files[f.id] = f
        return f.to_json()

    def _create_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        fid, endpoint, window = body.get("input_file_id"), body.get("endpoint"), body.get("completion_window")
        if fid not in self.files:
            raise BadRequest(f"no such file: {fid}", "invalid_input_file", 404)
        f = self.files[fid]
        if f.purpose != "batch":
            raise BadRequest(f"file {fid} has purpose {f.purpose!r}, not 'batch'", "invalid_purpose")
        if endpoint not in ENDPOINTS:
            raise BadRequest(f"endpoint {endpoint!r} is not supported", "invalid_endpoint")
        if window != "24h":
            raise BadRequest(f"completion_window {window!r}: only '24h'", "invalid_completion_window")
        lines = validate_lines(f.data, max_lines=self.max_lines)
        no = len(self.batches) + 1
        plan = (
            self.plans.popleft() if self.plans else (self.planner(no, lines) if self.planner else BatchPlan())
        )
        if lines[0]["url"] != endpoint and plan.end != "failed":  # OpenAI fails it in validation
            plan = BatchPlan(end="failed", errors=[{"code": "invalid_url", "line": 1, "message":
                             f"url {lines[0]['url']} does not match the batch endpoint {endpoint}"}])  # fmt: skip
        b = FakeBatch(self._id("batch"), no, fid, endpoint, window, lines, plan, self._now(),
                      metadata=body.get("metadata"))  # fmt: skip
        b.counts["total"] = len(lines)
        self.batches[b.id] = b
        return b.to_json()

    def _cancel(self, b: FakeBatch) -> dict[str, Any]:
        if b.status in ("validating", "in_progress"):
            b.was_running = b.status == "in_progress"
            self._set(b, "cancelling")
        elif b.status not in ("cancelling", "cancelled"):
            raise BadRequest(f"cannot cancel a batch that is {b.status}", "invalid_state", 409)
        return b.to_json()

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        limit = int(query.get("limit", ["20"])[0])
        items = sorted(self.batches.values(), key=lambda b: -b.no)  # newest first, as OpenAI lists
        after = query.get("after", [None])[0]
        if after is not None:
            items = items[[b.id for b in items].index(after) + 1 :] if after in self.batches else []
        page = items[:limit]
        return {"object": "list", "data": [b.to_json() for b in page],
                "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                "has_more": len(items) > limit}  # fmt: skip

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        """One call: (status, JSON body or raw bytes)."""
        with self.lock:
            self.calls.append((method, path, body))
            if method == "POST" and path == "/v1/files":
                return 200, self._upload(body)
            if method == "POST" and path == "/v1/batches":
                return 200, self._create_batch(body)
            if method == "GET" and path == "/v1/batches":
                return 200, self._list(query)
            if method == "GET" and path == "/v1/files":  # an unfinished upload's file is found again here
                purpose = query.get("purpose", [None])[0]
                files = [f.to_json() for f in self.files.values() if purpose in (None, f.purpose)]
                return 200, {"object": "list", "data": files, "has_more": False}
            m = re.fullmatch(r"/v1/files/([\w-]+)(/content)?", path)
            if m and method == "GET":
                f = self.files.get(m.group(1))
                if f is None:
                    raise BadRequest(f"no such file: {m.group(1)}", "not_found", 404)
                return 200, (f.data if m.group(2) else f.to_json())
            m = re.fullmatch(r"/v1/batches/([\w-]+)(/cancel)?", path)
            if m:
                b = self.batches.get(m.group(1))
                if b is None:
                    raise BadRequest(f"no such batch: {m.group(1)}", "not_found", 404)
                if method == "POST" and m.group(2):
                    return 200, self._cancel(b)
                if method == "GET" and not m.group(2):
                    for _ in range(self.advance_on_poll):
                        self._advance(b)
                    return 200, b.to_json()
            raise BadRequest(f"{method} {path}: not served by the fake", "unknown_url", 404)

    # -- HTTP -----------------------------------------------------------------------------------
    def _make_server(self) -> ThreadingHTTPServer:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length", 0)))

            def _serve(self, method: str) -> None:
                url = urlsplit(self.path)
                raw = self._body() if method == "POST" else b""
                try:
                    key = outer.api_key
                    if key is not None and self.headers.get("authorization") != f"Bearer {key}":
                        raise BadRequest("Incorrect API key provided", "invalid_api_key", 401)
                    ctype = self.headers.get("content-type", "")
                    body: Any
                    if ctype.startswith("multipart/form-data"):
                        body = _form_fields(ctype, raw)
                    else:
                        body = json.loads(raw) if raw else None
                    status, payload = outer.handle(method, url.path, parse_qs(url.query), body)
                except BadRequest as exc:
                    status, payload = exc.status, error_body(str(exc), exc.code)
                except ValueError as exc:
                    status, payload = 400, error_body(f"bad request: {exc}")
                if isinstance(payload, bytes):
                    data, kind = payload, "application/octet-stream"
                else:
                    data, kind = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away (killed on purpose) is not a test failure

        return Server(("127.0.0.1", 0), Handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeBatchServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
