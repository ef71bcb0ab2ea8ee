"""The ledger: runs, documents, extractions and attempts, in SQLite or PostgreSQL (one ``Ledger``)."""

from ._dialect import POSTGRES, SQLITE, Dialect
from ._ledger import DEFAULT_PATH, ENV_VAR, SERVED_REFRESH_S, Ledger, default_path, new_id, scrub
from ._limits import CHANNEL, Grant, LimitStore, Pause, limit_store
from ._migrations import MIGRATIONS, PG_MIGRATIONS, migrate, migrate_postgres
from ._pg import Row, is_url, mask
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
from ._reads import (
    EVAL_SQL,
    FinetuneEvent,
    FinetuneJobRecord,
    StoredDocument,
    TrainingRow,
    UnfinishedExtraction,
)

__all__ = [
    "CHANNEL",
    "DEFAULT_PATH",
    "DOCUMENT_ERRORS",
    "ENV_VAR",
    "EVAL_SQL",
    "MIGRATIONS",
    "PAIRS_CUT",
    "PG_MIGRATIONS",
    "POSTGRES",
    "SERVED_REFRESH_S",
    "SQLITE",
    "TIERS_IN",
    "VERSION_PAIRS",
    "VERSION_STATS",
    "VERSION_STATS_CURRENT",
    "ClaimedJob",
    "Dialect",
    "FinetuneEvent",
    "FinetuneJobRecord",
    "EnqueueCounts",
    "Finished",
    "Ledger",
    "QueuedDocument",
    "Grant",
    "Ledger",
    "LimitStore",
    "Pause",
    "RecordingLedger",
    "Row",
    "StoredDocument",
    "TrainingRow",
    "UnfinishedExtraction",
    "WorkQueue",
    "default_path",
    "field_failures_sql",
    "is_url",
    "limit_store",
    "mask",
    "migrate",
    "migrate_postgres",
    "new_id",
    "scrub",
]
