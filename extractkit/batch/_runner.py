"""The batch runner: documents from folders through an Extractor, recorded in a Ledger.

Resume: a document whose text, schema and chain config already have a final result (ok or
failed) in the ledger is not sent again unless ``force``. The output file is rewritten by every
run with one line per document, so a run killed half-way and run again leaves each document
exactly once in it.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from .._errors import ConfigError, DocumentError
from .._redact import redact_json
from ..ledger import Ledger
from ._loaders import Document, load, walk


@dataclass
class DocResult:
    path: str
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

    def to_json(self) -> str:
        return json.dumps(redact_json(asdict(self)), ensure_ascii=False)  # the --out line


@dataclass
class BatchSummary:
    run_id: str
    status: str = "running"
    documents: int = 0
    ok: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0  # unsupported file types
    resumed: int = 0
    attempts: int = 0  # made by this run (resumed documents add none)
    cost_usd: float | None = 0.0
    wins: Counter[str] = field(default_factory=Counter)
    tier_failures: Counter[str] = field(default_factory=Counter)
    failed_paths: list[str] = field(default_factory=list)

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
        if r.resumed:
            self.resumed += 1
        else:
            self.attempts += r.attempts
        if self.cost_usd is not None:
            self.cost_usd = None if r.cost_usd is None else round(self.cost_usd + r.cost_usd, 10)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["wins"] = dict(self.wins)
        d["tier_failures"] = dict(self.tier_failures)
        return d


INLINE_BYTES = 64 * 1024  # plain-text files this small are read on the loop: a thread hop costs more


async def _load(path: Path, doc_type: str) -> Document:
    """PDFs, HTML and large files are read in a worker thread; small text files inline."""
    if doc_type in ("txt", "md", "json"):
        try:
            small = path.stat().st_size <= INLINE_BYTES
        except OSError:
            small = False  # let load() report it
        if small:
            return load(path, doc_type)
    return await asyncio.to_thread(load, path, doc_type)


class BatchRunner:
    def __init__(
        self,
        extractor: Any,
        ledger: Ledger,
        *,
        concurrency: int = 8,
        force: bool = False,
        out: str | Path | None = None,
        on_result: Callable[[DocResult, BatchSummary], None] | None = None,
        include: list[str] | None = None,
        freeze_gc: bool = False,
    ):
        self.include = include
        # the CLI owns its process: moving everything alive at the start (modules, schemas, the
        # SDK's types) out of the collector's reach makes every later collection cheaper
        self.freeze_gc = freeze_gc
        self.extractor = extractor
        self.ledger = ledger
        self.concurrency = concurrency
        self.force = force
        self.out = Path(out) if out else None
        self.on_result = on_result
        extractor.ledger = ledger

    def _from_ledger(self, doc: Document, row: Any) -> DocResult:
        return DocResult(
            path=doc.path, status=row["status"], sha256=doc.sha256, tier=row["tier"],
            value=json.loads(row["value_json"]) if row["value_json"] else None,
            outcome=row["outcome"], error=row["error"], attempts=row["n_attempts"],
            prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
            cost_usd=row["cost_usd"], resumed=True,
        )  # fmt: skip

    async def _one(self, path: Path, doc_type: str, run_id: str, summary: BatchSummary) -> DocResult:
        ex = self.extractor
        try:
            doc = await _load(path, doc_type)
        except DocumentError as exc:
            self.ledger.record_error(
                run_id=run_id, path=str(path), kind=exc.kind, message=str(exc),
                schema_hash=ex.schema_hash, config_hash=ex.config_hash,
            )  # fmt: skip
            return DocResult(path=str(path), status="error", outcome=exc.kind, error=str(exc))
        if not self.force:
            row = self.ledger.find_final(doc.sha256, ex.schema_hash, ex.config_hash)
            if row is not None:
                return self._from_ledger(doc, row)
        try:
            result = await ex.aextract(
                doc.text, run_id=run_id, path=doc.path, size=doc.size, doc_type=doc.type
            )
        except ConfigError:
            raise
        except Exception as exc:  # a bug must not stop the batch: record it for this document
            msg = f"{doc.path}: internal error: {type(exc).__name__}: {exc}"
            self.ledger.record_error(
                run_id=run_id, path=doc.path, kind="internal_error", message=msg,
                schema_hash=ex.schema_hash, config_hash=ex.config_hash,
                document_sha256=doc.sha256,
            )  # fmt: skip
            return DocResult(path=doc.path, status="error", sha256=doc.sha256,
                             outcome="internal_error", error=msg)  # fmt: skip
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
            cost_usd=result.cost_usd,
        )  # fmt: skip

    async def run(self, paths: list[str | Path]) -> BatchSummary:
        ex = self.extractor
        run_id = self.ledger.start_run("batch", ex.describe(), ex.config_hash, ex.schema_hash)
        summary = BatchSummary(run_id=run_id)
        files: Iterator[tuple[Path, str | None]] = walk(paths, self.include)
        out: IO[str] | None = None
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            out = self.out.open("w", encoding="utf-8")

        async def worker() -> None:
            for path, doc_type in files:  # a shared iterator: files are read as needed
                if doc_type is None:
                    summary.skipped += 1
                    continue
                r = await self._one(path, doc_type, run_id, summary)
                summary.add(r)
                if out is not None:
                    out.write(r.to_json() + "\n")
                    out.flush()
                if self.on_result is not None:
                    self.on_result(r, summary)

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
        except Exception:
            status = "failed"
            raise
        finally:
            if self.freeze_gc:
                gc.unfreeze()
            summary.status = status
            if out is not None:
                out.close()
            self.ledger.finish_run(
                run_id, status, n_documents=summary.documents, n_ok=summary.ok,
                n_failed=summary.failed, n_errors=summary.errors, n_skipped=summary.skipped,
                n_resumed=summary.resumed,
            )  # fmt: skip
            await ex.aclose()
        return summary
