"""The extractkit command line (a thin layer over the library): one module per verb group."""

from . import _report  # noqa: F401  (registers `report`)
from ._app import app, main

__all__ = ["app", "main"]
