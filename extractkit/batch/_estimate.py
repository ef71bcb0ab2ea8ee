"""Know the bill before paying it: what ``extract`` would send, in tokens and dollars, without
sending anything and without recording anything in the ledger (``extract --dry-run``).

Documents are walked and read exactly as the batch reads them (same loaders, same limits), so an
unreadable document is listed with the error kind and message the batch would record. A document
whose identical content already has a final result in the ledger for this chain is shown as
resumed (``retry_reason`` decides, as in the runner): it would not be sent. Identical content
under two paths is sent once.

Tokens: each tier's real first request is rendered (its prompt template, few-shot examples as
selected for that document, and the tool / schema definition its mode adds) and counted with the
offline tokenizer (``extractkit._tokens``: exact for cl100k models, an estimate for others), in
worker threads, never on the event loop.

Cost per tier, from the tier's ``price`` or the price table (``extractkit._pricing``):

- *first attempt*: every document's first request at that tier, input tokens as counted, output
  at most the tier's ``max_output_tokens`` (an upper bound: most answers are shorter);
- *worst case*: every document through every tier with every re-ask. Re-ask ``k`` sends the
  conversation so far again: the first request plus ``k`` quoted answers (each at most
  ``max_output_tokens``) and ``k`` validation-error messages (``REASK_TOKENS`` each, an
  estimate); every attempt's output at its cap.

A document too long for a tier whose ``long_documents`` is ``"chunk"`` (sent live) is priced as
its chunks: cut as the chain cuts it (``_chunking.split``, to the same budget), each chunk one
request of the tier's fixed prompt (rendered for an empty document) plus the chunk's tokens, and
each chunk re-asked in the worst case like any document.

A tier with no known price has cost ``None`` ("price unknown"), never $0.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .._errors import ConfigError, DocumentError
from .._pricing import Price, lookup_price
from .._tokens import (
    count_request_tokens,
    count_tokens,
    image_rule,
    image_tokens,
    png_size,
    request_image_tokens,
)
from ._loaders import MAX_BYTES, MAX_CHARS, SPECIAL, URI, Source, dir_error, display_path, walk

REASK_TOKENS = 256  # a re-ask's validation-error message, estimated (the quoted answer is counted apart)
WORKERS = 4  # documents read and counted at once (the counting runs in worker threads)


def tier_price(extractor: Any, tier: Any) -> Price | None:
    """The price a tier's attempts are charged at: its own ``price``, else the price table (with
    the extractor's ``prices`` overrides); None when unknown. The same rule as ``TierCall``."""
    return tier.price or lookup_price(tier.model, getattr(extractor, "prices", None))


def check_max_cost(extractor: Any, max_cost: float | None) -> None:
    """A cost ceiling needs a price for every tier and a positive amount: ``ConfigError`` (exit 2)
    otherwise, naming the tier, before anything is sent."""
    if max_cost is None:
        return
    if not max_cost > 0:
        raise ConfigError(f"max_cost must be a positive number of USD, got {max_cost}")
    for tier in extractor.tiers:
        if tier_price(extractor, tier) is None:
            raise ConfigError(
                f"max_cost needs the price of every tier, and tier {tier.name!r} (model {tier.model}) is"
                " not in the price table: set `price` on the tier (USD per 1M tokens, e.g. price ="
                " { input = 0.15, output = 0.6 } in the TOML, or price=Price(0.15, 0.6) in Python)"
            )


def _usd(tokens_in: int, tokens_out: int, price: Price | None) -> float | None:
    if price is None:
        return None
    return round((tokens_in * price.input + tokens_out * price.output) / 1_000_000, 10)


