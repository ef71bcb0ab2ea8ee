"""Batch extraction over document folders."""

from ._estimate import REASK_TOKENS, check_max_cost, estimate
from ._limiter import Lease, Limiter, RateLimiter, SharedLimiter, limiter_for, model_key, open_limiter
from ._loaders import (
    MAX_BYTES,
    MAX_CHARS,
    SPECIAL,
    TEXT_TYPES,
    Document,
    count_documents,
    display_path,
    load,
    walk,
)
from ._loaders import _kind as doc_type_of  # a file's type by its suffix, SPECIAL for a FIFO/device
from ._many import ItemResult, aextract_many
from ._runner import BatchRunner, BatchSummary, DocResult
from ._runner import _load as aload  # load off the event loop (PDF, HTML, large files in a thread)

__all__ = [
    "MAX_BYTES",
    "MAX_CHARS",
    "REASK_TOKENS",
    "SPECIAL",
    "TEXT_TYPES",
    "BatchRunner",
    "BatchSummary",
    "DocResult",
    "Document",
    "ItemResult",
    "Lease",
    "Limiter",
    "RateLimiter",
    "SharedLimiter",
    "aextract_many",
    "aload",
    "check_max_cost",
    "count_documents",
    "display_path",
    "doc_type_of",
    "estimate",
    "limiter_for",
    "load",
    "model_key",
    "open_limiter",
    "walk",
]
