"""The ledger: runs, documents, extractions and attempts, in SQLite or PostgreSQL (one ``Ledger``)."""

from . import _report_rollups as rollup_queries
from ._dialect import POSTGRES, SQLITE, Dialect
from ._ledger import DEFAULT_PATH, ENV_VAR, SERVED_REFRESH_S, Ledger, default_path, new_id, scrub
from ._ledger import _refuse_other_databases as refuse_other_databases
from ._limits import CHANNEL, Grant, LimitStore, Pause, limit_store
from ._migrations import MIGRATIONS, PG_MIGRATIONS, migrate, migrate_postgres
from ._outage import OUTAGE_LIMIT_S, Outage, ResilientLedger, is_transient
from ._pg import Row, is_url, mask
from ._protocol import RecordingLedger
from ._queries import (
    DOCUMENT_ERRORS,
    DOCUMENT_SOURCES,
    DOCUMENT_SOURCES_LOW,
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
    ReviewDocument,
    StoredDocument,
    TrainingRow,
    UnfinishedExtraction,
)
from ._rollups import HOUR as ROLLUP_HOUR
from ._rollups import NOT_GONE
from ._rollups import RATIO as ROLLUP_RATIO
from ._rollups import bucket as rollup_bucket
from ._rollups import ensure as ensure_rollups
from ._rollups import field_errors as rollup_field_errors
from ._rollups import hour_of as rollup_hour_of
from ._rollups import json_value as rollup_json_value
from ._rollups import loc_value as rollup_loc_value
from ._rollups import rebuild as rebuild_rollups
from ._waves import (
    BatchItem,
    BatchJob,
    ItemOutcome,
    NewBatchItem,
    NewBatchJob,
    WaveRow,
    attempts_from_json,
    attempts_to_json,
)

__all__ = [
    "OUTAGE_LIMIT_S",
    "Outage",
    "ResilientLedger",
    "is_transient",
    "CHANNEL",
    "DEFAULT_PATH",
    "DOCUMENT_ERRORS",
    "DOCUMENT_SOURCES",
    "DOCUMENT_SOURCES_LOW",
    "ENV_VAR",
    "EVAL_SQL",
    "MIGRATIONS",
    "NOT_GONE",
    "ROLLUP_HOUR",
    "ROLLUP_RATIO",
    "PAIRS_CUT",
    "PG_MIGRATIONS",
    "POSTGRES",
    "SERVED_REFRESH_S",
    "SQLITE",
    "TIERS_IN",
    "VERSION_PAIRS",
    "VERSION_STATS",
    "VERSION_STATS_CURRENT",
    "BatchItem",
    "BatchJob",
    "ClaimedJob",
    "Dialect",
    "FinetuneEvent",
    "FinetuneJobRecord",
    "ItemOutcome",
    "EnqueueCounts",
    "Finished",
    "Ledger",
    "NewBatchItem",
    "NewBatchJob",
    "QueuedDocument",
    "Grant",
    "Ledger",
    "LimitStore",
    "Pause",
    "RecordingLedger",
    "ReviewDocument",
    "Row",
    "StoredDocument",
    "TrainingRow",
    "UnfinishedExtraction",
    "WaveRow",
    "WorkQueue",
    "attempts_from_json",
    "attempts_to_json",
    "default_path",
    "ensure_rollups",
    "field_failures_sql",
    "is_url",
    "refuse_other_databases",
    "limit_store",
    "mask",
    "migrate",
    "migrate_postgres",
    "new_id",
    "rebuild_rollups",
    "rollup_bucket",
    "rollup_field_errors",
    "rollup_hour_of",
    "rollup_json_value",
    "rollup_loc_value",
    "rollup_queries",
    "scrub",
]
