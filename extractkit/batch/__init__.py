"""Batch extraction over document folders."""

from ._limiter import RateLimiter
from ._loaders import MAX_BYTES, MAX_CHARS, Document, display_path, load, walk
from ._runner import BatchRunner, BatchSummary, DocResult

__all__ = [
    "MAX_BYTES",
    "MAX_CHARS",
    "BatchRunner",
    "BatchSummary",
    "DocResult",
    "Document",
    "RateLimiter",
    "display_path",
    "load",
    "walk",
]
