"""Run every tier on its own over a gold set, recorded in the ledger under an eval run.

Each (document, tier) is extracted with that tier forced (no escalation). An earlier forced
extraction of the same document text by the same tier settings and schema is reused, so a rerun
costs nothing; one that ended in a transient failure (rate limit, API error, timeout) is tried
again, since it says nothing about the tier.

The eval records into the ledger it is given, passed to each call with its limiter
(``Extractor.aextract_in_run``): it changes nothing on the extractor and leaves it open, as it
leaves the ledger open (their owners close them).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import ConfigError, DocumentError, ProviderUnreachable
from .._results import TRANSIENT_OUTCOMES
from ..batch import Document
from ..ledger import Ledger
from ._gold import GoldItem
from ._score import score

if TYPE_CHECKING:
    from ..batch import Limiter


@dataclass
class EvalSummary:
    run_id: str
    items: int = 0
    tiers: list[str] = field(default_factory=list)
    extracted: int = 0  # forced extractions made (and paid for) by this run
    reused: int = 0  # taken from earlier runs
    unreadable: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)  # internal errors, per item and tier
    status: str = "running"
    # the provider stopped answering or refused the key (ProviderUnreachable): why; no more was sent
    error: str | None = None


async def aevaluate(
    extractor: Any,
    gold: Sequence[GoldItem],
    ledger: Ledger,
    *,
    tiers: Sequence[str] | None = None,
    concurrency: int = 4,
    force: bool = False,
    dayfirst: bool = False,
    on_progress: Callable[[EvalSummary], None] | None = None,
    limiter: Limiter | None = None,
) -> EvalSummary:
    """Evaluate each of ``tiers`` (default: all of the extractor's) alone on every gold item,
    recorded into ``ledger``; ``limiter`` paces the requests (default: the extractor's). The
    extractor and the ledger are left open."""
    names = list(tiers) if tiers else [t.name for t in extractor.tiers]
    for n in names:
        extractor.tier(n)  # raises ConfigError naming the tiers there are
    if limiter is None:
        limiter = extractor.limiter
    run_id = ledger.start_run("eval", extractor.describe(), extractor.config_hash, extractor.schema_hash)
    summary = EvalSummary(run_id=run_id, items=len(gold), tiers=names)
    sem = asyncio.Semaphore(max(1, concurrency))
    if any(getattr(t, "is_local", False) for t in extractor.tiers):
        from ..local import reserve_slots

        reserve_slots(concurrency)  # one slot of the local server per extraction in flight

    async def load(item: GoldItem) -> Document | None:
        try:
            doc = await asyncio.to_thread(item.load)
        except DocumentError as exc:
            summary.unreadable.append({"gold_id": item.gold_id, "path": str(item.path), "error": str(exc)})
            ledger.record_eval_item(run_id, item.gold_id, None, str(item.path), item.expected)
            return None
        ledger.record_eval_item(run_id, item.gold_id, doc.sha256, doc.path, item.expected)
        return doc

    async def one(item: GoldItem, doc: Document, tier: str) -> None:
        async with sem:
            if summary.error is not None:  # the provider stopped answering: send nothing more
                return
            try:
                ext_id, value, reused = await _extract(extractor, ledger, limiter, doc, tier, run_id, force)
            except ConfigError:
                raise
            except ProviderUnreachable as exc:
                if summary.error is None:
                    summary.error = str(exc)
                return
            except Exception as exc:  # a bug must not stop the eval: report it for this item
                summary.errors.append(
                    {"gold_id": item.gold_id, "tier": tier, "error": f"{type(exc).__name__}: {exc}"}
                )
                return
            ledger.record_eval_result(
                run_id, item.gold_id, tier, ext_id, reused, score(item.expected, value, dayfirst=dayfirst)
            )
            if reused:
                summary.reused += 1
            else:
                summary.extracted += 1
            if on_progress:
                on_progress(summary)

    status = "interrupted"
    try:
        docs = await asyncio.gather(*(load(item) for item in gold))
        jobs = [
            one(item, doc, tier)
            for item, doc in zip(gold, docs, strict=True)
            if doc is not None
            for tier in names
        ]
        await asyncio.gather(*jobs)
        status = "done" if summary.error is None else "provider_unreachable"
    except Exception:
        status = "failed"
        raise
    finally:
        summary.status = status
        ledger.finish_run(
            run_id, status, n_documents=len(gold), n_errors=len(summary.unreadable), n_resumed=summary.reused
        )
    return summary


async def _extract(
    extractor: Any, ledger: Ledger, limiter: Limiter | None, doc: Document, tier: str, run_id: str,
    force: bool,
) -> tuple[str, dict[str, Any] | None, bool]:
    key = (doc.sha256, extractor.schema_hash, extractor.tier_hashes[tier])
    if not force:
        row = ledger.find_final(*key, forced_tier=tier)
        if row is not None and row["outcome"] not in TRANSIENT_OUTCOMES:  # a transient end: again
            return row["id"], json.loads(row["value_json"]) if row["value_json"] else None, True
    result = await extractor.aextract_in_run(
        doc.text, ledger=ledger, run_id=run_id, limiter=limiter, only=tier, path=doc.path, size=doc.size,
        doc_type=doc.type,
    )
    assert result.extraction_id is not None, "the extractor records into the eval's ledger"
    value = result.value.model_dump(mode="json") if result.value is not None else None
    return result.extraction_id, value, False


def evaluate(extractor: Any, gold: Sequence[GoldItem], ledger: Ledger, **kwargs: Any) -> EvalSummary:
    """Synchronous ``aevaluate``, on the extractor's own event loop (as ``extract`` runs): its
    connections are kept for later calls and closed by ``extractor.close()``."""
    return extractor.run_sync(aevaluate(extractor, gold, ledger, **kwargs))  # type: ignore[no-any-return]
