"""Batch extraction over document folders and object-storage prefixes (``s3://bucket/prefix``)."""

from ._estimate import REASK_TOKENS, check_max_cost, estimate
from ._limiter import Lease, Limiter, RateLimiter, SharedLimiter, limiter_for, model_key, open_limiter
from ._loaders import (
    MAX_BYTES,
    MAX_CHARS,
    SPECIAL,
    TEXT_TYPES,
    Document,
    Source,
    as_source,
    count_documents,
    display_path,
    load,
    path_bytes,
    walk,
)
from ._loaders import _kind as doc_type_of  # a file's type by its suffix, SPECIAL for a FIFO/device
from ._many import ItemResult, aextract_many
from ._provider import BatchProvider
from ._runner import BatchRunner, BatchSummary, DocResult
from ._runner import _load as aload  # load off the event loop (PDF, HTML, large files in a thread)
from ._sources import URI, is_uri, set_storage_options
from ._waves import WaveEvent, WaveRunner
from ._worker import LEASE_S, EnqueueResult, Worker, WorkerSummary, aenqueue

__all__ = [
    "LEASE_S",
    "MAX_BYTES",
    "MAX_CHARS",
    "REASK_TOKENS",
    "SPECIAL",
    "TEXT_TYPES",
    "URI",
    "BatchProvider",
    "BatchRunner",
    "BatchSummary",
    "DocResult",
    "Document",
    "EnqueueResult",
    "ItemResult",
    "Lease",
    "Limiter",
    "RateLimiter",
    "Source",
    "WaveEvent",
    "WaveRunner",
    "Worker",
    "WorkerSummary",
    "aenqueue",
    "SharedLimiter",
    "aextract_many",
    "aload",
    "as_source",
    "check_max_cost",
    "count_documents",
    "display_path",
    "doc_type_of",
    "estimate",
    "is_uri",
    "load",
    "path_bytes",
    "set_storage_options",
    "limiter_for",
    "load",
    "model_key",
    "open_limiter",
    "walk",
]
