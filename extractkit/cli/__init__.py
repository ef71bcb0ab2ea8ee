"""The extractkit command line (a thin layer over the library): one module per verb group."""

from . import _eval, _report  # noqa: F401  (register `report`, `eval`, `gold`)
from ._app import app, main

__all__ = ["app", "main"]
