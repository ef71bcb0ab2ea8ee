"""The wave driver: the whole chain through the provider's Batch API, in waves.

Wave 1 is the first attempt of every pending document at the first tier, in as many batch files
(parts) as the limits need (one (tier, model) per file, ``MAX_LINES`` lines, ``MAX_PART_BYTES``
bytes). Each answer is read exactly as the live path reads it, by the same steps
(``_steps.Steps``: ``build_request`` / ``interpret`` / ``decide``); the driver only moves
documents between waves: a re-ask or a transient failure (a 429 / 5xx line, an expired line) goes
to the next wave at the same tier, a tier that ends goes on to the next tier when
``EscalationPolicy.should_escalate`` says so, and everything else is final and recorded. A tier
with ``via = "live"`` runs its pending documents live (``Extractor.arun_tier``) between waves.
No re-ask, retry or escalation rule lives here.

Durable: every step is a row of the ledger (``batch_jobs``, ``batch_items``, ``LedgerWaves``)
written before the next one starts, so a driver killed anywhere and run again continues:

- a part is a row before its file is uploaded (UNIQUE (chain, wave, part): never built twice);
  a row still ``building`` (no file id recorded) is dropped and its documents pending again;
- an ``uploaded`` part (file id recorded, no batch id) is looked up among the provider's batches
  (``find_batch``) before it is created: a create whose answer was lost is not made twice;
- a submitted part is polled; a finished one is ingested item by item, each item's next step
  written in the same transaction that closes it (a second ingest skips what the first wrote).

Nothing CPU-heavy runs on the event loop: parts are written and measured in a worker thread,
output files parsed and interpreted in one, in chunks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from openai.types.chat import ChatCompletion
from pydantic import ValidationError

from .. import _retry
from .._errors import (
    BatchError,
    BatchUnsupported,
    ConfigError,
    DocumentError,
    ProviderRefused,
    ProviderUnreachable,
)
from .._grounding import spans_for
from .._results import TRANSIENT_OUTCOMES, VALIDATION_OUTCOMES, Attempt, Result
from .._steps import Answer, Failure, NextKind, TierState
from .._words import plural
from ..ledger import ItemOutcome, NewBatchItem, NewBatchJob
from ._estimate import check_max_cost
from ._loaders import (
    MAX_BYTES,
    MAX_CHARS,
    SPECIAL,
    URI,
    Document,
    Source,
    as_source,
    count_documents,
    dir_error,
    display_path,
    path_bytes,
    walk,
)
from ._provider import (
    MAX_LINES,
    MAX_PART_BYTES,
    TERMINAL,
    BatchProvider,
    LineResult,
    Part,
    Results,
    batch_errors,
    check_readable,
    parse_results,
    request_counts,
    write_parts,
)
from ._runner import STOPPED, STOPPED_MAX_COST, BatchSummary, DocResult, _load, retry_reason, spans_out

if TYPE_CHECKING:
    from openai.types import Batch

    from .._chain import Extractor
    from ..ledger import BatchItem, BatchJob, Ledger

T = TypeVar("T")
INGEST_CHUNK = 500  # items interpreted (in a worker thread) and written (one transaction) at a time
READ_AHEAD = 8  # documents read at once (discovery, rereading sources on resume)
ADD_CHUNK = 500  # new items written per transaction
FREED = ("not extracted: its wave item was freed (`extractkit batch cancel`) while this run waited for it;"
         " run the same command again to send it")
ADOPT_AFTER_S = 300.0  # another running driver's uploaded part, left without a batch this long: adopted
# characters of document text a driver holds between waves; past it, a document's text is read again
# from its source (its sha256 checked) when its answers are read, instead of being held for hours
HOLD_TEXT_CHARS = 64 * 1024 * 1024


@dataclass
class WaveEvent:
    """What ``on_wave`` is told: a part was submitted, polled or ingested (``event``)."""

    event: str  # submitted | polled | ingested | stopped | abandoned (the provider lost the batch)
    wave: int
    part: int
    tier: str
    status: str
    lines: int
    completed: int = 0
    failed: int = 0
    provider_batch_id: str | None = None


@dataclass
class _Doc:
    text: str  # "" when not held (``held`` False): read again from its source when needed
    path: str
    size: int
    doc_type: str
    paths: list[str] = field(default_factory=list)  # other paths with the same content, this run
    held: bool = True


def _completion(body: Any) -> ChatCompletion | None:
    """A batch line's body as a chat completion, or None when it is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        return None
    try:
        return ChatCompletion.model_validate(body)
    except ValidationError:
        from openai._models import construct_type

        return construct_type(type_=ChatCompletion, value=body)  # type: ignore[return-value]


def line_answer(line: LineResult, started_at: float, latency_s: float) -> Answer:
    """One output / error line as the ``Answer`` the steps read (either transport's shape). A body
    over the cap is what the live path's capped read raises (``response_too_large``)."""
    if line.too_large is not None:
        failure = Failure.from_exception(_retry.ResponseTooLarge(*line.too_large, line.status_code))
        return Answer(response=None, failure=failure, started_at=started_at, latency_s=latency_s, via="batch")
    if line.answered:
        response = _completion(line.body)
        if response is not None:
            return Answer(response=response, started_at=started_at, latency_s=latency_s, via="batch")
        head = json.dumps(line.body)[:200]  # as the live path reads a 200 that is not a completion
        failure = Failure.from_exception(
            _retry.NotACompletion(f"HTTP 200 with a body that is not a chat completion: {head!r}")
        )
    elif line.status_code is not None:
        failure = Failure.from_status(line.status_code, line.body)
    else:
        failure = Failure.not_run(line.error_code or "no_response", line.error_message or "not run")
    return Answer(response=None, failure=failure, started_at=started_at, latency_s=latency_s, via="batch")


