"""Batch extraction over document folders."""

from ._limiter import RateLimiter
from ._loaders import Document, load, walk
from ._runner import BatchRunner, BatchSummary, DocResult

__all__ = ["BatchRunner", "BatchSummary", "DocResult", "Document", "RateLimiter", "load", "walk"]
