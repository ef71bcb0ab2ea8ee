"""The ledger: SQLite tables of runs, documents, extractions and attempts."""

from ._ledger import DEFAULT_PATH, ENV_VAR, SERVED_REFRESH_S, Ledger, default_path, new_id, scrub
from ._migrations import MIGRATIONS, migrate
from ._protocol import RecordingLedger
from ._queries import (
    DOCUMENT_ERRORS,
    PAIRS_CUT,
    TIERS_IN,
    VERSION_PAIRS,
    VERSION_STATS,
    VERSION_STATS_CURRENT,
    field_failures_sql,
)
from ._queue import ClaimedJob, EnqueueCounts, Finished, QueuedDocument, WorkQueue

__all__ = [
    "DEFAULT_PATH",
    "DOCUMENT_ERRORS",
    "ENV_VAR",
    "ClaimedJob",
    "EnqueueCounts",
    "Finished",
    "MIGRATIONS",
    "PAIRS_CUT",
    "QueuedDocument",
    "SERVED_REFRESH_S",
    "TIERS_IN",
    "VERSION_PAIRS",
    "VERSION_STATS",
    "VERSION_STATS_CURRENT",
    "WorkQueue",
    "Ledger",
    "RecordingLedger",
    "default_path",
    "field_failures_sql",
    "migrate",
    "new_id",
    "scrub",
]