class WaveRunner:
    """Runs every document under some paths through ``extractor``'s chain in waves of the
    provider's Batch API, recording into ``ledger`` (a ``Ledger``: SQLite or PostgreSQL).

    ``via``: how a tier without its own ``via`` runs ("batch" or "live"); ``tier_via``: per tier
    name, overrides the tier's own (``{"fine_tuned": "live"}``). ``poll_s``: seconds
    between polls of the open batches. ``concurrency``: documents at once on a live tier (and
    polls at once). ``force`` / ``retry_failed`` / ``out`` / ``include`` / ``max_bytes`` /
    ``max_chars`` / ``on_result``: as ``BatchRunner``. ``max_cost`` (USD): before each part is
    submitted, this run's spend plus the part's worst case at the batch price is compared with
    it; over it, nothing more is submitted (open batches are still polled and ingested) and the
    run ends ``stopped_max_cost``. ``on_wave(WaveEvent)``: progress. ``on_note(str)``: what the
    user should know that is no error (documents of this run already in a wave, driven by an
    earlier or another run: this run waits for them and reports them). ``part_lines`` /
    ``part_bytes``: the limits of one input file. ``hold_text_chars``: the document text held
    between waves (characters, all documents together); past it a document's text is read again
    from its source (its sha256 checked) when its answers are read. Before each wave is built, a
    pending document made final another way since it was enqueued is dropped from it (not sent).
    """

    def __init__(
        self,
        extractor: Extractor[Any],
        ledger: Ledger,
        *,
        via: str = "batch",
        tier_via: Mapping[str, str] | None = None,
        poll_s: float = 30.0,
        concurrency: int = 8,
        force: bool = False,
        retry_failed: bool = False,
        out: str | Path | None = None,
        include: list[str] | None = None,
        max_cost: float | None = None,
        on_result: Callable[[DocResult, BatchSummary], None] | None = None,
        on_wave: Callable[[WaveEvent], None] | None = None,
        on_note: Callable[[str], None] | None = None,
        max_bytes: int = MAX_BYTES,
        max_chars: int = MAX_CHARS,
        part_lines: int = MAX_LINES,
        part_bytes: int = MAX_PART_BYTES,
        max_download_bytes: int | None = None,
        hold_text_chars: int = HOLD_TEXT_CHARS,
    ):
        names = [t.name for t in extractor.tiers]
        for where, way in [("via", via), *((f"tier_via[{k!r}]", v) for k, v in (tier_via or {}).items())]:
            if way not in ("batch", "live"):
                raise ConfigError(f'{where} must be "batch" or "live", got {way!r}')
        unknown = sorted(set(tier_via or {}) - set(names))
        if unknown:
            raise ConfigError(f"tier_via names no tier {unknown}; the tiers are {names}")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if poll_s < 0:
            raise ConfigError(f"poll_s must be >= 0, got {poll_s}")
        check_max_cost(extractor, max_cost)
        self.extractor = extractor
        self.ledger = ledger
        self.via = via
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.force = force
        self.retry_failed = retry_failed
        self.out = Path(out) if out else None
        self.include = include
        self.max_cost = max_cost
        self.on_result = on_result
        self.on_wave = on_wave
        self.on_note = on_note
        self.max_bytes, self.max_chars = max_bytes, max_chars
        self.part_lines, self.part_bytes = part_lines, part_bytes
        self.max_download_bytes = max_download_bytes
        self.hold_text_chars = hold_text_chars
        self.tier_names = [t.name for t in extractor.tiers]
        given = dict(tier_via or {})
        self.vias = {t.name: given.get(t.name) or getattr(t, "via", None) or via for t in extractor.tiers}
        self.check_tiers(extractor, self.vias)
        self.steps = {t.name: extractor.steps(t.name) for t in extractor.tiers}
        for t in extractor.tiers:  # a ceiling needs what every batch attempt costs (never a guess)
            if (
                max_cost is not None
                and self.vias[t.name] == "batch"
                and self.steps[t.name].batch_price is None
            ):
                raise ConfigError(
                    f"max_cost needs the batch price of every tier sent by batch, and tier {t.name!r} (model"
                    f" {t.model}) has none: set `batch_price` on the tier (USD per 1M tokens)"
                )
        self._providers: dict[str, BatchProvider] = {}
        self._docs: dict[str, _Doc] = {}  # this run's documents in flight, by sha256
        self._held = 0  # characters of text held in ``_docs``
        self._gone: set[str] = set()  # documents whose source could not be read again (left for later)
        self._lock = threading.Lock()  # parts are ingested in worker threads, several at once
        self._reading = asyncio.Semaphore(READ_AHEAD)  # sources read again at once (a resumed run)
        self._spent = 0.0
        self._cost_stopped = False
        self._cost_blocked: tuple[int, Part, float] | None = None  # (wave, part, worst case) over max_cost
        self._out: IO[str] | None = None
        self._summary = BatchSummary(run_id="")
        self._run_id = ""

    @staticmethod
    def check_tiers(extractor: Extractor[Any], vias: Mapping[str, str]) -> None:
        """``ConfigError`` (exit 2) for a chain the waves cannot run, ``vias`` being how each tier
        runs (tier name -> "batch" | "live"): a local tier sent by batch, or any tier that sends page
        images. The one copy of the rule: the run checks it here, and ``extract --dry-run --via
        batch`` calls it too, so the estimate refuses what the run would refuse."""
        for t in extractor.tiers:
            if vias.get(t.name) == "batch" and t.is_local:
                raise ConfigError(f'tier {t.name!r}: a local model has no Batch API: set via = "live" on it')
            if getattr(t, "sends_images", False):  # the waves read and send text only (for now)
                raise ConfigError(f"tier {t.name!r} sends page images (input = {t.input!r}), which the batch "
                                  "waves do not carry: run this chain without --via batch")  # fmt: skip

    # -- set-up -----------------------------------------------------------------------------------
    async def _provider(self, tier_name: str) -> BatchProvider:
        p = self._providers.get(tier_name)
        if p is None:
            ex = self.extractor
            client = await ex._client(ex.tier(tier_name))
            kwargs: dict[str, Any] = {"retry_policy": ex.policy.retry, "breaker": ex._breaker}
            if self.max_download_bytes is not None:
                kwargs["max_download_bytes"] = self.max_download_bytes
            p = self._providers[tier_name] = BatchProvider(client, **kwargs)
        return p

    @property
    def _keys(self) -> tuple[str, str]:
        return self.extractor.schema_hash, self.extractor.config_hash

    def _next_tier(self, name: str) -> str | None:
        i = self.tier_names.index(name)
        return self.tier_names[i + 1] if i + 1 < len(self.tier_names) else None

    # -- the run ----------------------------------------------------------------------------------
    async def run(self, paths: list[str | os.PathLike[str] | URI]) -> BatchSummary:
        """Extract every document under ``paths``, continuing the waves already in the ledger."""
        ex, L = self.extractor, self.ledger
        # paths that hold no document: NoDocuments before a run is recorded (as BatchRunner)
        await asyncio.to_thread(count_documents, list(paths), self.include)
        self._run_id = run_id = L.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        summary = self._summary = BatchSummary(run_id=run_id)
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.out.open("w", encoding="utf-8", errors="backslashreplace")
        status = "interrupted"
        try:
            await self._resume()
            await self._discover(paths)
            await self._drive()
            await self._settle()
            status = STOPPED_MAX_COST if self._cost_stopped else "done"
            if self._cost_stopped:
                summary.error = await self._max_cost_said()
        except BatchError as exc:  # a 404 (no Batch API), a page that is not JSON, a failed batch:
            status = "failed"  # exit 1 through the CLI's one handler, saying where the documents are
            exc.args = (f"{exc}. {await self._left_said(rerun=not isinstance(exc, BatchUnsupported))}",)
            raise
        except ProviderUnreachable as exc:  # as BatchRunner: a summary naming the URL, not a traceback
            status, summary.provider_url = STOPPED, exc.url
            said = str(exc) if exc.url in str(exc) else f"provider unreachable at {exc.url}: {exc}"
            refused = summary.key_refused = isinstance(exc, ProviderRefused)
            when = "once the key is right" if refused else "when the provider answers"
            summary.error = f"{said}; stopped: the waves are kept in the ledger; run the same command {when}"
        except Exception:
            status = "failed"
            raise
        finally:
            summary.status = status
            if self._out is not None:
                self._out.close()
                self._out = None
            L.finish_run(run_id, status, n_documents=summary.documents, n_ok=summary.ok,
                         n_failed=summary.failed, n_errors=summary.errors,
                         n_skipped=summary.skipped + summary.special, n_resumed=summary.resumed)  # fmt: skip
        return summary

    def _emit(self, r: DocResult) -> None:
        self._summary.add(r)
        if self._out is not None:
            self._out.write(r.to_json() + "\n")
            self._out.flush()
        if self.on_result is not None:
            self.on_result(r, self._summary)

    def _wave_event(self, event: str, job: Any, status: str | None = None, batch: Any = None) -> None:
        if self.on_wave is None:
            return
        counts = request_counts(batch) if batch is not None else {}
        self.on_wave(WaveEvent(event=event, wave=job.wave, part=job.part, tier=job.tier,
                               status=status or job.status, lines=job.n_lines,
                               completed=counts.get("completed", 0), failed=counts.get("failed", 0),
                               provider_batch_id=getattr(batch, "id", None) or job.provider_batch_id,
                               ))  # fmt: skip

    async def _where(self) -> tuple[int, int, int, list[int]]:
        """This chain's documents in flight: (pending for a wave, sent in parts never submitted,
        sent in batches at the provider, the waves they are in)."""
        L = self.ledger
        rows = await asyncio.to_thread(L.wave_summary, *self._keys)
        jobs = await asyncio.to_thread(L.open_batch_jobs, *self._keys)
        unsent = sum(j.n_lines for j in jobs if j.provider_batch_id is None)
        sent = sum(r.sent for r in rows)
        waves = sorted({r.wave for r in rows if r.pending or r.sent})
        return sum(r.pending for r in rows), min(unsent, sent), max(0, sent - unsent), waves

    async def _left_said(self, *, rerun: bool = True) -> str:
        """What a run stopped by an error left, and what to do about it (``rerun``: whether the
        same command may continue them; not after a 404 "no Batch API")."""
        s = self._summary
        pending, unsent, at_provider, waves = await self._where()
        done = f"This run: {s.ok} ok, {s.failed} failed, {s.resumed} already final"
        left = pending + unsent + at_provider
        if not left:
            return f"{done}; no document of this chain is left in a wave"
        where = ", ".join(f"{n} {what}" for n, what in (
            (unsent, "in parts never submitted"), (at_provider, "in batches at the provider"),
            (pending, "pending for the next wave")) if n)  # fmt: skip
        in_waves = f"wave{'s' if len(waves) > 1 else ''} {', '.join(map(str, waves))}"
        said = (f"{done}; {plural(left, 'document')} of this chain {'is' if left == 1 else 'are'} left in"
                f" {in_waves} ({where}), kept in the ledger: ")  # fmt: skip
        if not rerun or not at_provider:
            cont = "run the same command again to continue them, or " if rerun else ""
            return (said + f"{cont}`extractkit batch cancel --all` (with the same -c) to cancel them and free"
                    " the documents for a live run")  # fmt: skip
        return (said + "run the same command again to continue them, or `extractkit batch cancel --all`"
                " (with the same -c) to cancel them and free the documents for a live run; if the provider"
                " no longer has their batches or their output cannot be read, `extractkit batch cancel --all"
                " --abandon` frees them whatever the provider answers")  # fmt: skip

    async def _max_cost_said(self) -> str:
        """Why --max-cost stopped the run: the ceiling, what the next part could cost, what to do."""
        pending, unsent, _, _ = await self._where()
        n = pending + unsent
        left = f"{plural(n, 'document')} left pending in the ledger, never sent"
        spent = f"this run spent ${self._spent:.6f}"
        free = (f"; or `extractkit batch cancel --all` (with the same -c) frees {'it' if n == 1 else 'them'}"
                " for a live run (nothing of them was sent)") if n else ""  # fmt: skip
        if self._cost_blocked is None:
            return (f"max cost {_usd(self.max_cost)} reached: {spent}; no more batches submitted ({left});"
                    f" run the same command again (with a higher --max-cost) to continue them"
                    f"{free}")  # fmt: skip
        wave, part, worst = self._cost_blocked
        need = self._spent + worst
        return (
            f"max cost {_usd(self.max_cost)} (--max-cost) would be passed by the next batch: wave {wave} "
            f"({part.tier}, {plural(len(part.item_ids), 'request')}) could cost up to ${worst:.6f} at the"
            f" batch price (its request bytes as tokens plus every line's max_tokens), and {spent}, so"
            f" ${need:.6f} in all; nothing more submitted ({left}): raise --max-cost to at least"
            f" ${need:.6f} (or lower the tier's max_tokens) and run the same command again{free}"
        )

    # -- 1. resume ----------------------------------------------------------------------------------
    async def _resume(self) -> None:
        """Parts left by a killed run: ``building`` ones dropped (their documents pending again),
        ``uploaded`` ones found among the provider's batches or created now."""
        await asyncio.to_thread(self.ledger.drop_building_jobs, *self._keys)
        for job in await asyncio.to_thread(self.ledger.open_batch_jobs, *self._keys):
            if job.status == "uploaded" and job.provider_batch_id is None:
                await self._create(job)

    async def _create(self, job: BatchJob) -> None:
        """Start the batch of an uploaded part, unless its create went through before a kill."""
        p = await self._provider(job.tier)
        assert job.input_file_id is not None
        batch = await p.find_batch(job.input_file_id, since=job.created_at)
        if batch is None:
            batch = await p.create(job.input_file_id, job.id)
        await asyncio.to_thread(self.ledger.batch_job_submitted, job.id, batch.id, batch.status)
        self._wave_event("submitted", job, batch.status, batch)

    # -- 2. discover --------------------------------------------------------------------------------
    async def _discover(self, paths: list[str | os.PathLike[str] | URI]) -> None:
        """Walk and read the documents; those without a final result (or whose result is to be
        retried, see ``retry_reason``) and not already in a wave join the first unbuilt wave at
        the first tier."""
        ex, L = self.extractor, self.ledger
        unlisted: list[DocumentError] = []
        files = await asyncio.to_thread(
            lambda: list(walk(paths, self.include, on_error=lambda exc: unlisted.append(dir_error(exc))))
        )
        in_flight = await asyncio.to_thread(L.in_flight, *self._keys)
        waves = (await self._where())[3] if in_flight else []  # the waves they are in, before this run's
        wave = await asyncio.to_thread(L.next_wave, *self._keys)
        first = self.tier_names[0]
        gate = asyncio.Semaphore(READ_AHEAD)
        todo_docs: list[tuple[Source, Document]] = []

        async def read(path: Source, doc_type: str) -> tuple[Source, Any]:
            async with gate:
                try:
                    return path, await _load(path, doc_type, self.max_bytes, self.max_chars)
                except DocumentError as exc:
                    return path, exc

        todo = []
        for path, doc_type in files:
            if doc_type is None:
                self._summary.skipped += 1
            elif doc_type == SPECIAL:
                self._summary.special += 1
                self._summary.special_paths.append(display_path(path))
            else:
                todo.append(read(path, doc_type))
        for exc in unlisted:
            self._emit(self._error(exc, exc.path or "?"))
        got_all = await asyncio.gather(*todo)
        seen = [
            (d.sha256, d.path, path_bytes(p), self._run_id)
            for p, d in got_all
            if not isinstance(d, DocumentError)
        ]
        if seen:
            await asyncio.to_thread(L.add_document_paths, seen)
        for path, got in got_all:
            if isinstance(got, DocumentError):
                self._emit(self._error(got, display_path(path)))
                continue
            doc = got
            if doc.sha256 in self._docs:  # identical content: shares the first path's result
                self._docs[doc.sha256].paths.append(doc.path)
                continue
            if not self.force:
                row = L.find_final(doc.sha256, ex.schema_hash, ex.config_hash)
                if row is not None:
                    if retry_reason(row["status"], row["outcome"], retry_failed=self.retry_failed) is None:
                        self._emit(_from_ledger(doc.path, doc.sha256, row))
                        continue
                    self._summary.retried += 1
            self._docs[doc.sha256] = self._hold(_Doc(doc.text, doc.path, doc.size, doc.type))
            if doc.sha256 in in_flight:
                continue  # already in a wave (a killed run's): its result comes from there
            todo_docs.append((path, doc))
        steps = self.steps[first]

        def items(chunk: list[tuple[Source, Document]]) -> list[NewBatchItem]:
            # the first request of each (prompt, examples, schema): CPU work, in a worker thread
            return [NewBatchItem(
                document_sha256=doc.sha256, schema_hash=ex.schema_hash, config_hash=ex.config_hash,
                wave=wave, tier=first, tier_state_json=steps.start(doc.text).to_json(), run_id=self._run_id,
                source=doc.path, source_bytes=None if isinstance(path, URI) else os.fsencode(path),
                path=doc.path, size=doc.size, doc_type=doc.type,
            ) for path, doc in chunk]  # fmt: skip

        for i in range(0, len(todo_docs), ADD_CHUNK):
            new = await asyncio.to_thread(items, todo_docs[i : i + ADD_CHUNK])
            await asyncio.to_thread(L.add_batch_items, new)
        joined = sum(1 for sha in self._docs if sha in in_flight)
        if joined:
            in_waves = f"wave{'s' if len(waves) > 1 else ''} {', '.join(map(str, waves))}"
            self._note(f"{plural(joined, 'document')} of this run {'is' if joined == 1 else 'are'} already"
                       f" in {in_waves} of this chain, sent by an earlier run or by another run driving"
                       " them now: not sent again; this run waits for their answers and reports them")

    async def _settle(self) -> None:
        """This run's documents it did not read back itself: another run of the chain driving the
        same waves read them (both poll the same parts), so their results are in the ledger and
        reported from there (every document gets its line); one whose item was freed meanwhile
        (`batch cancel`) is reported as not extracted. Those still in a wave (a --max-cost stop)
        are left: the run's error says where they are."""
        ex, L = self.extractor, self.ledger
        left = [sha for sha in self._docs if sha not in self._gone]
        if not left:
            return
        in_flight = await asyncio.to_thread(L.in_flight, *self._keys)
        by_other = freed = 0
        for sha in left:
            if sha in in_flight:
                continue
            row = await asyncio.to_thread(L.find_final, sha, ex.schema_hash, ex.config_hash)
            doc = self._forget(sha)
            if doc is None:
                continue
            if row is not None:
                by_other += 1
                first = _from_ledger(doc.path, sha, row)
            else:
                freed += 1
                first = DocResult(path=doc.path, status="error", sha256=sha, outcome="in_batch", error=FREED)
            self._emit(first)
            for other in doc.paths:
                self._emit(dataclasses.replace(first, path=other, duplicate_of=doc.path, attempts=0,
                                               prompt_tokens=0, completion_tokens=0,
                                               cost_usd=0.0))  # fmt: skip
        if by_other:
            self._note(f"{plural(by_other, 'document')} of this run {'was' if by_other == 1 else 'were'} read"
                       " back by another run of this chain while this one waited: reported as resumed (the"
                       " attempts and cost are that run's)")  # fmt: skip

    def _note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(text)

    def _error(self, exc: DocumentError, path: str) -> DocResult:
        ex = self.extractor
        self.ledger.record_error(run_id=self._run_id, path=path, kind=exc.kind, message=str(exc),
                                 schema_hash=ex.schema_hash, config_hash=ex.config_hash)  # fmt: skip
        return DocResult(path=path, status="error", outcome=exc.kind, error=str(exc))

    # -- 3. the waves -------------------------------------------------------------------------------
    async def _drive(self) -> None:
        """Until nothing is pending or open: submit a wave of every pending batch-tier item, run
        the live-tier ones, poll the open parts and ingest the finished ones. A wave is built
        only when the previous one is ingested (every part)."""
        L = self.ledger
        while True:
            open_jobs = await asyncio.to_thread(L.open_batch_jobs, *self._keys)
            if open_jobs:
                if await self._poll(open_jobs):
                    await asyncio.sleep(self.poll_s)
                continue
            pending = await asyncio.to_thread(L.pending_batch_items, *self._keys)
            pending = await self._drop_final([i for i in pending if i.document_sha256 not in self._gone])
            live = [i for i in pending if self.vias[i.tier] == "live"]
            batch = [i for i in pending if self.vias[i.tier] == "batch"]
            if batch and not self._cost_stopped:
                await self._build_wave(batch)
            if live:
                await self._run_live(live)
            elif not batch or self._cost_stopped:
                opened = await asyncio.to_thread(L.open_batch_jobs, *self._keys)
                if not opened:
                    self._summary.unattempted += len(batch)  # left pending: a later run sends them
                    return

    async def _drop_final(self, items: list[BatchItem]) -> list[BatchItem]:
        """The pending items whose document was not made final another way since it was
        enqueued (a live run, the library, a worker); the others are ``superseded`` in the
        ledger, never sent (not paid twice), and their documents reported from the ledger."""
        if not items:
            return items
        retry = {o.value for o in TRANSIENT_OUTCOMES}
        if self.retry_failed:
            retry |= {o.value for o in VALIDATION_OUTCOMES}
        ex, L = self.extractor, self.ledger
        shas = await asyncio.to_thread(L.supersede_final_items, *self._keys, [i.id for i in items], retry)
        if not shas:
            return items
        for sha in shas:
            doc = self._forget(sha)
            row = await asyncio.to_thread(L.find_final, sha, ex.schema_hash, ex.config_hash)
            if doc is None or row is None:
                continue  # not one of this run's documents: nothing to report
            first = _from_ledger(doc.path, sha, row)
            self._emit(first)
            for other in doc.paths:
                self._emit(dataclasses.replace(first, path=other, duplicate_of=doc.path, attempts=0,
                                               prompt_tokens=0, completion_tokens=0,
                                               cost_usd=0.0))  # fmt: skip
        gone = set(shas)
        return [i for i in items if i.document_sha256 not in gone]

    # -- 3a. live tiers -----------------------------------------------------------------------------
    async def _run_live(self, items: list[BatchItem]) -> None:
        """A ``via = "live"`` tier's pending documents, run live (``Extractor.arun_tier``, the
        live path's own loop), ``concurrency`` at a time; then the chain's escalation."""
        gate = asyncio.Semaphore(self.concurrency)
        limiter = self.extractor.limiter

        async def one(item: BatchItem) -> ItemOutcome | None:
            async with gate:
                doc = await self._document(item)
                if doc is None:
                    return None
                value, attempts = await self.extractor.arun_tier(item.tier, doc.text, limiter)
                self._spent += sum(a.cost_usd or 0.0 for a in attempts)
                return self._after_tier(item, doc, [*item.attempts, *attempts], value=value)

        got = await _all([one(i) for i in items])
        await self._finish([o for o in got if o is not None])

    # -- 3b. building and submitting a wave ---------------------------------------------------------
    async def _build_wave(self, items: list[BatchItem]) -> None:
        """One wave: every pending batch-tier item, in parts written (and measured) in a worker
        thread, each part recorded before its file is uploaded and its batch created."""
        wave = await asyncio.to_thread(self.ledger.next_wave, *self._keys)
        overflows: list[tuple[BatchItem, TierState, str]] = []
        models = {t.name: t.model for t in self.extractor.tiers}

        def lines() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
            for item in items:
                state = TierState.from_json(item.tier_state_json)
                req = self.steps[item.tier].build_request(state)
                if req.overflow is not None:
                    overflows.append((item, state, req.overflow))
                    continue
                yield item.tier, models[item.tier], item.id, req.body

        with tempfile.TemporaryDirectory(prefix="extractkit-wave-") as tmp:
            parts = await asyncio.to_thread(write_parts, lines(), tmp, max_lines=self.part_lines,
                                            max_bytes=self.part_bytes)  # fmt: skip
            if overflows:  # recorded as the live path records them: nothing sent
                read = await asyncio.gather(*(self._document(item) for item, _, _ in overflows))
                rows = [(*row, doc) for row, doc in zip(overflows, read, strict=True) if doc is not None]
                await self._finish(await asyncio.to_thread(self._overflowed, rows))
            for n, part in enumerate(parts):
                if self._over_budget(wave, part):
                    break
                await self._submit(wave, n, part)

    def _over_budget(self, wave: int, part: Part) -> bool:
        """Whether submitting ``part`` could take this run's spend past ``max_cost``."""
        if self.max_cost is not None and not self._cost_stopped:
            worst = self._worst_case(part)
            if self._spent + worst > self.max_cost:
                self._cost_stopped = True
                self._cost_blocked = (wave, part, worst)
        return self._cost_stopped

    def _worst_case(self, part: Part) -> float:
        """What a part can cost at most at the batch price: its request bytes (a token covers at
        least one byte) plus every line's output bound."""
        steps = self.steps[part.tier]
        price = steps.batch_price or steps.price
        if price is None:
            return 0.0
        tokens_out = steps.max_tokens * len(part.item_ids)
        return (part.n_bytes * price.input + tokens_out * price.output) / 1_000_000

    async def _submit(self, wave: int, n: int, part: Part) -> None:
        ex, L = self.extractor, self.ledger
        p = await self._provider(part.tier)
        new = NewBatchJob(schema_hash=ex.schema_hash, config_hash=ex.config_hash, wave=wave, part=n,
                          tier=part.tier, model=part.model, endpoint=p.url, run_id=self._run_id)  # fmt: skip
        job = await asyncio.to_thread(L.create_batch_job, new, part.item_ids)
        if job is None:
            return  # another driver built this part (it is polled as an open part) or took its items
        if job.n_lines != len(part.item_ids):  # some items were taken meanwhile: send only the part's own
            taken = {i.id for i in await asyncio.to_thread(L.job_items, job.id)}
            await asyncio.to_thread(_keep_lines, part, taken)
        file_id = await p.upload(part.path, name=f"{job.id}.jsonl")
        if not await asyncio.to_thread(L.batch_job_uploaded, job.id, file_id, part.n_bytes):
            return  # dropped meanwhile as stale: its items are pending again, no batch for it
        batch = await p.create(file_id, job.id)
        await asyncio.to_thread(L.batch_job_submitted, job.id, batch.id, batch.status)
        self._wave_event("submitted", job, batch.status, batch)

    # -- 3c. polling --------------------------------------------------------------------------------
    async def _poll(self, jobs: list[BatchJob]) -> bool:
        """Poll every open part once, ingest the finished ones; whether any is still running."""
        gate = asyncio.Semaphore(self.concurrency)
        running = False

        async def one(job: BatchJob) -> None:
            nonlocal running
            async with gate:
                if job.provider_batch_id is None:
                    # another driver's part between upload and create: created here only once it
                    # has been left that way for ADOPT_AFTER_S (that driver is gone), never at once
                    if job.status == "uploaded" and time.time() - job.updated_at > ADOPT_AFTER_S:
                        await self._create(job)
                    running = True  # building or being created by its own driver: wait for it
                    return
                p = await self._provider(job.tier)
                try:
                    batch = await p.retrieve(job.provider_batch_id)
                except BatchError as exc:
                    await self._lost(job, exc)
                    raise
                if batch.status != job.status or batch.status in TERMINAL:
                    await asyncio.to_thread(
                        self.ledger.batch_job_polled, job.id, batch.status, request_counts(batch),
                        batch.output_file_id, batch.error_file_id, batch_errors(batch) or None,
                    )  # fmt: skip
                self._wave_event("polled", job, batch.status, batch)
                if batch.status in TERMINAL:
                    await self._ingest(job, batch)
                else:
                    running = True

        await _all([one(j) for j in jobs])
        return running

    async def _lost(self, job: BatchJob, exc: BatchError) -> None:
        """A provider 404 on a part's batch or its files: the provider has lost it (a key of
        another project, a gateway that lost its state, a deleted batch). The part is
        ``abandoned`` and its unanswered documents freed; ``exc`` says so (the caller raises it).
        Any other failure is left as it is (a rerun tries again)."""
        if exc.status_code != 404:
            return
        _, freed = await asyncio.to_thread(self.ledger.abandon_batch_jobs, *self._keys, job_ids=[job.id])
        self._wave_event("abandoned", job, "abandoned")
        exc.args = (f"{exc}; the provider no longer has batch {job.provider_batch_id} (wave {job.wave}"
                    f" part {job.part}): the part is abandoned and its"
                    f" {plural(freed, 'unanswered document')} freed (the provider may have billed the lines"
                    " it ran); the next run sends them again",)  # fmt: skip

    # -- 3d. ingesting a finished part --------------------------------------------------------------
    async def _ingest(self, job: BatchJob, batch: Batch) -> None:
        """Read a finished part's lines back: each answered or failed line through the steps
        (``interpret`` / ``decide``) to its next wave or its final result; lines not run (a
        cancelled batch, lines in neither file) to the next wave as they were."""
        L, p = self.ledger, await self._provider(job.tier)
        items = await asyncio.to_thread(L.job_items, job.id)
        next_wave = max([job.wave, *(i.wave for i in items)]) + 1
        failed = p.failure(batch)
        if batch.status == "failed":  # nothing ran: every line goes to the next wave
            await asyncio.to_thread(L.unrun_batch_items, job.id, next_wave)
            await asyncio.to_thread(L.batch_job_ingested, job.id)
            self._wave_event("ingested", job, batch.status, batch)
            if failed is not None:
                raise failed
            return
        try:
            out = await p.download(batch.output_file_id) if batch.output_file_id else None
            err = await p.download(batch.error_file_id) if batch.error_file_id else None
        except BatchError as exc:
            await self._lost(job, exc)
            raise
        cap = self.extractor.max_response_bytes
        results = await asyncio.to_thread(_parse, out, err, [i.id for i in items], cap)
        del out, err
        started = float(batch.created_at)
        ended = _ended_at(batch)
        latency = max(0.0, ended - started) if ended else 0.0
        ran = [it for it in items if _ran(results.lines.get(it.id))]
        for i in range(0, len(ran), INGEST_CHUNK):
            chunk = ran[i : i + INGEST_CHUNK]
            read = await asyncio.gather(*(self._document(it) for it in chunk))
            docs = {it.id: doc for it, doc in zip(chunk, read, strict=True)}
            outcomes = await asyncio.to_thread(self._interpret_chunk, chunk, docs, results, started, latency,
                                               next_wave)  # fmt: skip
            await self._finish(outcomes)
        await asyncio.to_thread(L.unrun_batch_items, job.id, next_wave)
        await asyncio.to_thread(L.batch_job_ingested, job.id)
        self._wave_event("ingested", job, batch.status, batch)

    def _interpret_chunk(
        self, items: list[BatchItem], docs: dict[str, _Doc | None], results: Results, started: float,
        latency: float, next_wave: int,
    ) -> list[ItemOutcome]:  # fmt: skip
        """Sync, in a worker thread: each line read by the steps, and what follows it."""
        out: list[ItemOutcome] = []
        for item in items:
            doc = docs.get(item.id)
            if doc is None:
                continue  # its source is gone (recorded as an error): left to the next run
            steps = self.steps[item.tier]
            state = TierState.from_json(item.tier_state_json)
            it = steps.interpret(state, line_answer(results.lines[item.id], started, latency), doc.text)
            with self._lock:
                self._spent += it.attempt.cost_usd or 0.0
            nxt = steps.decide(state, it)
            attempts = [*item.attempts, nxt.apply(it.attempt)]
            if nxt.kind is NextKind.DONE:
                out.append(self._final(item, doc, attempts, nxt.value))
            elif nxt.kind in (NextKind.REASK, NextKind.RETRY):  # the next wave, same tier
                assert nxt.state is not None
                out.append(ItemOutcome(item.id, next_item=item.next(
                    wave=next_wave, tier_state_json=nxt.state.to_json(), attempts=attempts)))  # fmt: skip
            else:
                out.append(self._after_tier(item, doc, attempts, value=None, wave=next_wave))
        return out

    def _overflowed(self, rows: list[tuple[BatchItem, TierState, str, _Doc]]) -> list[ItemOutcome]:
        """Requests that do not fit the context: recorded as the live path records them (an
        attempt, nothing sent), then the tier ends."""
        out = []
        for item, state, why, doc in rows:
            steps = self.steps[item.tier]
            answer = Answer(failure=Failure.context_overflow(why), started_at=time.time(), via="batch")
            it = steps.interpret(state, answer, doc.text)
            nxt = steps.decide(state, it)
            out.append(self._after_tier(item, doc, [*item.attempts, nxt.apply(it.attempt)], value=None))
        return out

    def _after_tier(
        self, item: BatchItem, doc: _Doc, attempts: list[Attempt], *, value: Any, wave: int | None = None
    ) -> ItemOutcome:
        """A tier ended: its value, else the next tier when the chain's policy escalates on the
        tier's last attempt (``EscalationPolicy.should_escalate``), else the final failure."""
        if value is not None:
            return self._final(item, doc, attempts, value)
        mine = [a for a in attempts if a.tier == item.tier]
        nxt = self._next_tier(item.tier)
        if nxt is not None and self.extractor.policy.should_escalate(mine[-1] if mine else None):
            state = self.steps[nxt].start(doc.text)
            return ItemOutcome(item.id, next_item=item.next(
                wave=wave if wave is not None else item.wave + 1, tier=nxt, tier_state_json=state.to_json(),
                attempts=attempts))  # fmt: skip
        return self._final(item, doc, attempts, None)

    def _final(self, item: BatchItem, doc: _Doc, attempts: list[Attempt], value: Any) -> ItemOutcome:
        result: Result[Any] = Result(
            value=value, tier=item.tier if value is not None else None, attempts=list(attempts),
            latency_s=round(sum(a.latency_s for a in attempts), 6), schema_hash=self.extractor.schema_hash,
            document_sha256=item.document_sha256,
            spans=spans_for(value, doc.text) if value is not None else {},  # in a worker thread here
        )  # fmt: skip
        record = {"text": doc.text, "run_id": self._run_id, "path": doc.path or item.path, "size": doc.size,
                  "doc_type": doc.doc_type}  # fmt: skip
        return ItemOutcome(item.id, result=result, record=record)

    async def _finish(self, outcomes: list[ItemOutcome]) -> None:
        """Write the outcomes (one transaction per chunk), then report the final ones."""
        for i in range(0, len(outcomes), INGEST_CHUNK):
            chunk = outcomes[i : i + INGEST_CHUNK]
            await asyncio.to_thread(self.ledger.finish_batch_items, self.extractor, chunk)
            for o in chunk:
                if o.result is not None:
                    self._report(o.result, dict(o.record))

    def _report(self, result: Result[Any], record: dict[str, Any]) -> None:
        sha = result.document_sha256
        doc = self._forget(sha)
        for a in result.attempts:
            if not a.ok:
                self._summary.tier_failures[a.tier] += 1
        usage = result.usage
        r = DocResult(
            path=record.get("path") or "", status="ok" if result.ok else "failed", sha256=sha,
            tier=result.tier,
            value=result.value.model_dump(mode="json") if result.value is not None else None,
            outcome=result.outcome.value, error=result.error, attempts=len(result.attempts),
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cost_usd=result.cost_usd, result=result, spans=spans_out(result),
        )  # fmt: skip
        self._emit(r)
        for other in doc.paths if doc is not None else ():
            self._emit(dataclasses.replace(r, path=other, duplicate_of=r.path, attempts=0, prompt_tokens=0,
                                           completion_tokens=0, cost_usd=0.0, result=None))  # fmt: skip

    # -- documents ----------------------------------------------------------------------------------
    async def _document(self, item: BatchItem) -> _Doc | None:
        """The item's document text: this run's copy, else its source read again (a resumed run,
        the sha256 checked); a source that is gone or changed is recorded as an error (None) and
        its item left for a later run."""
        doc = self._docs.get(item.document_sha256)
        if doc is not None and doc.held:
            return doc
        if item.document_sha256 in self._gone:
            return None
        async with self._reading:
            return await self._reread(item, doc)

    async def _reread(self, item: BatchItem, light: _Doc | None = None) -> _Doc | None:
        path: Source = (
            Path(os.fsdecode(item.source_bytes))
            if item.source_bytes is not None
            else as_source(item.source or "")
        )
        try:
            got = await _load(path, item.doc_type or "txt", self.max_bytes, self.max_chars)
            if got.sha256 != item.document_sha256:
                said = f"{got.path}: its text has changed since it was sent in a batch wave (left out)"
                raise DocumentError(said, path=got.path, kind="changed")
        except DocumentError as exc:
            self._gone.add(item.document_sha256)
            self._emit(self._error(exc, item.path or display_path(path)))
            return None
        if light is not None:  # one of this run's documents whose text is not held: not held now either
            return dataclasses.replace(light, text=got.text, held=True)
        doc = _Doc(got.text, got.path, got.size, got.type)
        self._docs[item.document_sha256] = self._hold(doc)
        return doc

    def _hold(self, doc: _Doc) -> _Doc:
        """``doc`` as ``_docs`` keeps it: its text while the run holds under ``hold_text_chars``,
        else without it (read again from the source when needed)."""
        if self._held + len(doc.text) <= self.hold_text_chars:
            self._held += len(doc.text)
            return doc
        return dataclasses.replace(doc, text="", held=False)

    def _forget(self, sha: str) -> _Doc | None:
        doc = self._docs.pop(sha, None)
        if doc is not None and doc.held:
            self._held -= len(doc.text)
        return doc


