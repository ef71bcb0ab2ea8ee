"""The batch runner: documents from folders through an Extractor, recorded in a Ledger.

Resume: a document whose text, schema and chain config already have a final result in the ledger
is not sent again unless ``force``, with two exceptions decided in ``retry_reason``: a failure
whose outcome was transient (``TRANSIENT_OUTCOMES``: rate limit, API error, timeout, connection
error) is always sent again, and one that failed validation (``VALIDATION_OUTCOMES``) is sent
again with ``retry_failed`` (after a prompt or examples change). A success is never paid twice.

Identical content is sent once per run: the first path to reach a document's sha256 extracts it,
every other path waits for that result (an asyncio future per sha256) and gets its own line in
``--out``; the ledger's ``document_paths`` keeps every path the content was seen at.

When the extractor raises ``ProviderUnreachable`` (N consecutive connection failures), no new
document is started: the rest are left unattempted (not recorded), the run ends with status
``provider_unreachable`` and the summary names the URL.

Cost ceiling (``max_cost``, USD): before each document is sent, the spend of this run's attempts
so far is compared with it; once reached, no new document is started (the rest are left
unattempted, not recorded: a rerun continues them) and the run ends with status
``stopped_max_cost``. The documents already in flight (up to ``concurrency``) finish, so the spend
may pass the ceiling by what they cost (at most their worst case, see ``extract --dry-run``).

The output file is rewritten by every run with one line per document, so a run killed half-way
and run again leaves each document exactly once in it.

One engine for both drivers: ``BatchRunner.run`` (the CLI: paths walked, ``--out``, ``on_result``)
and ``Extractor.extract_many`` (``_many.py``: texts and paths, results handed back as they finish)
feed ``Job``s to ``BatchRunner._execute``, which owns the run record, the workers, resume,
identical content and the stop when the provider is unreachable. Paths that hold no document raise
``NoDocuments`` (``count_documents``) before a run is recorded.

The runner owns its run, not the extractor: it records into the ledger it was given and paces
with its limiter, passing both to each call (``Extractor.aextract_in_run``); it changes nothing on
the extractor and does not close it (its caller made it and closes it: the CLI, or the
``extract_many`` caller). The ledger, too, is its caller's to close.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .._chain import document_sha256
from .._errors import ConfigError, DocumentError, LedgerUnavailable, ProviderRefused, ProviderUnreachable
from .._redact import redact_json
from .._results import TRANSIENT_OUTCOMES, VALIDATION_OUTCOMES
from .._words import plural
from ..ledger import RecordingLedger
from ._estimate import check_max_cost
from ._loaders import (
    MAX_BYTES,
    MAX_CHARS,
    PAGED_TYPES,
    SPECIAL,
    URI,
    Document,
    Source,
    count_documents,
    dir_error,
    display_path,
    file_sha256,
    load,
    path_bytes,
    walk,
)

if TYPE_CHECKING:
    from .._chain import Extractor
    from ._limiter import Limiter

_TRANSIENT = frozenset(o.value for o in TRANSIENT_OUTCOMES)
_VALIDATION = frozenset(o.value for o in VALIDATION_OUTCOMES)
STOPPED = "provider_unreachable"  # the run status when the provider stopped answering
STOPPED_MAX_COST = "stopped_max_cost"  # the run status when its spend reached max_cost


IN_BATCH = ("in flight in a Batch API wave of this chain, not sent live (it would be paid twice): "
            "`extract --via batch` continues it (`extractkit batch status`)")
# a document whose wave item no provider has (pending for a wave, or in a part never submitted)
NOT_SENT = ("waiting for a Batch API wave of this chain, never sent to the provider (e.g. --max-cost "
            "stopped the batch run), so not sent live: `extract --via batch` sends it, or `extractkit "
            "batch cancel --all` (with the same -c) frees it for a live run")
NEXT_WAVE = ("waiting for the next Batch API wave of this chain (its earlier answers are recorded, the next"
             " request not sent yet), so not sent live: `extract --via batch` continues it, or `extractkit "
             "batch cancel --all` (with the same -c) frees it for a live run")


def _not_at_provider(ledger: Any, schema_hash: str, config_hash: str) -> dict[str, str]:
    """The chain's in-flight documents that no provider has, each with why it is not sent live:
    items pending for a wave, or in a part never submitted (sync: a worker thread)."""
    items = list(ledger.pending_batch_items(schema_hash, config_hash))
    for job in ledger.open_batch_jobs(schema_hash, config_hash):
        if job.provider_batch_id is None and job.input_file_id is None:
            items += ledger.job_items(job.id)
    return {i.document_sha256: NEXT_WAVE if i.attempts else NOT_SENT for i in items}


def retry_reason(status: str, outcome: str | None, *, retry_failed: bool = False) -> str | None:
    """Why a document with this final ledger result is sent again, or None to reuse it."""
    if status != "failed":
        return None
    if outcome in _TRANSIENT:
        return "transient"
    if retry_failed and outcome in _VALIDATION:
        return "retry_failed"
    return None


@dataclass
class DocResult:
    path: str  # readable: UTF-8, any other byte of the file name written \xNN
    status: str  # ok | failed | error
    sha256: str | None = None
    tier: str | None = None
    value: Any = None
    outcome: str | None = None
    error: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    resumed: bool = False
    duplicate_of: str | None = None  # the path whose extraction this identical content shares
    # where each grounded value was found in the text: {"total": [{"start", "end", "page"}, ...]}
    spans: dict[str, list[dict[str, Any]]] | None = None
    # a long document's conflicts between chunks (``Conflict.to_json``); the key only when there are some
    conflicts: list[dict[str, Any]] | None = None
    # the Result, when this run extracted it (not in the --out line): Extractor.extract_many's typed value
    result: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> str:
        line = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "result"}
        if not self.conflicts:
            del line["conflicts"]
        return json.dumps(redact_json(line), ensure_ascii=False)  # the --out line


def spans_out(result: Any) -> dict[str, list[dict[str, Any]]] | None:
    """``Result.spans`` as the --out line writes it (None: no grounded value)."""
    return {k: [s.to_json() for s in v] for k, v in result.spans.items()} if result.spans else None


def _duplicate(shared: DocResult, path: str, first: str) -> DocResult:
    """The line of a path whose content another path of this run extracted: same result, no cost."""
    return replace(shared, path=path, duplicate_of=first, attempts=0, prompt_tokens=0, completion_tokens=0,
                   cost_usd=0.0, result=None)  # fmt: skip


@dataclass
class BatchSummary:
    run_id: str
    status: str = "running"  # done | failed | interrupted | provider_unreachable | stopped_max_cost
    documents: int = 0
    ok: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0  # unsupported file types
    special: int = 0  # FIFOs, sockets, devices: skipped without being opened
    resumed: int = 0
    retried: int = 0  # sent again: the last result was transient (or failed, with retry_failed)
    duplicates: int = 0  # paths whose content another path of this run already extracted
    unattempted: int = 0  # documents not started because the provider stopped answering
    attempts: int = 0  # made by this run (resumed documents add none)
    cost_usd: float | None = 0.0  # spent by this run (resumed documents add nothing)
    resumed_failed: int = 0  # resumed documents whose last result failed (not sent again)
    error: str | None = None  # why the run stopped early (provider unreachable)
    provider_url: str | None = None
    key_refused: bool = False  # stopped because the provider refused the API key (HTTP 401)
    wins: Counter[str] = field(default_factory=Counter)
    tier_failures: Counter[str] = field(default_factory=Counter)
    failed_paths: list[str] = field(default_factory=list)
    special_paths: list[str] = field(default_factory=list)

    def add(self, r: DocResult) -> None:
        self.documents += 1
        if r.status == "ok":
            self.ok += 1
            self.wins[r.tier or "?"] += 1
        elif r.status == "failed":
            self.failed += 1
        else:
            self.errors += 1
        if r.status != "ok":
            self.failed_paths.append(r.path)
        if r.duplicate_of is not None:
            self.duplicates += 1
        if r.resumed:
            self.resumed += 1
            self.resumed_failed += r.status == "failed"
            return  # paid for by an earlier run: neither its attempts nor its cost are this run's
        self.attempts += r.attempts
        if self.cost_usd is not None:
            self.cost_usd = None if r.cost_usd is None else round(self.cost_usd + r.cost_usd, 10)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wins"] = dict(self.wins)
        d["tier_failures"] = dict(self.tier_failures)
        return d


INLINE_BYTES = 64 * 1024  # plain-text files this small are read on the loop: a thread hop costs more
PATHS_FLUSH = 256  # document paths are written to the ledger in batches of this many


async def _load(
    path: Source, doc_type: str, max_bytes: int = MAX_BYTES, max_chars: int = MAX_CHARS, *,
    images: bool = False,
) -> Document:
    """PDFs, HTML, large files and every object on object storage (a ``URI``) are read in a worker
    thread; small local text files inline (reading never blocks: special files are refused
    without waiting on them). ``images``: with the page images (for a vision tier), in a thread."""
    if images:
        return await asyncio.to_thread(load, path, doc_type, max_bytes=max_bytes, max_chars=max_chars,
                                       images=True)  # fmt: skip
    if doc_type in ("txt", "md", "json") and not isinstance(path, URI):
        try:
            small = path.stat().st_size <= INLINE_BYTES
        except OSError:
            small = False  # let load() report it
        if small:
            return load(path, doc_type, max_bytes=max_bytes, max_chars=max_chars)
    return await asyncio.to_thread(load, path, doc_type, max_bytes=max_bytes, max_chars=max_chars)


async def _done_by_file(ledger: Any, extractor: Any, path: Source, doc_type: str, max_bytes: int, force: bool,
                        retry_failed: bool) -> Any:  # fmt: skip
    """The final extraction by this chain of a PDF or image with these file bytes (``source_files``)
    that the resume rule (``retry_reason``) keeps, or None: then it is loaded as usual. OCR is most
    of a rerun's time over scans (6 s a page on 2 cores); reading and hashing the file is not. Off
    the loop: the hash in a thread, the one indexed query in another."""
    find = getattr(ledger, "find_final_by_file", None)
    if force or find is None or doc_type not in PAGED_TYPES:
        return None
    file_sha = await asyncio.to_thread(file_sha256, path, max_bytes)
    if file_sha is None:  # unreadable: loading it says why
        return None
    row = await asyncio.to_thread(find, file_sha, extractor.schema_hash, extractor.config_hash)
    if row is None or retry_reason(row["status"], row["outcome"], retry_failed=retry_failed) is not None:
        return None
    return row


@dataclass(frozen=True)
class Job:
    """One thing to extract: a file (``path`` and its ``doc_type`` from the walk: None for an
    unsupported type, ``SPECIAL`` for a FIFO, socket or device) or a text given as is (``text``).
    ``index`` / ``input``: the position and the input it came from (``Extractor.extract_many``);
    ``error``: refused before anything was read (not recorded, except a folder not listed).
    ``sha256``: the content the file must still hold (a queued job, see ``_worker.py``): a file
    whose text has changed since is a ``changed`` error, not extracted."""

    path: Source | None = None
    doc_type: str | None = None
    text: str | None = None
    index: int | None = None
    input: Any = None
    error: DocumentError | None = None
    sha256: str | None = None


def text_document(text: str, max_chars: int = MAX_CHARS) -> Document:
    """An input text as a document (identity: the text's sha256, exactly as ``Extractor.extract``
    computes it; the text is not stripped). Refused like a file's text: empty, or too long."""
    if not text.strip():
        raise DocumentError("empty text", kind="empty")
    if len(text) > max_chars:
        raise DocumentError(f"{len(text)} characters of text, over the {max_chars}-character limit",
                            kind="text_too_large")  # fmt: skip
    return Document(path="", text=text, sha256=document_sha256(text), size=len(text), type="text")


