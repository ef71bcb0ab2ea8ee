"""The ledger: SQLite tables of runs, documents, extractions and attempts."""

from ._ledger import DEFAULT_PATH, ENV_VAR, Ledger, default_path, new_id, scrub
from ._migrations import MIGRATIONS, migrate
from ._protocol import RecordingLedger

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "MIGRATIONS",
    "Ledger",
    "RecordingLedger",
    "default_path",
    "migrate",
    "new_id",
    "scrub",
]
