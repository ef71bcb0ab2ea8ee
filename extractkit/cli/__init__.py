"""The extractkit command line (a thin layer over the library): one module per verb group."""

from . import _batch, _eval, _finetune, _init, _report, _work  # noqa: F401  (register their commands)
from ._app import app, main

__all__ = ["app", "main"]
