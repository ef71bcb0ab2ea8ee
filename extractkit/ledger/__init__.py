"""The ledger: SQLite tables of runs, documents, extractions and attempts."""

from ._ledger import DEFAULT_PATH, ENV_VAR, SERVED_REFRESH_S, Ledger, default_path, new_id, scrub
from ._limits import CHANNEL, Grant, LimitStore, Pause
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

__all__ = [
    "CHANNEL",
    "DEFAULT_PATH",
    "DOCUMENT_ERRORS",
    "ENV_VAR",
    "Grant",
    "MIGRATIONS",
    "PAIRS_CUT",
    "Pause",
    "SERVED_REFRESH_S",
    "TIERS_IN",
    "VERSION_PAIRS",
    "VERSION_STATS",
    "VERSION_STATS_CURRENT",
    "Ledger",
    "LimitStore",
    "RecordingLedger",
    "default_path",
    "field_failures_sql",
    "migrate",
    "new_id",
    "scrub",
]
