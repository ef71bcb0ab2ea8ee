"""The CLI's consoles and log records pass the redaction boundary (``extractkit._redact``)."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.segment import Segment
from rich.text import Text

from .._redact import RedactingFilter, redact


class RedactingConsole(Console):
    """A rich Console that prints nothing a provider echoed back of a key: strings are redacted
    before they are laid out (a wrapped line cannot split a key past the redaction), and the
    rendered text is redacted again before it is written (renderables built elsewhere, such as
    ``Text`` objects and tables)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "soft_wrap" not in kwargs and not self.is_terminal:
            # written to a file or a pipe: one message, one line (grep, log parsers); a terminal
            # wraps long lines itself. Tables keep their width.
            self.soft_wrap = True

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(redact(text), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        return redact(super()._render_buffer(buffer))


def install_log_redaction() -> None:
    """Log records the CLI's process prints (Python's last-resort handler and any handler on the
    root logger) are redacted too, and so is the traceback of an exception nothing caught."""
    handlers = [logging.lastResort, *logging.getLogger().handlers]
    for h in handlers:
        if h is not None and not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
    if sys.excepthook is sys.__excepthook__:  # an application's own hook is left alone
        sys.excepthook = _redacting_excepthook


def _redacting_excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))
