"""``extract --dry-run``: the documents, tokens and cost a run would send, printed or as JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from .._words import plural
from ..batch import REASK_TOKENS

SHOWN = 20  # documents listed in the terminal (--json lists every one)


def _usd(v: float | None) -> str:
    if v is None:
        return "price unknown"
    return f"${v:,.4f}" if v >= 0.01 or v == 0 else f"${v:.6f}"  # a small estimate is not shown as $0


def dry_run(extractor: Any, cfg: Any, paths: list[Any], ledger_path: str | Path | None, *,
            include: list[str] | None, force: bool, retry_failed: bool, max_cost: float | None,
            as_json: bool, vias: dict[str, str] | None = None) -> int:  # fmt: skip
    """Estimate and print; returns the exit code (0). Sends nothing; the ledger, when it exists, is
    only read (to show resumed documents); a ledger that does not exist is not created."""
    from ..batch import check_max_cost, estimate
    from ..ledger import Ledger, default_path, is_url

    check_max_cost(extractor, max_cost)  # the run would refuse to start: say so now (exit 2)
    if vias and "batch" in vias.values():  # the run would go to the waves: refuse what they refuse
        from ..batch import WaveRunner

        WaveRunner.check_tiers(extractor, vias)
    path = Path(ledger_path) if ledger_path and not is_url(ledger_path) else default_path()
    ledger = Ledger(ledger_path) if is_url(ledger_path) else Ledger(path) if path.is_file() else None
    try:
        est = asyncio.run(estimate(
            extractor, list(paths), ledger=ledger, include=include, force=force,
            retry_failed=retry_failed, max_bytes=cfg.batch.max_bytes, max_chars=cfg.batch.max_chars,
            max_cost=max_cost, vias=vias,
        ))  # fmt: skip
    finally:
        if ledger is not None:
            ledger.close()
    if as_json:
        print(json.dumps(est.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print(est, path, vias)
    return 0


def _print(est: Any, ledger_path: Path, vias: dict[str, str] | None = None) -> None:
    from ._app import out

    to_send = est.count("send")
    n_docs = plural(len(est.documents), "document")
    head = (f"dry run: nothing sent, nothing recorded. {n_docs}: {to_send} to send, "
            f"{est.count('resumed')} already in the ledger (skipped: resume), {est.count('duplicate')} "
            f"identical to another path (sent once), {est.count('error')} unreadable")  # fmt: skip
    if est.skipped or est.special:
        head += f"; {est.skipped + est.special} file(s) of unsupported type skipped"
    out.print(head, highlight=False, markup=False)
    if est.ledger is None:
        out.print(f"ledger {ledger_path} does not exist yet: no document is resumed", highlight=False,
                  markup=False)  # fmt: skip

    names = [t.name for t in est.tiers]
    docs = Table(title="documents (input tokens of the first request, per tier)")
    docs.add_column("document", overflow="fold")
    docs.add_column("status")
    for n in names:
        docs.add_column(n, justify="right")
    for d in est.documents[:SHOWN]:
        if d.status == "send":
            cells = [f"{d.tokens[n]:,}" + (" too long" if n in d.too_long else "")
                     + (f" chunked into {d.chunks[n]}" if n in d.chunks else "") for n in names]  # fmt: skip
            docs.add_row(d.path, "send", *cells)
        else:
            why = {"resumed": f"skipped: resumed ({d.outcome})", "error": f"unreadable: {d.outcome}",
                   "duplicate": f"duplicate of {d.duplicate_of}"}[d.status]  # fmt: skip
            docs.add_row(d.path, why, *("-" for _ in names))
    out.print(docs)
    if len(est.documents) > SHOWN:
        out.print(f"... and {len(est.documents) - SHOWN} more (--json lists every document)", highlight=False)
    unreadable = [d for d in est.documents if d.status == "error"]
    if unreadable:
        out.print(f"{plural(len(unreadable), 'document')} cannot be read (the run records them as errors):")
        for d in unreadable:
            out.print(f"  {d.error}", highlight=False, markup=False)

    tiers = Table(title="estimated cost per tier")
    for col in ("tier", "model", "docs", "input tok", "max out", "1st attempt", "tries", "worst case"):
        tiers.add_column(col, justify="left" if col in ("tier", "model") else "right",
                         overflow="fold")  # fmt: skip
    for t in est.tiers:
        notes = ([f"{t.chunked} chunked into {t.chunks}"] if t.chunked else []) + (
            [f"{t.too_long} too long"] if t.too_long else [])  # fmt: skip
        docs_cell = f"{t.documents + t.chunked:,}" + (f" ({', '.join(notes)})" if notes else "")
        tiers.add_row(t.name, t.model, docs_cell, f"{t.input_tokens:,}", f"{t.max_output_tokens:,}",
                      _usd(t.first_usd), str(t.attempts), _usd(t.worst_usd))  # fmt: skip
    out.print(tiers)
    first = est.tiers[0] if est.tiers else None
    if first is not None:
        out.print(
            f"first attempt at the first tier ({first.name}): {_usd(first.first_usd)}"
            + ("" if first.price is None else f" (input {_usd(first.first_input_usd)}, output at its cap)"),
            highlight=False, markup=False,
        )  # fmt: skip
    out.print(f"worst case, every re-ask on every tier, output at each tier's cap: {_usd(est.worst_usd)}",
              highlight=False, markup=False)  # fmt: skip
    by_batch = [t.name for t in est.tiers if (vias or {}).get(t.name) == "batch"]
    if by_batch:  # what the run would send through the Batch API is priced at the batch price
        out.print(f"priced at the Batch API price (sent by batch): {', '.join(by_batch)}; at the live price: "
                  f"{', '.join(t.name for t in est.tiers if t.name not in by_batch) or 'none'}",
                  highlight=False, markup=False)  # fmt: skip
    for t in est.tiers:
        if t.chunked:
            out.print(f"tier {t.name}: {plural(t.chunked, 'document')} longer than its context chunked into "
                      f"{plural(t.chunks, 'chunk')} (long_documents = \"chunk\"), each chunk one request "
                      "(and its re-asks in the worst case)", highlight=False, markup=False)  # fmt: skip
    for name in est.unpriced:
        t = next(x for x in est.tiers if x.name == name)
        out.print(f"tier {name}: price unknown (model {t.model} is not in the price table): set `price` "
                  "on the tier, e.g. price = { input = 0.15, output = 0.6 } (USD per 1M tokens)",
                  highlight=False, markup=False)  # fmt: skip
    if est.max_cost is not None:
        line = f"max cost ${est.max_cost:g}: the run stops starting documents once it has spent that"
        if first is not None and first.first_usd and first.documents + first.chunked:
            per_doc = first.first_usd / (first.documents + first.chunked)
            if first.first_usd > est.max_cost:
                n = int(est.max_cost // per_doc)
                line += (f"; at the first attempt's estimate, after about {plural(n, 'document')}" if n else
                         "; at the first attempt's estimate, the first document alone passes it")  # fmt: skip
        if any(t.chunked for t in est.tiers):  # checked between documents: a chunked one goes whole
            line += ("; a document extracted in chunks is started whole, so its chunks can pass the "
                     "ceiling by up to its own worst case")  # fmt: skip
        out.print(line, highlight=False, markup=False)
    out.print("tokens: counted offline (cl100k: exact for OpenAI cl100k models, an estimate otherwise); "
              f"worst case: re-ask k quotes k answers at the cap plus {REASK_TOKENS} tokens of errors each; "
              "1st attempt: output at the cap (most answers are shorter)",
              highlight=False, markup=False)  # fmt: skip
