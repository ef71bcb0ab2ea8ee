"""The provider's Batch API (OpenAI's files + batches endpoints) as the wave driver uses it.

``BatchProvider`` wraps an ``openai.AsyncOpenAI`` client made by ``_llm.make_client(tier)`` (so
its response hook caps every body it reads, error bodies included) and adds what the live path
adds around a chat call:

- a total deadline around every call (the SDK's timeout is per socket read: a slow drip evades
  it); uploads and downloads get their own, longer deadlines;
- a cap on every body read: control answers at ``CONTROL_BYTES``, downloads at
  ``max_download_bytes`` (read chunk by chunk, abandoned at the cap: ``BatchError``);
- HTTP 200 with something that is not the endpoint's JSON (a proxy's HTML page) is an upstream
  failure, retried like a 502;
- transient failures (408/409/429/5xx, timeouts, connection resets) retried by the extractor's
  ``RetryPolicy`` (``_retry.retry_delay``, Retry-After honoured, ``_retry.sleep``); connection
  failures counted by a ``CircuitBreaker``: ``ProviderUnreachable`` after ``unreachable_after``
  in a row; HTTP 401 -> ``ProviderRefused`` (the provider's message, which can quote the key,
  is never kept);
- HTTP 404 on the files endpoint: ``BatchUnsupported`` naming the base URL (the provider has no
  Batch API); any other refusal: ``BatchError``; a ``failed`` batch: ``BatchFailed`` (see
  ``failure``), unless it failed only for a token or rate limit (its lines go to the next wave);
- every message redacted (``_redact``: the one boundary) before it is kept or raised.

Parsing of the input and output files (``write_parts``, ``parse_results``) is pure, sync code
that the driver runs in a worker thread: a part is written and measured line by line (at most
``MAX_LINES`` lines and ``MAX_PART_BYTES`` bytes, one model per file); an output or error file
is read by ``custom_id`` in any order.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import openai
from openai.types import Batch, FileObject

from .. import _redact, _retry
from .._errors import BatchError, BatchFailed, BatchUnsupported, ProviderUnreachable
from .._transport import BODY_CAP, read_capped, within
from .._words import plural

T = TypeVar("T")

ENDPOINT: Final = "/v1/chat/completions"
COMPLETION_WINDOW: Final = "24h"
METADATA_KEY = "extractkit_job"  # batches.create metadata: the ledger's batch_jobs.id
MAX_LINES = 50_000  # OpenAI's limits on one batch input file
MAX_PART_BYTES = 190 * 1024 * 1024  # under the 200 MB limit, with room for multipart framing
CONTROL_BYTES = 1024 * 1024  # a control answer (a file object, a batch, a page of batches)
MAX_DOWNLOAD_BYTES = 1024 * 1024 * 1024  # an output or error file (50,000 answers of a few kB)
UPLOAD_TIMEOUT_S = 1800.0  # total deadline of one upload / download (each read still has the tier's)
DOWNLOAD_TIMEOUT_S = 1800.0
LIST_PAGE = 100
LIST_MAX_PAGES = 50  # find_batch looks at most this many pages back
# a batch failed for these codes is not an error of its input: its lines are retried in the next wave
RETRY_FAILURE_CODES = frozenset({"token_limit_exceeded", "rate_limit_exceeded"})
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ERROR_KEEP_CHARS = 1500


class NotTheAnswer(Exception):
    """HTTP 200 whose body is not what the endpoint returns (an HTML page, an error object)."""

    status_code = 200


def _short(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        text = f"HTTP {exc.status_code}: {exc.message}"
    else:
        text = f"{type(exc).__name__}: {exc}"
        if _retry.is_connection_failure(exc):
            root = _retry.root_cause(exc)
            if root is not exc:
                text = f"{type(root).__name__}: {root} (via {type(exc).__name__})"
    return _redact.redact(text)[:ERROR_KEEP_CHARS]


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, NotTheAnswer) or _retry.is_transient(exc)


def _expect(value: Any, kind: type[T], what: str) -> T:
    """The SDK hands back the body text when it is not JSON: that is an upstream failure."""
    if isinstance(value, kind):
        return value
    head = _redact.redact(str(value)[:200])
    raise NotTheAnswer(f"HTTP 200 with a body that is not {what}: {head!r}")


class BatchProvider:
    """The files and batches endpoints of one provider (one tier's client).

    ``retry_policy``: how transient failures are retried (the extractor's ``policy.retry``).
    ``breaker``: counts connection failures per base URL (default: one of this provider's own).
    ``max_download_bytes``: the cap on an output or error file.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        retry_policy: _retry.RetryPolicy | None = None,
        breaker: _retry.CircuitBreaker | None = None,
        max_download_bytes: int = MAX_DOWNLOAD_BYTES,
        timeout_s: float | None = None,
        upload_timeout_s: float = UPLOAD_TIMEOUT_S,
        download_timeout_s: float = DOWNLOAD_TIMEOUT_S,
    ):
        self.client = client
        self.url = str(client.base_url).rstrip("/")
        self.policy = retry_policy or _retry.RetryPolicy()
        self.breaker = breaker or _retry.CircuitBreaker(self.policy.unreachable_after)
        self.max_download_bytes = max_download_bytes
        client_timeout = client.timeout if isinstance(client.timeout, (int, float)) else 60.0
        self.timeout_s = float(timeout_s if timeout_s is not None else client_timeout)
        self.upload_timeout_s = upload_timeout_s
        self.download_timeout_s = download_timeout_s

    # -- one call, bounded, retried -----------------------------------------------------------
    async def _call(
        self, what: str, fn: Callable[[], Awaitable[T]], *, timeout_s: float, cap: int | None = None,
        on_404: Callable[[openai.APIStatusError], BatchError] | None = None, refusal_final: bool = False,
    ) -> T:  # fmt: skip
        """``fn()`` under a total deadline and a body cap, transient failures retried.
        ``refusal_final``: an HTTP 4xx other than 401, 408 and 429 is the provider's answer (a 409
        "cannot cancel a batch that is finalizing"), not a transient failure: not retried."""
        tries = 0
        while True:
            tries += 1
            self.breaker.check(self.url)
            token = BODY_CAP.set(cap if cap is not None else CONTROL_BYTES)
            try:
                result = await within(timeout_s, fn())
            except (ProviderUnreachable, BatchError):
                raise
            except Exception as exc:
                status = _retry.status_code(exc)
                if status == 401:
                    self.breaker.refused(self.url, exc)  # raises ProviderRefused (no provider text)
                if _retry.is_connection_failure(exc):
                    self.breaker.failed(self.url, exc)  # raises ProviderUnreachable when it opens
                elif status is not None or isinstance(exc, NotTheAnswer):
                    self.breaker.answered(self.url)
                if status == 404 and on_404 is not None and isinstance(exc, openai.APIStatusError):
                    raise on_404(exc) from None
                big = next((e for e in _retry.causes(exc) if isinstance(e, _retry.ResponseTooLarge)), None)
                if big is not None:  # the SDK wraps what the capped stream raised: not retried
                    raise BatchError(
                        f"{what}: {_short(big)}", url=self.url, status_code=big.status_code
                    ) from None
                if tries >= self.policy.max_attempts and _retry.is_connection_failure(exc):
                    raise ProviderUnreachable(  # as live: nobody answered, exit 3, a rerun continues
                        f"{what}: the provider at {self.url} did not answer {plural(tries, 'try', 'tries')}: "
                        f"{_short(exc)}", url=self.url, failures=tries,
                    ) from None  # fmt: skip
                refused = refusal_final and status is not None and 400 <= status < 500 and status not in (
                    401, 408, 429)  # fmt: skip
                if refused or not _transient(exc) or tries >= self.policy.max_attempts:
                    raise BatchError(
                        f"{what} at {self.url} failed after {plural(tries, 'try', 'tries')}: {_short(exc)}",
                        url=self.url,
                        status_code=status,
                    ) from None  # not chained: the SDK's error can quote the key
                await _retry.sleep(_retry.retry_delay(tries, _retry.response_headers(exc), self.policy))
                continue
            finally:
                BODY_CAP.reset(token)
            self.breaker.answered(self.url)
            return result

    def _unsupported(self, exc: openai.APIStatusError) -> BatchError:
        return BatchUnsupported(
            f"the provider at {self.url} has no Batch API (HTTP 404 on its files endpoint): "
            'set via = "live" on the tier, or run without --via batch',
            url=self.url, status_code=404,
        )  # fmt: skip

    # -- files ----------------------------------------------------------------------------------
    async def upload(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        """Upload a JSON Lines input file (``purpose=batch``); its file id. The file is read in
        a worker thread (the SDK reads a path with anyio)."""
        p = Path(path)

        async def send() -> FileObject:
            data = await asyncio.to_thread(p.read_bytes)
            f = await self.client.files.create(
                file=(name or p.name, data, "application/jsonl"), purpose="batch"
            )
            return _expect(f, FileObject, "a file object")

        return (
            await self._call("upload", send, timeout_s=self.upload_timeout_s, on_404=self._unsupported)
        ).id

    async def find_file(self, name: str) -> str | None:
        """The id of an uploaded ``purpose=batch`` file named ``name`` (an upload whose id was
        never recorded), or None."""

        async def page() -> Any:
            return await self.client.files.list(purpose="batch")

        got = await self._call("list files", page, timeout_s=self.timeout_s, on_404=self._unsupported)
        for f in getattr(got, "data", None) or ():
            if isinstance(f, FileObject) and f.filename == name:
                return f.id
        return None

    async def download(self, file_id: str) -> bytes:
        """An output or error file's bytes, read incrementally and refused at the cap
        (``BatchError``), under ``download_timeout_s`` in total."""
        cap = self.max_download_bytes

        async def fetch() -> bytes:
            async with self.client.files.with_streaming_response.content(file_id) as resp:
                return await read_capped(resp.http_response, cap)  # the live path's capped read

        return await self._call(f"download {file_id}", fetch, timeout_s=self.download_timeout_s, cap=cap + 1)

    # -- batches --------------------------------------------------------------------------------
    async def create(self, input_file_id: str, job_id: str) -> Batch:
        """Start the batch of an uploaded file; ``job_id`` (the ledger's) goes in its metadata."""

        async def send() -> Batch:
            b = await self.client.batches.create(
                input_file_id=input_file_id, endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW,
                metadata={METADATA_KEY: job_id},
            )  # fmt: skip
            return _expect(b, Batch, "a batch")

        return await self._call("create batch", send, timeout_s=self.timeout_s)

    async def retrieve(self, batch_id: str) -> Batch:
        async def send() -> Batch:
            return _expect(await self.client.batches.retrieve(batch_id), Batch, "a batch")

        return await self._call(f"poll {batch_id}", send, timeout_s=self.timeout_s)

    async def cancel(self, batch_id: str) -> Batch:
        """Cancel a batch. The provider refusing it (HTTP 409 for a batch already finalizing or
        ended, any 4xx but 401 / 408 / 429) is not retried: ``BatchError`` with that status at once."""

        async def send() -> Batch:
            return _expect(await self.client.batches.cancel(batch_id), Batch, "a batch")

        return await self._call(f"cancel {batch_id}", send, timeout_s=self.timeout_s, refusal_final=True)

    async def try_cancel(self, batch_id: str) -> tuple[Batch, str | None]:
        """Cancel a batch unless the provider refuses (see ``cancel``): the batch as it is then
        (polled again after a refusal) and the refusal's text (None: cancelled or cancelling)."""
        try:
            return await self.cancel(batch_id), None
        except BatchError as exc:
            if exc.status_code is None or not 400 <= exc.status_code < 500:
                raise
            return await self.retrieve(batch_id), str(exc)

    async def cancel_or_lose(
        self, batch_id: str, *, abandon: bool = False
    ) -> tuple[Batch | None, str | None, str | None]:
        """What ``batch cancel`` does with one submitted part: cancel it unless it has ended or the
        provider refuses (``try_cancel``). Returns (the batch as it is then, the refusal's text, why
        the part is lost). A part is lost (None, None, reason) when the provider no longer knows
        the batch (HTTP 404) or, with ``abandon``, whatever the provider answered; any other error
        is raised with the way out added (``batch cancel --all --abandon``)."""
        try:
            batch = await self.retrieve(batch_id)
            refused = None
            if batch.status not in ("completed", "failed", "expired", "cancelled", "cancelling"):
                batch, refused = await self.try_cancel(batch_id)
            return batch, refused, None
        except (BatchError, ProviderUnreachable) as exc:
            if abandon or (isinstance(exc, BatchError) and exc.status_code == 404):
                return None, None, str(exc)
            exc.args = (f"{exc}; `extractkit batch cancel --all --abandon` (with the same -c) "
                        "frees its documents whatever the provider answers",)  # fmt: skip
            raise

    async def find_batch(self, input_file_id: str, *, since: float | None = None) -> Batch | None:
        """The batch created from ``input_file_id`` (a create whose answer was lost), or None.
        Batches are listed newest first; the search stops at one created before ``since`` (the
        job's creation time, a minute of clock skew allowed) or after ``LIST_MAX_PAGES`` pages."""
        after: str | None = None
        for _ in range(LIST_MAX_PAGES):

            async def page(after: str | None = after) -> Any:
                if after is None:
                    return await self.client.batches.list(limit=LIST_PAGE)
                return await self.client.batches.list(limit=LIST_PAGE, after=after)

            got = await self._call("list batches", page, timeout_s=self.timeout_s)
            data = [b for b in (getattr(got, "data", None) or ()) if isinstance(b, Batch)]
            for b in data:
                if b.input_file_id == input_file_id:
                    return b
                if since is not None and b.created_at < since - 60:
                    return None
            if not data or not getattr(got, "has_more", False):
                return None
            after = data[-1].id
        return None

    # -- what a finished batch means ------------------------------------------------------------
    def failure(self, batch: Batch) -> BatchFailed | None:
        """A ``failed`` batch as ``BatchFailed`` (its errors redacted), or None: not failed, or
        failed only for a token / rate limit (its lines are retried in the next wave)."""
        if batch.status != "failed":
            return None
        errors = batch_errors(batch)
        if errors and all(e.get("code") in RETRY_FAILURE_CODES for e in errors):
            return None
        said = "; ".join(
            f"{e.get('code')}: {e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "")
            for e in errors[:5]
        )
        said = said or "no reason given"
        return BatchFailed(
            _redact.redact(f"the provider failed batch {batch.id} at {self.url}: {said}")[:ERROR_KEEP_CHARS],
            batch_id=batch.id, errors=errors, url=self.url,
        )  # fmt: skip


def batch_errors(batch: Batch) -> list[dict[str, Any]]:
    """A batch's ``errors.data`` as plain dicts, redacted."""
    data = getattr(getattr(batch, "errors", None), "data", None) or []
    out = []
    for e in data:
        d = e.model_dump() if hasattr(e, "model_dump") else dict(e)
        out.append(_redact.redact_json({k: d.get(k) for k in ("code", "message", "line", "param")}))
    return out


def request_counts(batch: Batch) -> dict[str, int]:
    c = batch.request_counts
    if c is None:
        return {"total": 0, "completed": 0, "failed": 0}
    return {"total": c.total, "completed": c.completed, "failed": c.failed}


# -- the input files ----------------------------------------------------------------------------
@dataclass
class Part:
    """One input file: the lines of one (tier, model), within the line and byte limits."""

    tier: str
    model: str
    path: Path
    item_ids: list[str] = field(default_factory=list)
    n_bytes: int = 0


def request_line(custom_id: str, body: dict[str, Any]) -> bytes:
    line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def write_parts(
    lines: Iterable[tuple[str, str, str, dict[str, Any]]],
    directory: str | os.PathLike[str],
    *,
    max_lines: int = MAX_LINES,
    max_bytes: int = MAX_PART_BYTES,
) -> list[Part]:
    """Write ``(tier, model, custom_id, body)`` lines into JSON Lines parts under ``directory``:
    one (tier, model) per file, at most ``max_lines`` lines and ``max_bytes`` bytes each, measured
    as each line is written. Sync and CPU-bound (the bodies are serialised here, and ``lines``
    may build them lazily): run it in a worker thread. The parts in the order they were opened."""
    if max_lines < 1 or max_bytes < 1:
        raise ValueError("max_lines and max_bytes must be at least 1")
    folder = Path(directory)
    parts: list[Part] = []
    open_parts: dict[tuple[str, str], tuple[Part, Any]] = {}
    try:
        for tier, model, custom_id, body in lines:
            data = request_line(custom_id, body)
            if len(data) > max_bytes:
                raise BatchError(
                    f"one request line of {len(data)} bytes is over the {max_bytes}-byte part limit"
                )
            key = (tier, model)
            current = open_parts.get(key)
            if current is not None:
                part, fh = current
                if len(part.item_ids) >= max_lines or part.n_bytes + len(data) > max_bytes:
                    fh.close()
                    current = None
            if current is None:
                fd, name = tempfile.mkstemp(prefix=f"wave-{len(parts):04d}-", suffix=".jsonl", dir=folder)
                part = Part(tier, model, Path(name))
                fh = os.fdopen(fd, "wb")
                open_parts[key] = (part, fh)
                parts.append(part)
            else:
                part, fh = current
            fh.write(data)
            part.item_ids.append(custom_id)
            part.n_bytes += len(data)
    finally:
        for _, fh in open_parts.values():
            fh.close()
    return parts


# -- the output and error files ---------------------------------------------------------------
@dataclass(frozen=True)
class LineResult:
    """What the provider says about one request line.

    ``status_code`` 200 and ``body`` the chat completion (a dict): answered; another status:
    an HTTP error (``body`` the error body); ``status_code`` None: not run, ``error_code`` says
    why (``batch_expired``, ``batch_cancelled``, ...)."""

    custom_id: str
    status_code: int | None
    body: Any = None
    error_code: str | None = None
    error_message: str | None = None
    too_large: tuple[int, int] | None = None  # (the cap, the body's bytes): a body over the cap, not kept

    @property
    def answered(self) -> bool:
        return self.status_code == 200


@dataclass
class Results:
    """A finished batch's lines by ``custom_id``; ``bad``: lines that could not be read."""

    lines: dict[str, LineResult] = field(default_factory=dict)
    bad: int = 0
    unknown: int = 0  # lines whose custom_id was not sent in this batch

    def missing(self, sent: Iterable[str]) -> list[str]:
        """Sent ids in neither file (a batch cancelled early): not run."""
        return [i for i in sent if i not in self.lines]


def _read_line(raw: bytes, max_body_bytes: int | None = None) -> LineResult | None:
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(d, dict) or not isinstance(d.get("custom_id"), str):
        return None
    resp, err = d.get("response"), d.get("error")
    err = err if isinstance(err, dict) else {}
    code = err.get("code") if isinstance(err.get("code"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else None
    if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
        body = resp.get("body")
        if max_body_bytes is not None and len(raw) > max_body_bytes:  # only then is the body measured
            size = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())
            if size > max_body_bytes:  # as the live path's capped read: the body is not kept
                return LineResult(d["custom_id"], resp["status_code"], None, code, message,
                                  too_large=(max_body_bytes, size))  # fmt: skip
        return LineResult(d["custom_id"], resp["status_code"], body, code, message)
    return LineResult(d["custom_id"], None, None, code or "no_response", message)


def parse_results(output: bytes | None, error: bytes | None, sent: Iterable[str] | None = None,
                  max_body_bytes: int | None = None) -> Results:  # fmt: skip
    """The lines of an output and an error file (either may be None), matched by ``custom_id``
    in whatever order they come. An answered line wins over an error line for the same id; the
    first of two answers wins. ``sent``: the ids of the batch (others are counted, not kept).
    ``max_body_bytes``: a line whose response body is larger (compact JSON) is kept without its
    body, with ``too_large`` set (the live path's ``max_response_bytes``: ``response_too_large``).
    Sync and CPU-bound: run it in a worker thread for a large file."""
    known = set(sent) if sent is not None else None
    res = Results()
    for data in (output, error):
        if not data:
            continue
        for raw in data.splitlines():
            if not raw.strip():
                continue
            line = _read_line(raw, max_body_bytes)
            if line is None:
                res.bad += 1
                continue
            if known is not None and line.custom_id not in known:
                res.unknown += 1
                continue
            have = res.lines.get(line.custom_id)
            if have is None or (not have.answered and line.answered):
                res.lines[line.custom_id] = line
    return res


def check_readable(data: bytes | None, results: Results, what: str) -> None:
    """A downloaded file none of whose lines could be read (an HTML page served as the file):
    ``BatchError`` rather than every line taken as not run."""
    if data and data.strip() and results.bad and not results.lines and not results.unknown:
        head = _redact.redact(data[:200].decode("utf-8", "replace"))
        raise BatchError(f"the {what} file is not JSON Lines: {head!r}")
