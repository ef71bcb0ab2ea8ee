"""Where the text of the documents in scope came from: the report's ``sources`` (text layer, OCR,
both), and the OCR'd documents with pages under the confidence threshold recorded with them."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..ledger import DOCUMENT_SOURCES, DOCUMENT_SOURCES_LOW
from ._model import LowConfidenceDocument, Sources

LOW_SHOWN = 20  # low-confidence documents listed (the lowest first); the count covers them all

Run = Callable[[str, str, Sequence[Any]], list[Any]]


def sources_of(run: Run, where: str, params: Sequence[Any]) -> Sources | None:
    """The scope's ``Sources`` (None: no document in scope was loaded with pages). ``run(name, sql,
    params)`` runs and keeps one query; ``where`` and ``params`` are the scope's filter on ``e``."""
    rows = [dict(r) for r in run("document_sources", DOCUMENT_SOURCES.format(where=where), list(params))]
    if not rows:
        return None
    documents = {str(r["source"]): int(r["n"]) for r in rows}
    ocr_pages = sum(int(r["ocr_pages"] or 0) for r in rows)
    weighted = sum(float(r["ocr_weighted"] or 0.0) for r in rows)
    n_low = sum(int(r["low"] or 0) for r in rows)
    low: list[LowConfidenceDocument] = []
    if n_low:
        sql = DOCUMENT_SOURCES_LOW.format(where=where)
        for r in run("document_sources_low", sql, [*params, *params, LOW_SHOWN]):
            low.append(LowConfidenceDocument(
                path=r["path"], document_sha256=r["document_sha256"], source=r["source"],
                pages=tuple(json.loads(r["low_pages"] or "[]")), n_pages=int(r["n_pages"]),
                min_confidence=r["ocr_min"], mean_confidence=r["ocr_mean"], threshold=r["low_threshold"],
            ))  # fmt: skip
    return Sources(
        documents=documents,
        ocr_documents=documents.get("ocr", 0) + documents.get("mixed", 0),
        ocr_pages=ocr_pages,
        mean_confidence=round(weighted / ocr_pages, 4) if ocr_pages else None,
        low_confidence_documents=n_low,
        low_confidence=tuple(low),
    )
