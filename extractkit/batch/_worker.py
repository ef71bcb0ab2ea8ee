"""A worker: documents claimed from the shared PostgreSQL queue through the batch runner.

``Worker.run`` is ``BatchRunner._execute`` fed by the queue instead of a folder walk: the same
loaders, resume (``find_final``), per-document errors, limits and ledger recording. What the
worker adds is the queue's side:

- claims: jobs of its own schema and chain config, a few at a time (``claim_batch``), leased for
  ``lease_s`` seconds; expired leases of dead workers are taken over first;
- heartbeats: every ``lease_s / 3`` seconds one statement extends the lease of every job it holds
  (sent from the event loop: a worker whose loop is stuck stops renewing, and its jobs go to the
  others);
- marks: each result marks its job ``done`` (ok) or ``failed`` (a failed extraction or an
  unreadable document), in small batches off the loop; ``enqueue`` queues a failed job again
  when its failure was transient or its document unreadable (as a rerun of ``extract`` sends
  them again), and one that failed validation with ``retry_failed``;
- stop: when nothing is waiting and no other worker holds a job of this chain (``wait=False``;
  a job another worker holds may still come back if that worker dies), or never (``wait=True``,
  until ``stop()`` or cancellation). ``stop()`` (the CLI's first SIGTERM or Ctrl-C) claims nothing
  more and lets the documents in flight finish; on cancellation (a second signal) the marks are
  written and every job still held goes back to ``waiting`` at once.

Nothing is lost or paid twice by a crash between recording an extraction and marking its job:
the job's lease runs out, another worker claims it, and ``find_final`` finds the recorded result
(resumed, no request sent).

A database outage (a restart, a failover) is ridden out: every call to the queue and the ledger
(and the shared limiter's leases) is sent again with backoff while the database is away
(``ledger.Outage``; a lost COMMIT of an extraction is looked up before it is written again), and
the worker says so in two lines ("ledger unreachable, retrying...", "ledger back after N s").
Away for longer than ``outage_limit_s``, the worker stops with ``LedgerUnavailable``: what it
recorded is in the ledger, and the documents it held go back to the queue (at once if the
database answers by then, otherwise when their lease runs out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError, DocumentError, LedgerUnavailable, NoDocuments
from .._results import TRANSIENT_OUTCOMES, VALIDATION_OUTCOMES
from .._words import plural
from ..ledger import (
    OUTAGE_LIMIT_S,
    ClaimedJob,
    EnqueueCounts,
    Finished,
    Outage,
    QueuedDocument,
    RecordingLedger,
    ResilientLedger,
    WorkQueue,
    new_id,
)
from ._loaders import (
    MAX_BYTES,
    MAX_CHARS,
    SPECIAL,
    URI,
    Source,
    as_source,
    count_documents,
    dir_error,
    display_path,
    walk,
)
from ._runner import BatchRunner, BatchSummary, DocResult, Job, _done_by_file, _load

if TYPE_CHECKING:
    from .._chain import Extractor
    from ._limiter import Limiter

log = logging.getLogger("extractkit.worker")

LEASE_S = 60.0  # default lease: a dead worker's documents go to the others this long after its last heartbeat
POLL_S = 1.0  # how often an idle worker looks for new jobs
MARK_EVERY_S = 0.2  # results are marked done in batches at most this old
ENQUEUE_CHUNK = 500  # documents read, then queued in one transaction
READ_AHEAD = 8  # documents read at once by enqueue (PDFs and large files in threads)
_TRANSIENT = frozenset(o.value for o in TRANSIENT_OUTCOMES)
_VALIDATION = frozenset(o.value for o in VALIDATION_OUTCOMES)


@dataclass
class EnqueueResult:
    """What ``aenqueue`` did: the queue's counts, the documents that could not be read (path,
    error), the files skipped (unsupported types, special files), and every document's sha256 in
    the order found (``shas``: path -> sha256, for ``extract`` on a shared ledger)."""

    counts: EnqueueCounts = field(default_factory=EnqueueCounts)
    unreadable: list[tuple[str, DocumentError]] = field(default_factory=list)
    skipped: int = 0
    shas: dict[str, str] = field(default_factory=dict)
    given: dict[str, str] = field(default_factory=dict)  # queued source -> the path as it was given

    @property
    def documents(self) -> int:
        return len(self.shas)

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts.to_dict(), "documents": self.documents, "skipped": self.skipped,
                "unreadable": [{"path": p, "outcome": e.kind, "error": str(e)} for p, e in self.unreadable]}


def _queued(
    path: Source, sha256: str, doc_type: str, size: int | None, given: dict[str, str]
) -> QueuedDocument:
    """The queue row of a document read (or known by its file) at ``path``. A URI is queued as its
    text (source_bytes None: a worker opens it with as_source); a local path as its exact bytes,
    made absolute: a worker in another directory (or on another machine mounting the same path)
    must find it."""
    if isinstance(path, URI):
        return QueuedDocument(sha256, display_path(path), None, doc_type, size)
    absolute = Path(os.path.abspath(path))
    given[display_path(absolute)] = display_path(path)
    return QueuedDocument(sha256, display_path(absolute), os.fsencode(absolute), doc_type, size)


async def aenqueue(
    extractor: Extractor[Any],
    queue: WorkQueue,
    paths: Sequence[str | os.PathLike[str] | URI],
    *,
    include: list[str] | None = None,
    retry_failed: bool = False,
    max_bytes: int = MAX_BYTES,
    max_chars: int = MAX_CHARS,
    ledger: RecordingLedger | None = None,
) -> EnqueueResult:
    """Queue every document under ``paths`` for ``extractor``'s schema and chain config.

    Each document is read (with the batch loaders, so the same bad-input rules apply) to learn
    its identity, the sha256 of its text: the same content at two paths, or enqueued twice, is
    one job (the database's unique key decides). A job that failed earlier is queued again when
    its result was transient or its document unreadable, and with ``retry_failed`` when it failed
    validation. Documents that cannot be read are listed, not queued. ``ledger``: where each
    path is recorded as a place the content was seen. Raises ``NoDocuments`` when the paths hold
    no document."""
    await asyncio.to_thread(count_documents, list(paths), include)  # NoDocuments before anything
    requeue = set(_TRANSIENT) | (set(_VALIDATION) if retry_failed else set())
    result = EnqueueResult()
    unlisted: list[OSError] = []
    files = walk(list(paths), include, on_error=unlisted.append)
    gate = asyncio.Semaphore(READ_AHEAD)

    async def read(path: Source, doc_type: str) -> QueuedDocument | tuple[str, DocumentError]:
        async with gate:
            # a scan or image this chain already finished (found by its file's bytes): its identity
            # is known without reading it again (OCR is most of a rerun's time over scans)
            done = await _done_by_file(ledger, extractor, path, doc_type, max_bytes, False, retry_failed)
            if done is not None:
                return _queued(path, done["document_sha256"], doc_type, None, result.given)
            try:
                doc = await _load(path, doc_type, max_bytes, max_chars)
            except DocumentError as exc:
                return display_path(path), exc
        return _queued(path, doc.sha256, doc.type, doc.size, result.given)

    async def flush(batch: list[tuple[Source, str]]) -> None:
        read_ = await asyncio.gather(*(read(p, t) for p, t in batch))
        docs = [d for d in read_ if isinstance(d, QueuedDocument)]
        result.unreadable.extend(d for d in read_ if not isinstance(d, QueuedDocument))
        for d in docs:
            result.shas[d.source] = d.sha256
        counts = await asyncio.to_thread(queue.enqueue, docs, extractor.schema_hash, extractor.config_hash,
                                         requeue_outcomes=requeue)  # fmt: skip
        for k, v in counts.to_dict().items():
            setattr(result.counts, k, getattr(result.counts, k) + v)
        if ledger is not None and docs:
            seen = [(d.sha256, d.source, d.source_bytes or b"", None) for d in docs]
            await asyncio.to_thread(ledger.add_document_paths, seen)

    batch: list[tuple[Source, str]] = []
    for path, doc_type in files:
        if doc_type is None or doc_type == SPECIAL:
            result.skipped += 1
            continue
        batch.append((path, doc_type))
        if len(batch) >= ENQUEUE_CHUNK:
            await flush(batch)
            batch = []
    await flush(batch)
    for exc in unlisted:
        err = dir_error(exc)
        result.unreadable.append((err.path or "?", err))
    if not result.shas and not result.unreadable:
        raise NoDocuments("no documents to queue", paths=[display_path(p) for p in paths])
    return result


@dataclass
class WorkerSummary:
    """What a worker did: the batch runner's summary plus the queue's side."""

    worker_id: str
    batch: BatchSummary
    claimed: int = 0
    reclaimed: int = 0  # taken over from workers whose lease had expired
    released: int = 0  # put back to waiting at the stop (claimed, not finished)
    lost: int = 0  # finished here, but another worker had taken the job over meanwhile
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "batch"}
        d["batch"] = self.batch.to_dict()
        return d


def finished(job: ClaimedJob, r: DocResult) -> Finished:
    """How a result ends its job: ok -> done; a failed extraction or an unreadable document ->
    failed (with its outcome, by which ``enqueue`` decides whether to queue it again)."""
    return Finished(job.id, r.status == "ok", r.status, r.outcome, r.error)


class _Feed:
    """Claimed jobs as one async iterator shared by the runner's tasks."""

    def __init__(self, worker: Worker, runner: BatchRunner):
        self.w = worker
        self.runner = runner
        self.buffer: deque[ClaimedJob] = deque()
        self.lock = asyncio.Lock()

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> Job:
        w, q = self.w, self.w.queue
        ex = w.extractor
        async with self.lock:
            while not self.buffer:
                if w._stopping or self.runner._stop is not None or self.runner._over_budget():
                    raise StopAsyncIteration
                got = await w.outage.acall(q.claim, w.worker_id, ex.schema_hash, ex.config_hash,
                                           w.claim_batch, w.lease_s)  # fmt: skip
                if got:
                    w.summary.claimed += len(got)
                    w.summary.reclaimed += sum(j.reclaimed for j in got)
                    w.held.update(j.id for j in got)
                    self.buffer.extend(got)
                    break
                if not w.wait:
                    await w._flush()  # what this worker finished is no longer claimed
                    waiting, claimed = await w.outage.acall(q.pending, ex.schema_hash, ex.config_hash)
                    if waiting == 0 and claimed <= len(w.held):
                        raise StopAsyncIteration  # nothing left that another worker could give back
                await asyncio.sleep(w.poll_s)
            if w._stopping:  # stopped while claiming: what was claimed is put back by run()
                raise StopAsyncIteration
            job = self.buffer.popleft()
        return Job(path=_path(job), doc_type=job.doc_type, input=job, sha256=job.sha256)


def _path(job: ClaimedJob) -> Source:
    return Path(os.fsdecode(job.source_bytes)) if job.source_bytes is not None else as_source(job.source)


class Worker:
    """Claims documents of ``extractor``'s schema and chain from ``queue`` and extracts them,
    recording into ``ledger``, ``concurrency`` at a time (see the module docstring).

    ``wait``: keep waiting for new jobs when the queue is empty (until cancelled).
    ``lease_s``: how long a claim lasts without a heartbeat. ``on_result(result, summary)``:
    called with each document's result as it is ready. The extractor, ledger and queue are the
    caller's to close.
    """

    def __init__(
        self,
        extractor: Extractor[Any],
        ledger: RecordingLedger,
        queue: WorkQueue,
        *,
        concurrency: int = 8,
        lease_s: float = LEASE_S,
        wait: bool = False,
        retry_failed: bool = False,
        max_bytes: int = MAX_BYTES,
        max_chars: int = MAX_CHARS,
        max_cost: float | None = None,
        limiter: Limiter | None = None,
        on_result: Callable[[DocResult, BatchSummary], None] | None = None,
        claim_batch: int | None = None,
        poll_s: float = POLL_S,
        worker_id: str | None = None,
        outage_limit_s: float = OUTAGE_LIMIT_S,
        on_outage: Callable[[str], None] | None = None,
    ):
        if lease_s < 1:
            raise ConfigError(f"the lease must be at least 1 second, got {lease_s}")
        if outage_limit_s < 0:
            raise ConfigError(f"the outage limit must be at least 0 seconds, got {outage_limit_s}")
        # one clock for the whole worker: a claim, a heartbeat and a write failing in one outage
        # count against the same limit
        self.outage = Outage(outage_limit_s, notify=on_outage, target=f"the ledger {queue.target}")
        if getattr(ledger, "engine", None) == "postgresql":
            ledger = ResilientLedger(ledger, self.outage)
        if limiter is not None and hasattr(limiter, "outage"):  # a SharedLimiter: its leases too
            limiter.outage = self.outage
        self.runner = BatchRunner(extractor, ledger, concurrency=concurrency, retry_failed=retry_failed,
                                  max_bytes=max_bytes, max_chars=max_chars, max_cost=max_cost,
                                  limiter=limiter, freeze_gc=True)  # fmt: skip
        self.extractor = extractor
        self.ledger = ledger
        self.queue = queue
        self.concurrency = concurrency
        self.lease_s = float(lease_s)
        self.wait = wait
        self.on_result = on_result
        self.claim_batch = claim_batch or max(1, min(concurrency, 16))
        self.poll_s = poll_s
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self.held: set[int] = set()  # claimed, not yet marked in the queue
        self._marks: list[Finished] = []
        self._stopping = False
        self._fatal: BaseException | None = None  # what stopped the run from a helper loop
        self.summary = WorkerSummary(self.worker_id, BatchSummary(run_id=""))

    def stop(self) -> None:
        """Claim nothing more; the documents in flight finish, then ``run`` returns (the claimed
        ones not started are put back in the queue)."""
        self._stopping = True

    def _sink(self, job: Job, r: DocResult, summary: BatchSummary) -> None:
        self.summary.batch = summary  # the runner's own: what was finished survives a cancelled run
        claimed = job.input
        if isinstance(claimed, ClaimedJob):
            self._marks.append(finished(claimed, r))
        if self.on_result is not None:
            self.on_result(r, summary)

    async def _flush(self) -> None:
        marks, self._marks = self._marks, []
        if not marks:
            return
        try:
            n = await self.outage.acall(self.queue.finish, self.worker_id, marks)
        except BaseException:
            self._marks[:0] = marks  # sent again by the next flush
            raise
        self.summary.lost += len(marks) - n
        self.held.difference_update(m.job_id for m in marks)

    async def _marker(self) -> None:
        while True:
            await asyncio.sleep(MARK_EVERY_S)
            await self._flush()  # through an outage; the marks are kept and sent again

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.outage.acall(self.queue.heartbeat, self.worker_id, self.lease_s, sorted(self.held))

    async def _guard(self, helper: Any, main: asyncio.Task[Any]) -> None:
        """Run a helper loop; the ledger away for too long (or a bug) stops the whole run."""
        try:
            await helper
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._fatal is None:
                self._fatal = exc
            main.cancel()

    async def run(self) -> WorkerSummary:
        """Work until the queue is drained (or, with ``wait``, until cancelled)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        ex = self.extractor
        await self.outage.acall(self.queue.register, self.worker_id, lease_s=self.lease_s,
                                schema_hash=ex.schema_hash, config_hash=ex.config_hash,
                                concurrency=self.concurrency)  # fmt: skip
        main = asyncio.ensure_future(self.runner._execute(_Feed(self, self.runner), [], self._sink))
        helpers = [asyncio.create_task(self._guard(self._heartbeat(), main)),
                   asyncio.create_task(self._guard(self._marker(), main))]  # fmt: skip
        try:
            try:
                self.summary.batch = await main
            except asyncio.CancelledError:
                if self._fatal is None:
                    raise  # cancelled from outside (a second signal), not by a helper that failed
                raise self._fatal from None
        except LedgerUnavailable as exc:
            self._fatal = exc
        finally:
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            if not main.done():
                main.cancel()
                await asyncio.gather(main, return_exceptions=True)
            # shielded: a second Ctrl-C must not leave jobs held until their lease runs out
            await asyncio.shield(self._close())
            self.summary.elapsed_s = round(loop.time() - started, 3)
        if isinstance(self._fatal, LedgerUnavailable):
            raise self._gave_up(self._fatal)
        return self.summary

    def _gave_up(self, exc: LedgerUnavailable) -> LedgerUnavailable:
        """The one line a worker that lost the ledger ends with: how long, and where its documents are."""
        where = []
        if self.summary.released:
            where.append(f"{plural(self.summary.released, 'document')} it held put back in the queue")
        if self.held:
            where.append(f"{plural(len(self.held), 'document')} it held go back to the queue when their "
                         f"lease runs out ({self.lease_s:g} s)")  # fmt: skip
        held = "; ".join(where) or "it held no document"
        return LedgerUnavailable(
            f"{exc}. Worker stopped: {held}; everything recorded is kept", seconds=exc.seconds,
        )  # fmt: skip

    async def _close(self) -> None:
        gone = isinstance(self._fatal, LedgerUnavailable)
        try:
            try:
                await self._flush()
            finally:
                if self.held:
                    self.summary.released += await self.outage.acall(self.queue.release, self.worker_id,
                                                                     sorted(self.held))  # fmt: skip
                    self.held.clear()
                await self.outage.acall(self.queue.stop, self.worker_id)
        except LedgerUnavailable:
            if not gone:
                raise
            # the database is still away: the jobs held stay claimed until their lease runs out
