"""Batch extraction over document folders."""

from ._limiter import Limiter, RateLimiter
from ._loaders import MAX_BYTES, MAX_CHARS, Document, count_documents, display_path, load, walk
from ._many import ItemResult
from ._runner import BatchRunner, BatchSummary, DocResult

__all__ = [
    "MAX_BYTES",
    "MAX_CHARS",
    "BatchRunner",
    "BatchSummary",
    "DocResult",
    "Document",
    "ItemResult",
    "Limiter",
    "RateLimiter",
    "count_documents",
    "display_path",
    "load",
    "walk",
]
