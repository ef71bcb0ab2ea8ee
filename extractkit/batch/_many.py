"""``Extractor.extract_many``: texts and files through the batch runner, each result as it is ready.

The same runner as ``extractkit extract`` (``BatchRunner._execute``): the same loaders, rate
limiter, resume, identical-content sharing and per-document errors; only the inputs and where the
results go differ. An input is a text (``str``), a path (``os.PathLike``, e.g. ``Path``; a folder
is walked as the CLI walks it) or a ``URI`` (``URI("s3://bucket/prefix")``: an object, or every
object under a prefix). A plain ``str`` is always text, never a file name or a URI.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from .._errors import DocumentError, NoDocuments
from ..ledger import RecordingLedger
from ._limiter import SharedLimiter, limiter_for
from ._loaders import SPECIAL, TEXT_TYPES, URI, Source, _kind, dir_error, display_path, walk
from ._runner import STOPPED, BatchRunner, BatchSummary, DocResult, Job

T = TypeVar("T")


@dataclass(frozen=True)
class ItemResult(Generic[T]):
    """One document's result from ``Extractor.extract_many``, tied to its input.

    ``index`` is the position of the input in the iterable given, ``input`` the input itself (the
    text, or the path as given), ``path`` the file read (``None`` for a text; the file found for
    a folder input, whose documents share its ``index``). ``status``: ``ok``, ``failed`` (every
    tier failed; ``error`` says why) or ``error`` (the input could not be read: ``outcome`` is the
    ``DocumentError`` kind, e.g. ``empty``, ``encrypted_pdf``, ``unsupported``). ``value`` is an
    instance of the schema when ``ok``. ``resumed``: taken from the ledger, nothing sent (then
    ``attempts``, tokens and cost are those of the stored extraction, and ``result`` is None).
    ``result``: the full ``Result`` (every attempt) when this call extracted it.
    """

    index: int
    input: Any
    path: str | None
    status: str
    value: T | None = None
    tier: str | None = None
    outcome: str | None = None
    error: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    resumed: bool = False
    duplicate_of: str | None = None
    sha256: str | None = None
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _input_error(index: int, item: Any, message: str, kind: str, path: Source | None = None) -> Job:
    shown = display_path(path) if path is not None else None
    return Job(path=path, index=index, input=item, error=DocumentError(message, path=shown, kind=kind))


def _unlisted_to(unlisted: list[Job], job: Job, found: list[int]) -> Callable[[OSError], None]:
    def on_error(exc: OSError) -> None:
        found[1] += 1
        unlisted.append(replace(job, error=dir_error(exc)))

    return on_error


def _jobs(inputs: Iterable[Any], include: list[str] | None, unlisted: list[Job]) -> Iterator[Job]:
    """One job per text or file, in input order, read lazily. An input that cannot be one (not a
    str or path, a file of an unsupported type, a folder without documents) is an error job."""
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            yield Job(text=item, index=index, input=item)
        elif isinstance(item, URI):
            yield from _uri_jobs(index, item, include, unlisted)
        elif isinstance(item, os.PathLike):
            path = Path(item)
            if path.is_dir():
                found = [0, 0]  # documents, folders not listed
                on_error = _unlisted_to(unlisted, Job(index=index, input=item), found)
                for file, doc_type in walk([path], include, on_error=on_error):
                    found[0] += doc_type is not None and doc_type != SPECIAL
                    # other types and special files are counted and skipped, as the CLI does
                    yield Job(path=file, doc_type=doc_type, index=index, input=item)
                if found == [0, 0]:
                    what = f" matching {' '.join(include)}" if include else ""
                    error = NoDocuments(f"{display_path(path)}: no documents{what} in this folder",
                                        paths=[display_path(path)])  # fmt: skip
                    yield Job(path=path, index=index, input=item, error=error)
                continue
            doc_type = _kind(path)
            if doc_type == SPECIAL:
                yield _input_error(index, item, f"{display_path(path)}: not a regular file (FIFO, socket or "
                                   "device)", "special_file", path)  # fmt: skip
            elif doc_type is None:
                yield _unsupported(index, item, path)
            else:
                yield Job(path=path, doc_type=doc_type, index=index, input=item)
        else:
            yield _input_error(index, item, f"input {index}: expected a text (str), a path (os.PathLike) or "
                               f"a URI, got {type(item).__name__}", "invalid_input")  # fmt: skip


def _unsupported(index: int, item: Any, path: Source) -> Job:
    suffix = path.suffix or "(none)"
    return _input_error(index, item, f"{display_path(path)}: unsupported file type {suffix!r} (supported: "
                        f"{' '.join(sorted(TEXT_TYPES))})", "unsupported", path)  # fmt: skip


def _uri_jobs(index: int, item: URI, include: list[str] | None, unlisted: list[Job]) -> Iterator[Job]:
    """A URI input: the object it names (an unsupported type is an error, as for a file), or every
    object under it as a prefix, listed lazily. One that cannot be found or listed (no such bucket,
    access denied, a missing object) is an error result; a prefix with nothing in it, too."""
    found = [0, 0]  # documents, roots not listed
    on_error = _unlisted_to(unlisted, Job(index=index, input=item), found)
    for obj, doc_type in walk([item], include, on_error=on_error):
        if obj == item and doc_type is None:  # the object named itself: say why it is not read
            found[0] += 1
            yield _unsupported(index, item, obj)
            continue
        found[0] += doc_type is not None and doc_type != SPECIAL
        yield Job(path=obj, doc_type=doc_type, index=index, input=item)
    if found == [0, 0]:
        what = f" matching {' '.join(include)}" if include else ""
        error = NoDocuments(f"{item.shown}: no documents{what} under this prefix", paths=[item.shown])
        yield Job(path=item, index=index, input=item, error=error)


def _item(extractor: Any, job: Job, r: DocResult) -> ItemResult[Any]:
    assert job.index is not None
    value = None
    if r.result is not None:
        value = r.result.value
    elif r.value is not None:  # from the ledger, or shared with identical content: stored data
        try:
            value = extractor.schema.model_validate(r.value)
        except ValidationError as exc:  # the schema's validators changed: say so for this one only
            first = exc.errors()[0]["msg"]
            error = f"the stored value no longer validates: {exc.error_count()} error(s): {first}"
            r = replace(r, status="error", outcome="internal_error", error=error)
    return ItemResult(
        index=job.index, input=job.input, path=r.path or None, status=r.status, value=value,
        tier=r.tier, outcome=r.outcome, error=r.error, attempts=r.attempts, prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens, cost_usd=r.cost_usd, resumed=r.resumed,
        duplicate_of=r.duplicate_of or None, sha256=r.sha256, result=r.result,
    )  # fmt: skip


async def aextract_many(
    extractor: Any,
    inputs: Iterable[Any],
    *,
    ledger: Callable[[], RecordingLedger | None],
    concurrency: int = 8,
    rpm: float | None = None,
    tpm: float | None = None,
    force: bool = False,
    retry_failed: bool = False,
    include: list[str] | None = None,
) -> AsyncIterator[ItemResult[Any]]:
    """See ``Extractor.aextract_many``. ``ledger``: called once the iteration starts, gives the
    ledger the run records into (the extractor's own, reopened if ``close()`` closed it)."""
    if isinstance(inputs, (str, bytes, os.PathLike)):
        raise TypeError("extract_many takes an iterable of texts and paths: wrap a single one in a list")
    run_ledger = ledger()
    # None: the extractor's own; shared by every process on a PostgreSQL ledger
    limiter = limiter_for(run_ledger, rpm, tpm) if rpm or tpm else None
    unlisted: list[Job] = []
    jobs = _jobs(inputs, include, unlisted)
    first = next(jobs, None)
    if first is None:
        return  # nothing given: no run is recorded

    def chained() -> Iterator[Job]:
        yield first
        yield from jobs

    # the runner leaves the extractor and its ledger open: the caller's to close
    runner = BatchRunner(extractor, run_ledger, concurrency=concurrency, limiter=limiter, force=force,
                         retry_failed=retry_failed, include=include)  # fmt: skip
    ready: asyncio.Queue[tuple[Job, DocResult] | None] = asyncio.Queue()

    def sink(job: Job, r: DocResult, _summary: BatchSummary) -> None:
        ready.put_nowait((job, r))

    async def execute() -> BatchSummary:
        try:
            return await runner._execute(chained(), unlisted, sink)
        finally:
            ready.put_nowait(None)

    task = asyncio.create_task(execute())
    extractor._adopt(task)  # closing the extractor stops it, even if this iterator is never closed
    try:
        while (got := await ready.get()) is not None:
            job, r = got
            yield _item(extractor, job, r)
        summary = await task
    finally:
        if not task.done():  # the caller stopped early: stop sending; the run is `interrupted`
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if isinstance(limiter, SharedLimiter):  # made here, closed here
            await limiter.aclose()
    if summary.status == STOPPED and runner._stop is not None:
        stop = runner._stop
        # ProviderRefused stays ProviderRefused
        raise type(stop)(str(summary.error), url=stop.url, failures=stop.failures) from stop
