"""The ledger: SQLite tables of runs, documents, extractions and attempts."""

from ._ledger import DEFAULT_PATH, ENV_VAR, Ledger, default_path, new_id, scrub
from ._migrations import MIGRATIONS, migrate

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "MIGRATIONS",
    "Ledger",
    "default_path",
    "migrate",
    "new_id",
    "scrub",
]