class BatchRunner:
    """Runs every document under some paths through an extractor.

    ``retry_failed``: also send again documents whose last result failed validation.
    ``max_bytes`` / ``max_chars``: refuse files larger than this on disk (before reading) or
    with more characters of text than this (``too_large`` / ``text_too_large`` errors).
    ``max_cost``: USD; stop starting documents once this run's attempts cost that much (see the
    module docstring). Every tier needs a known price: ``ConfigError`` otherwise.
    ``on_total(n)``: called once before the first document with the number of documents the
    paths hold (counted by walking them, nothing read), e.g. for a progress bar's total.
    ``limiter``: paces this run's requests (default: the extractor's ``limiter``, if any).

    Every document is recorded into ``ledger`` (None: nothing recorded, nothing resumed) under
    this run; the extractor's own ledger and limiter are neither used nor changed, and the
    extractor is left open: whoever made it closes it (``async with extractor:`` around ``run``).

    ``run`` raises ``NoDocuments`` (before a run is recorded) when the paths hold no document.
    ``Extractor.extract_many`` drives the same runner over texts and paths (``_execute``).
    """

    def __init__(
        self,
        extractor: Extractor[Any],
        ledger: RecordingLedger | None,
        *,
        concurrency: int = 8,
        force: bool = False,
        retry_failed: bool = False,
        out: str | Path | None = None,
        on_result: Callable[[DocResult, BatchSummary], None] | None = None,
        include: list[str] | None = None,
        freeze_gc: bool = False,
        max_bytes: int = MAX_BYTES,
        max_chars: int = MAX_CHARS,
        max_cost: float | None = None,
        on_total: Callable[[int], None] | None = None,
        limiter: Limiter | None = None,
    ):
        if max_bytes < 1 or max_chars < 1:
            raise ConfigError("max_bytes and max_chars must be at least 1")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        check_max_cost(extractor, max_cost)  # before anything is sent: every tier priced
        self.max_cost = max_cost
        self._spent = 0.0  # USD of this run's attempts (resumed documents cost it nothing)
        self._cost_stopped = False
        self.include = include
        # the CLI owns its process: moving everything alive at the start (modules, schemas, the
        # SDK's types) out of the collector's reach makes every later collection cheaper
        self.freeze_gc = freeze_gc
        self.extractor = extractor
        self.ledger = ledger
        self.limiter = limiter if limiter is not None else extractor.limiter
        self.concurrency = concurrency
        if any(getattr(t, "is_local", False) for t in getattr(extractor, "tiers", ())):
            from ..local import reserve_slots

            reserve_slots(concurrency)  # one slot of the local server per document in flight
        self.force = force
        self.retry_failed = retry_failed
        self.max_bytes = max_bytes
        self.max_chars = max_chars
        self.out = Path(out) if out else None
        self.on_result = on_result
        self.on_total = on_total
        self._stop: ProviderUnreachable | None = None
        # identical content in flight in this run: the first path's future, dropped once its final
        # result is in the ledger (a later copy finds it there, see _extract). Keeping every
        # document's DocResult to the end of the run doubled the peak memory of a 100,000-document
        # batch; nothing here grows with the number of documents
        self._seen: dict[str, asyncio.Future[DocResult | None]] = {}
        self._in_batch: set[str] = set()  # this chain's documents in flight in Batch API waves
        self._unsent: dict[str, str] = {}  # those no provider has: why each is not sent live
        self._paths: list[tuple[str, str, bytes, str | None]] = []
        self._files: list[tuple[str, str]] = []  # (file sha256, document sha256) of PDFs and images

    def _over_budget(self) -> bool:
        """Whether this run's spend has reached ``max_cost``: checked before each document."""
        if self.max_cost is not None and self._spent >= self.max_cost:
            self._cost_stopped = True
        return self._cost_stopped

    def _from_ledger(self, doc: Document, row: Any) -> DocResult:
        return DocResult(
            path=doc.path, status=row["status"], sha256=doc.sha256, tier=row["tier"],
            value=json.loads(row["value_json"]) if row["value_json"] else None,
            outcome=row["outcome"], error=row["error"], attempts=row["n_attempts"],
            prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
            cost_usd=row["cost_usd"], resumed=True,
            spans=json.loads(row["spans_json"]) if row["spans_json"] else None,
            conflicts=json.loads(row["conflicts_json"]) if row["conflicts_json"] else None,
        )  # fmt: skip

    def _error(self, run_id: str, exc: DocumentError, path: str) -> DocResult:
        ex = self.extractor
        if self.ledger is not None:
            self.ledger.record_error(
                run_id=run_id, path=path, kind=exc.kind, message=str(exc),
                schema_hash=ex.schema_hash, config_hash=ex.config_hash,
            )  # fmt: skip
        return DocResult(path=path, status="error", outcome=exc.kind, error=str(exc))

    async def _seen_at(self, doc: Document, path: Source, run_id: str) -> None:
        if self.ledger is None:
            return
        self._paths.append((doc.sha256, doc.path, path_bytes(path), run_id))
        if doc.file_sha256 is not None and hasattr(self.ledger, "add_source_files"):
            self._files.append((doc.file_sha256, doc.sha256))
        if len(self._paths) >= PATHS_FLUSH:  # written off the loop: it waits for the ledger's lock
            rows, self._paths = self._paths, []
            await asyncio.to_thread(self.ledger.add_document_paths, rows)
            files, self._files = self._files, []
            if files:
                await asyncio.to_thread(self.ledger.add_source_files, files)  # type: ignore[attr-defined]

    def _flush_paths(self) -> None:
        rows, self._paths = self._paths, []
        files, self._files = self._files, []
        if self.ledger is not None:
            self.ledger.add_document_paths(rows)
            if files:
                self.ledger.add_source_files(files)  # type: ignore[attr-defined]

    async def _resumed_by_file(self, job: Job, run_id: str) -> DocResult | None:
        """A PDF or image whose file already has this chain's final result (``_done_by_file``):
        that result, without loading the file again."""
        if job.path is None or job.doc_type is None:
            return None
        row = await _done_by_file(self.ledger, self.extractor, job.path, job.doc_type, self.max_bytes,
                                  self.force, self.retry_failed)  # fmt: skip
        if row is None:
            return None
        if job.sha256 is not None and row["document_sha256"] != job.sha256:
            return None  # queued as another document: load it and let the check below speak
        p = display_path(job.path)
        doc = Document(path=p, text="", sha256=row["document_sha256"], size=0, type=job.doc_type)
        await self._seen_at(doc, job.path, run_id)
        if row["run_id"] == run_id and row["path"] != p:  # a copy, sent by this run
            return _duplicate(replace(self._from_ledger(doc, row), resumed=False), p, row["path"])
        return self._from_ledger(doc, row)

    async def _one(self, job: Job, run_id: str, summary: BatchSummary) -> DocResult | None:
        """One document's result; None when it was left unattempted (the provider is down)."""
        if job.text is not None:
            try:
                doc = text_document(job.text, self.max_chars)
            except DocumentError as exc:  # nothing to identify it by in the ledger: not recorded
                return DocResult(path="", status="error", outcome=exc.kind, error=str(exc))
        else:
            assert job.path is not None and job.doc_type is not None
            path = job.path
            done = await self._resumed_by_file(job, run_id)
            if done is not None:
                return done
            try:
                doc = await _load(path, job.doc_type, self.max_bytes, self.max_chars,
                                  images=getattr(self.extractor, "needs_images", False))  # fmt: skip
            except DocumentError as exc:
                return self._error(run_id, exc, display_path(path))
            if job.sha256 is not None and doc.sha256 != job.sha256:
                changed = DocumentError(f"{doc.path}: its text has changed since it was queued (sha256 "
                                        f"{job.sha256[:12]}..., now {doc.sha256[:12]}...): enqueue it again",
                                        path=doc.path, kind="changed")  # fmt: skip
                return self._error(run_id, changed, doc.path)
            await self._seen_at(doc, path, run_id)
        first = self._seen.get(doc.sha256)
        if first is not None:  # identical content in flight: share the first path's extraction
            shared = await asyncio.shield(first)
            if shared is None:
                return None
            return _duplicate(shared, doc.path, shared.path)
        fut: asyncio.Future[DocResult | None] = asyncio.get_running_loop().create_future()
        self._seen[doc.sha256] = fut
        r: DocResult | None = None
        try:
            r = await self._extract(doc, run_id, summary)
        finally:
            fut.set_result(r)  # None on any failure: the waiters are left unattempted too
        if r is not None and r.status in ("ok", "failed"):  # final and in the ledger: found there
            del self._seen[doc.sha256]
        return r

    async def _extract(self, doc: Document, run_id: str, summary: BatchSummary) -> DocResult | None:
        ex = self.extractor
        retry = False
        if not self.force and self.ledger is not None:
            # off the loop: a shared ledger may wait out a database outage here (batch/_worker.py)
            row = await asyncio.to_thread(self.ledger.find_final, doc.sha256, ex.schema_hash, ex.config_hash)
            if row is not None:
                if retry_reason(row["status"], row["outcome"], retry_failed=self.retry_failed) is None:
                    # a copy, sent by this run (a text has no path)
                    if row["run_id"] == run_id and row["path"] != (doc.path or None):
                        return _duplicate(replace(self._from_ledger(doc, row), resumed=False), doc.path,
                                          row["path"])  # fmt: skip
                    return self._from_ledger(doc, row)
                retry = True
        if doc.sha256 in self._in_batch:
            return DocResult(path=doc.path, status="error", sha256=doc.sha256, outcome="in_batch",
                             error=self._unsent.get(doc.sha256, IN_BATCH))  # fmt: skip
        if self._stop is not None or self._over_budget():
            return None
        summary.retried += retry
        try:
            file = bool(doc.path)  # a text given as is: recorded as ``Extractor.extract`` records it
            result = await ex.aextract_in_run(
                doc.text, ledger=self.ledger, run_id=run_id, limiter=self.limiter,
                path=doc.path if file else None, size=doc.size if file else None,
                doc_type=doc.type if file else None, pages=doc.pages, sha256=doc.sha256,
                images=doc.images,
            )
        except DocumentError as exc:  # a vision tier's document without page images (no_images)
            return self._error(run_id, exc, doc.path)
        except ProviderUnreachable as exc:
            if self._stop is None:
                self._stop = exc
            if exc.result is None:  # nothing was sent for this one: leave it unattempted
                return None
            result = exc.result  # attempts were made and recorded: it has its line like any other
        except (ConfigError, LedgerUnavailable):  # misuse; the shared ledger away for too long
            raise
        except Exception as exc:  # a bug must not stop the batch: record it for this document
            msg = f"{doc.path or 'text'}: internal error: {type(exc).__name__}: {exc}"
            if self.ledger is not None:
                self.ledger.record_error(
                    run_id=run_id, path=doc.path or None, kind="internal_error", message=msg,  # type: ignore[arg-type]
                    schema_hash=ex.schema_hash, config_hash=ex.config_hash,
                    document_sha256=doc.sha256,
                )  # fmt: skip
            return DocResult(path=doc.path, status="error", sha256=doc.sha256,
                             outcome="internal_error", error=msg)  # fmt: skip
        self._spent += result.cost_usd or 0.0
        for a in result.attempts:
            if not a.ok:
                summary.tier_failures[a.tier] += 1
        usage = result.usage
        return DocResult(
            path=doc.path, status="ok" if result.ok else "failed", sha256=doc.sha256,
            tier=result.tier,
            value=result.value.model_dump(mode="json") if result.value is not None else None,
            outcome=result.outcome.value, error=result.error, attempts=len(result.attempts),
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cost_usd=result.cost_usd, result=result,
            spans=spans_out(result),
            conflicts=[c.to_json() for c in result.conflicts] or None,
        )  # fmt: skip

    async def run(
        self, paths: list[str | os.PathLike[str] | URI], *, total: int | None = None
    ) -> BatchSummary:
        """Extract every document under ``paths`` (local files and folders, ``URI``s or ``str``
        URIs: ``s3://bucket/prefix``). ``total``: the count of ``count_documents``
        when the caller has it already (the CLI, which checks before opening anything); counted
        here otherwise. Raises ``NoDocuments`` before a run is recorded when there is none."""
        if total is None:  # a walk of the folders, off the event loop; no file is read
            total = await asyncio.to_thread(count_documents, list(paths), self.include)
        if self.on_total is not None:
            self.on_total(total)
        unlisted: list[Job] = []  # folders the walk could not list

        def on_error(exc: OSError) -> None:
            unlisted.append(Job(error=dir_error(exc)))

        files: Iterator[tuple[Source, str | None]] = walk(paths, self.include, on_error=on_error)
        out: IO[str] | None = None
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            # backslashreplace: a lone surrogate in a value must not cost the rest of the file
            out = self.out.open("w", encoding="utf-8", errors="backslashreplace")

        def write(_job: Job, r: DocResult, summary: BatchSummary) -> None:
            if out is not None:
                out.write(r.to_json() + "\n")
                out.flush()
            if self.on_result is not None:
                self.on_result(r, summary)

        try:
            return await self._execute((Job(path=p, doc_type=t) for p, t in files), unlisted, write)
        finally:
            if out is not None:
                out.close()

    async def _execute(
        self,
        jobs: Iterator[Job] | AsyncIterator[Job],
        unlisted: list[Job],
        sink: Callable[[Job, DocResult, BatchSummary], None],
    ) -> BatchSummary:
        """Run ``jobs`` in one recorded run, ``concurrency`` at a time: every result goes to
        ``sink`` as it is ready (with its job). ``unlisted``: folders the walk could not list (a
        job with its ``dir_error`` each, appended as the walk goes), recorded as errors. The run
        is recorded as ``batch`` with its counts and final status (``done``,
        ``provider_unreachable`` with ``summary.error``, ``failed`` on an exception,
        ``interrupted`` on cancellation). ``jobs`` may be an async iterator (the queue's claims,
        ``_worker.py``) that the ``concurrency`` tasks share."""
        ex = self.extractor
        run_id = ""  # without a ledger nothing is recorded
        if self.ledger is not None:
            run_id = self.ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        summary = BatchSummary(run_id=run_id)
        self._stop, self._seen, self._paths = None, {}, []
        # documents of this chain in flight in the Batch API's waves (`extract --via batch`): sent
        # live too they would be paid twice and recorded twice when their wave is read
        in_flight = getattr(self.ledger, "in_flight", None)
        if in_flight is not None:
            self._in_batch = await asyncio.to_thread(in_flight, ex.schema_hash, ex.config_hash)
            self._unsent = {}
            if self._in_batch:
                self._unsent = await asyncio.to_thread(_not_at_provider, self.ledger, ex.schema_hash,
                                                       ex.config_hash)  # fmt: skip
        self._spent, self._cost_stopped = 0.0, False

        def emit(job: Job, r: DocResult) -> None:
            summary.add(r)
            sink(job, r, summary)

        def report_unlisted() -> None:
            while unlisted:
                job = unlisted.pop(0)
                assert job.error is not None
                emit(job, self._error(run_id, job.error, job.error.path or "?"))

        async def next_job() -> Job | None:
            if isinstance(jobs, AsyncIterator):
                return await anext(jobs, None)
            return next(jobs, None)

        async def worker() -> None:
            while (job := await next_job()) is not None:  # a shared iterator: files are read as needed
                report_unlisted()
                if job.error is not None:  # refused before reading: not recorded
                    emit(job, DocResult(path=display_path(job.path) if job.path else "", status="error",
                                        outcome=job.error.kind, error=str(job.error)))  # fmt: skip
                elif job.text is None and job.doc_type is None:
                    summary.skipped += 1
                elif job.doc_type == SPECIAL:
                    summary.special += 1
                    summary.special_paths.append(display_path(job.path or ""))
                elif self._stop is not None or self._over_budget():
                    summary.unattempted += 1  # counted, never opened
                else:
                    r = await self._one(job, run_id, summary)
                    if r is None:
                        summary.unattempted += 1
                    else:
                        emit(job, r)
            report_unlisted()

        status = "interrupted"
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            tasks = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            status = "done"
            if self._stop is not None:
                status = STOPPED
                summary.provider_url = self._stop.url
                said = str(self._stop)
                if self._stop.url not in said:  # the URL is named whatever the message says
                    said = f"provider unreachable at {self._stop.url}: {said}"
                refused = summary.key_refused = isinstance(self._stop, ProviderRefused)
                when = "once the key is right" if refused else "when the provider answers"
                summary.error = (
                    f"{said}; stopped sending: {plural(summary.unattempted, 'document')} left"
                    f" unattempted; run the same command again {when}"
                )
            elif self._cost_stopped:
                status = STOPPED_MAX_COST
                summary.error = (
                    f"max cost ${self.max_cost:g} reached: this run spent ${self._spent:.6f}; stopped"
                    f" sending: {plural(summary.unattempted, 'document')} left unattempted (finished results"
                    " are kept); run the same command again to continue them (each run has its own max cost)"
                )
        except Exception:
            status = "failed"
            raise
        finally:
            if self.freeze_gc:
                gc.unfreeze()
            summary.status = status
            try:
                self._flush_paths()
            finally:
                if self.ledger is not None:
                    self.ledger.finish_run(
                        run_id, status, n_documents=summary.documents, n_ok=summary.ok,
                        n_failed=summary.failed, n_errors=summary.errors,
                        n_skipped=summary.skipped + summary.special, n_resumed=summary.resumed,
                    )  # fmt: skip
        return summary