@dataclass
class TierEstimate:
    name: str
    model: str
    price: Price | None
    max_output_tokens: int  # the output bound of every attempt
    max_reasks: int
    context_window: int | None
    documents: int = 0  # documents it would be sent (those that fit its context window)
    too_long: int = 0  # documents over its context window that it cannot chunk: refused unsent
    chunked: int = 0  # documents over its context window it would extract in chunks
    chunks: int = 0  # the chunks of those documents: one request each (and its re-asks)
    input_tokens: int = 0  # first attempt, all its documents (a chunked one: all its chunks)
    image_tokens: int = 0  # of input_tokens, those of page images (a tier whose input includes them)
    # a tier that sends page images: the image rule its tokens are counted by (``_tokens.image_rule``),
    # with a note when the model is not in the provider's table (then counted as gpt-4o)
    image_rule: str | None = None

    @property
    def attempts(self) -> int:
        """Attempts per document at most: the first and every re-ask."""
        return self.max_reasks + 1

    @property
    def requests(self) -> int:
        """First requests: one per document that fits, one per chunk of a chunked one."""
        return self.documents + self.chunks

    @property
    def first_output_tokens(self) -> int:
        return self.requests * self.max_output_tokens

    @property
    def worst_input_tokens(self) -> int:
        n = self.attempts
        growth = (self.max_output_tokens + REASK_TOKENS) * n * (n - 1) // 2  # re-ask k quotes k answers
        return self.input_tokens * n + self.requests * growth

    @property
    def worst_output_tokens(self) -> int:
        return self.requests * self.attempts * self.max_output_tokens

    @property
    def first_input_usd(self) -> float | None:
        return _usd(self.input_tokens, 0, self.price)

    @property
    def first_usd(self) -> float | None:
        """Every document's first attempt at this tier, output at its cap."""
        return _usd(self.input_tokens, self.first_output_tokens, self.price)

    @property
    def worst_usd(self) -> float | None:
        return _usd(self.worst_input_tokens, self.worst_output_tokens, self.price)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["price"] = asdict(self.price) if self.price is not None else None
        for k in ("attempts", "requests", "first_output_tokens", "worst_input_tokens", "worst_output_tokens",
                  "first_input_usd", "first_usd", "worst_usd"):  # fmt: skip
            d[k] = getattr(self, k)
        return d


@dataclass
class DocEstimate:
    path: str
    status: str  # send | resumed | duplicate | error
    sha256: str | None = None
    tokens: dict[str, int] = field(default_factory=dict)  # tier -> input tokens of its first request
    too_long: list[str] = field(default_factory=list)  # tiers whose context window it exceeds (refused)
    chunks: dict[str, int] = field(default_factory=dict)  # tier -> its chunks, for a tier that chunks it
    outcome: str | None = None  # error kind, or the status of the resumed result (ok / failed)
    error: str | None = None
    duplicate_of: str | None = None
    image_tokens: dict[str, int] = field(default_factory=dict)  # tier -> of ``tokens``, its page images


@dataclass
class Estimate:
    tiers: list[TierEstimate]
    documents: list[DocEstimate] = field(default_factory=list)
    skipped: int = 0  # unsupported file types
    special: int = 0  # FIFOs, sockets, devices: never opened
    ledger: str | None = None  # the ledger consulted for resume; None: it does not exist yet
    max_cost: float | None = None

    def count(self, status: str) -> int:
        return sum(1 for d in self.documents if d.status == status)

    @property
    def unpriced(self) -> list[str]:
        return [t.name for t in self.tiers if t.price is None]

    @property
    def first_usd(self) -> float | None:
        """The first attempt at the first tier, for every document sent (output at its cap)."""
        return self.tiers[0].first_usd if self.tiers else None

    @property
    def worst_usd(self) -> float | None:
        costs = [t.worst_usd for t in self.tiers]
        return None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 10)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "documents": len(self.documents),
            "to_send": self.count("send"),
            "resumed": self.count("resumed"),
            "duplicates": self.count("duplicate"),
            "errors": self.count("error"),
            "skipped": self.skipped,
            "special": self.special,
            "ledger": self.ledger,
            "reask_tokens_estimate": REASK_TOKENS,
            "tiers": [t.to_dict() for t in self.tiers],
            "first_attempt_usd": self.first_usd,
            "worst_case_usd": self.worst_usd,
            "price_unknown": self.unpriced,
            "max_cost": self.max_cost,
            "document_list": [asdict(d) for d in self.documents],
        }


def request_tokens(
    bound: Any, text: str, extra_tokens: dict[str, int], images: Sequence[bytes] = (), *,
    context: bool = False,
) -> int:
    """Input tokens of a tier's first request for ``text`` (and its page ``images``, for a tier
    that sends them), rendered as the chain renders it: image tokens by the provider's rule
    (``_tokens.image_tokens``), billed ones, or with ``context`` those that fill the context."""
    tier = bound.tier
    _, kwargs = bound.prepare_request(
        {"messages": bound.messages(text, images), "model": tier.model, "temperature": tier.temperature,
         "max_tokens": bound.max_tokens}
    )  # fmt: skip
    if bound.response_format is not None:
        kwargs["response_format"] = bound.response_format
    if tier.name not in extra_tokens:  # the tool / schema definition: the same for every document
        extra = kwargs.get("tools") or kwargs.get("response_format")
        extra_tokens[tier.name] = count_tokens(json.dumps(extra, ensure_ascii=False)) if extra else 0
    n = count_request_tokens(kwargs["messages"]) + extra_tokens[tier.name]
    if images and tier.sends_images:
        n += request_image_tokens(kwargs["messages"], tier.model, context=context)
    return n


