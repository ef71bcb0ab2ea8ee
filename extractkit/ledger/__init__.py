"""The ledger: SQLite tables of runs, documents, extractions and attempts."""

from . import _report_rollups as rollup_queries
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

__all__ = [
    "DEFAULT_PATH",
    "DOCUMENT_ERRORS",
    "ENV_VAR",
    "MIGRATIONS",
    "NOT_GONE",
    "ROLLUP_HOUR",
    "ROLLUP_RATIO",
    "PAIRS_CUT",
    "SERVED_REFRESH_S",
    "TIERS_IN",
    "VERSION_PAIRS",
    "VERSION_STATS",
    "VERSION_STATS_CURRENT",
    "Ledger",
    "RecordingLedger",
    "default_path",
    "ensure_rollups",
    "field_failures_sql",
    "migrate",
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