async def _all(work: list[Coroutine[Any, Any, T]]) -> list[T]:
    """``asyncio.gather`` that cancels the rest when one fails (and waits for them to stop)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _usd(v: float | None) -> str:
    """A ceiling in dollars as written, without exponent: $0.00001, $2.5, $1200."""
    if v is None:
        return "-"
    return "$" + (f"{v:.8f}".rstrip("0").rstrip(".") or "0")


def _parse(out: bytes | None, err: bytes | None, ids: list[str], cap: int | None = None) -> Results:
    results = parse_results(out, err, ids, cap)
    check_readable(out, results, "output")
    check_readable(err, results, "error")
    return results


def _keep_lines(part: Part, keep: set[str]) -> None:
    """Rewrite a part's file with only the lines of ``keep`` (sync: a worker thread)."""
    kept: list[bytes] = []
    with open(part.path, "rb") as fh:
        for raw in fh:
            if json.loads(raw)["custom_id"] in keep:
                kept.append(raw)
    part.path.write_bytes(b"".join(kept))
    part.item_ids = [i for i in part.item_ids if i in keep]
    part.n_bytes = sum(len(x) for x in kept)


def _ran(line: LineResult | None) -> bool:
    """Whether a line was run (an attempt): one in neither file, or cancelled before it ran, was not."""
    return line is not None and line.error_code != "batch_cancelled"


def _ended_at(batch: Batch) -> float | None:
    for name in ("completed_at", "expired_at", "cancelled_at", "failed_at", "finalizing_at"):
        v = getattr(batch, name, None)
        if v:
            return float(v)
    return None


def _from_ledger(path: str, sha: str, row: Any) -> DocResult:
    return DocResult(
        path=path, status=row["status"], sha256=sha, tier=row["tier"],
        value=json.loads(row["value_json"]) if row["value_json"] else None,
        outcome=row["outcome"], error=row["error"], attempts=row["n_attempts"],
        prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
        cost_usd=row["cost_usd"], resumed=True,
    )  # fmt: skip