def _count(
    extractor: Any, text: str, extra_tokens: dict[str, int], images: Sequence[bytes] = ()
) -> dict[str, tuple[int, int]]:
    """Every tier's first-request tokens for one document: (input tokens billed, of them page
    image tokens billed) (CPU work: called in a worker thread)."""
    out: dict[str, tuple[int, int]] = {}
    for t in extractor.tiers:
        bound = extractor._bound[t.name]
        n = request_tokens(bound, text, extra_tokens, images)
        pictures = 0
        if images and t.sends_images:
            pictures = sum(image_tokens(*png_size(png), t.detail, t.model) for png in images)
        out[t.name] = (n, pictures)
    return out


def _rule_of(tier: Any) -> str | None:
    if not getattr(tier, "sends_images", False):
        return None
    rule, known = image_rule(tier.model)
    return rule if known else f"{rule} (model {tier.model} is not in OpenAI's image table: counted as {rule})"


def _context_images(extractor: Any, name: str, images: Sequence[bytes]) -> int:
    """Context tokens of a tier's page images for one document (0 for a tier without them)."""
    tier = extractor._bound[name].tier
    if not images or not tier.sends_images:
        return 0
    return sum(image_tokens(*png_size(png), tier.detail, tier.model, context=True) for png in images)


async def estimate(
    extractor: Any,
    paths: list[str | os.PathLike[str] | URI],
    *,
    ledger: Any = None,
    include: list[str] | None = None,
    force: bool = False,
    retry_failed: bool = False,
    max_bytes: int = MAX_BYTES,
    max_chars: int = MAX_CHARS,
    max_cost: float | None = None,
    workers: int = WORKERS,
    vias: dict[str, str] | None = None,
) -> Estimate:
    """What ``BatchRunner(extractor, ledger, ...).run(paths)`` would send, estimated; nothing is
    sent and nothing is written. ``ledger``: an open ``Ledger`` to find resumed documents in, or
    None (every readable document would be sent). ``vias``: tier -> "live" | "batch" (a tier sent
    by the provider's Batch API is priced at its batch price, ``Tier.resolved_batch_price``)."""
    from .._chain import CHUNK_ROOM_SHARE, _check_images
    from .._chunking import MIN_CHUNK_TOKENS
    from .._chunking import split as split_chunks
    from .._llm import TOKEN_SAFETY
    from ._runner import _done_by_file, _load, retry_reason

    tiers = [
        TierEstimate(
            name=t.name, model=t.model,
            price=(t.resolved_batch_price(getattr(extractor, "prices", None))
                   if (vias or {}).get(t.name) == "batch" else tier_price(extractor, t)),
            max_output_tokens=extractor._bound[t.name].max_tokens, max_reasks=t.max_reasks,
            context_window=extractor._bound[t.name].context_window, image_rule=_rule_of(t),
        )
        for t in extractor.tiers
    ]  # fmt: skip
    result = Estimate(tiers=tiers, ledger=ledger.target if ledger is not None else None, max_cost=max_cost)
    unlisted: list[OSError] = []
    files = walk(list(paths), include, on_error=unlisted.append)
    first_path: dict[str, str] = {}  # sha256 -> the path that would send it
    extra_tokens: dict[str, int] = {}

    def report_unlisted() -> None:
        while unlisted:
            exc = dir_error(unlisted.pop(0))
            result.documents.append(DocEstimate(exc.path or "?", "error", outcome=exc.kind, error=str(exc)))

    needs_images = bool(getattr(extractor, "needs_images", False))
    budgets: dict[str, tuple[int | None, int]] = {}  # tier -> (chunk budget, fixed prompt tokens)

    def chunk_budget(name: str) -> tuple[int | None, int]:
        """The tokens a chunk may have at tier ``name`` (None: it cannot chunk), as the chain
        computes them (``Extractor._run_chunks``), and its fixed prompt (CPU: in a thread)."""
        if name not in budgets:
            tier = extractor._bound[name].tier
            room = extractor._chunk_steps(tier).document_room()
            budget = None if room is None else int(room * CHUNK_ROOM_SHARE)
            if tier.chunk_tokens is not None and budget is not None:
                budget = min(budget, tier.chunk_tokens)
            if budget is not None and budget < MIN_CHUNK_TOKENS:
                budget = None
            budgets[name] = (budget, request_tokens(extractor._bound[name], "", extra_tokens))
        return budgets[name]

    def chunk_tokens(name: str, doc: Any) -> list[int] | None:
        """The input tokens of each chunk's first request, or None: the tier cannot chunk it."""
        budget, fixed = chunk_budget(name)
        if budget is None:
            return None
        tier = extractor._bound[name].tier
        chunks = split_chunks(doc.text, max_tokens=budget, overlap_tokens=tier.chunk_overlap, pages=doc.pages)
        return [fixed + c.tokens for c in chunks]

    async def one(path: Source, doc_type: str) -> DocEstimate:
        done = await _done_by_file(ledger, extractor, path, doc_type, max_bytes, force, retry_failed)
        if done is not None:  # a PDF or image with its final result: not loaded (OCR'd) again
            sha = done["document_sha256"]
            if sha in first_path:
                return DocEstimate(display_path(path), "duplicate", sha, duplicate_of=first_path[sha])
            first_path[sha] = display_path(path)
            return DocEstimate(display_path(path), "resumed", sha, outcome=done["status"])
        try:
            doc = await _load(path, doc_type, max_bytes, max_chars, images=needs_images)
            if needs_images:  # an "images" tier refuses a document without them, as the chain does
                _check_images(extractor.tiers, doc.images)
        except DocumentError as exc:
            return DocEstimate(display_path(path), "error", outcome=exc.kind, error=str(exc))
        if doc.sha256 in first_path:
            return DocEstimate(doc.path, "duplicate", doc.sha256, duplicate_of=first_path[doc.sha256])
        first_path[doc.sha256] = doc.path
        if ledger is not None and not force:
            row = ledger.find_final(doc.sha256, extractor.schema_hash, extractor.config_hash)
            again = row is not None and retry_reason(row["status"], row["outcome"], retry_failed=retry_failed)
            if row is not None and again is None:
                return DocEstimate(doc.path, "resumed", doc.sha256, outcome=row["status"])
        counted = await asyncio.to_thread(_count, extractor, doc.text, extra_tokens, doc.images)
        tokens = {name: n for name, (n, _) in counted.items()}
        d = DocEstimate(doc.path, "send", doc.sha256, tokens=tokens,
                        image_tokens={name: p for name, (_, p) in counted.items() if p})  # fmt: skip
        for t in tiers:
            n, pictures = counted[t.name]
            window = t.context_window
            # the margin is for the tokenizer's estimate of text; image tokens are counted by rule
            # (the context check counts what fills the context: ``Steps.image_tokens``)
            context = int((n - pictures) * TOKEN_SAFETY) + _context_images(extractor, t.name, doc.images)
            if window is not None and context + t.max_output_tokens > window:
                tier = extractor._bound[t.name].tier
                # the chain chunks it when the tier says so and it runs live (not in Batch API
                # waves) and does not send page images for it
                chunkable = (tier.long_documents == "chunk" and (vias or {}).get(t.name) != "batch"
                             and not (doc.images and tier.sends_images))  # fmt: skip
                parts = await asyncio.to_thread(chunk_tokens, t.name, doc) if chunkable else None
                if parts:
                    d.chunks[t.name] = len(parts)
                    t.chunked += 1
                    t.chunks += len(parts)
                    t.input_tokens += sum(parts)
                else:
                    d.too_long.append(t.name)  # the chain refuses it unsent (context_overflow)
                    t.too_long += 1
            else:
                t.documents += 1
                t.input_tokens += n
                t.image_tokens += pictures
        return d

    async def worker() -> None:
        for path, doc_type in files:  # a shared iterator, as in the runner
            report_unlisted()
            if doc_type is None:
                result.skipped += 1
            elif doc_type == SPECIAL:
                result.special += 1
            else:
                result.documents.append(await one(path, doc_type))
        report_unlisted()

    await asyncio.gather(*(worker() for _ in range(max(1, min(workers, os.cpu_count() or 1, 16)))))
    result.documents.sort(key=lambda d: d.path)
    return result
