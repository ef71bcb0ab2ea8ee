"""The grounding guard: values that must occur in the source document.

Mark a field ``Annotated[str, Grounded()]`` (or a number, a date, or a list of those). While the
extractor validates a model answer, the document is the *current source* (a context variable set
around the call, so it is not handed to instructor as a template context, which would run the
document through Jinja2); a value that does not occur in it fails validation with error type
``ungrounded`` — which re-asks and escalates like any other validation failure. Outside
extraction the check is skipped, so the same model validates stored data normally; to check
stored data against a text, validate with ``context={"source_text": text}`` or inside
``with grounding_source(text):``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import GetCoreSchemaHandler, ValidationInfo
from pydantic_core import PydanticCustomError, core_schema

SOURCE_KEY = "source_text"
_INDEX_KEY = "_extractkit_grounding_index"

_NUMBER = re.compile(r"\d{1,3}(?:[.,'\u00a0\u202f ]\d{3})+(?:[.,]\d+)?|\d+(?:[.,]\d+)?")
_WS = re.compile(r"\s+")
_DATE_FORMATS = (
    "%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%d.%m.%Y", "%d/%m/%Y", "%d-%m-%Y", "%m/%d/%Y",
    "%m-%d-%Y", "%d.%m.%y", "%d/%m/%y", "%m/%d/%y", "%d %B %Y", "%d %b %Y", "%B %d, %Y",
    "%b %d, %Y", "%B %d %Y", "%b %d %Y", "%d-%b-%Y", "%d %b, %Y", "%Y%m%d",
)  # fmt: skip


def normalize_text(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold()


def number_readings(token: str) -> set[Decimal]:
    """Every number a token like '1,249.50', '1.249,50', '1 249,50' or '4,11' can mean."""
    token = token.replace("\u00a0", " ").replace("\u202f", " ").replace("'", " ")
    readings: set[str] = set()
    if "." in token and "," in token:
        dec = "." if token.rfind(".") > token.rfind(",") else ","
        grp = "," if dec == "." else "."
        readings.add(token.replace(" ", "").replace(grp, "").replace(dec, "."))
    else:
        plain = token.replace(" ", "")
        for sep in (",", "."):
            if sep in plain:
                parts = plain.split(sep)
                if all(len(p) == 3 for p in parts[1:]):
                    readings.add(plain.replace(sep, ""))  # thousands separator
                if len(parts) == 2:
                    readings.add(parts[0] + "." + parts[1])  # decimal separator
                break
        else:
            readings.add(plain)
    out: set[Decimal] = set()
    for r in readings:
        try:
            out.add(Decimal(r).normalize())
        except InvalidOperation:
            continue
    return out


class SourceIndex:
    """A document prepared once for many grounding checks."""

    def __init__(self, text: str):
        self.text = normalize_text(text)
        self.compact = self.text.replace(" ", "")
        self.numbers: set[Decimal] = set()
        for match in _NUMBER.finditer(text):
            self.numbers |= number_readings(match.group(0))

    def has_text(self, value: str) -> bool:
        needle = normalize_text(value)
        if not needle:
            return True
        return needle in self.text or needle.replace(" ", "") in self.compact

    def has_number(self, value: float | int | Decimal) -> bool:
        try:
            d = abs(Decimal(str(value))).normalize()
        except InvalidOperation:
            return False
        return d in self.numbers

    def has_date(self, value: dt.date) -> bool:
        for fmt in _DATE_FORMATS:
            rendered = value.strftime(fmt)
            candidates = {rendered, re.sub(r"\b0(\d)", r"\1", rendered)}
            if any(self.has_text(c) for c in candidates):
                return True
        return False

    def contains(self, value: Any) -> bool:
        if value is None:
            return True
        if isinstance(value, bool):
            return True
        if isinstance(value, (list, tuple, set)):
            return all(self.contains(v) for v in value)
        if isinstance(value, dt.datetime):
            return self.has_date(value.date())
        if isinstance(value, dt.date):
            return self.has_date(value)
        if isinstance(value, (int, float, Decimal)):
            return self.has_number(value)
        return self.has_text(str(value))


_CURRENT: ContextVar[SourceIndex | None] = ContextVar("extractkit_grounding_source", default=None)


@contextmanager
def grounding_source(text: str) -> Iterator[SourceIndex]:
    """Validate Grounded fields against ``text`` inside this block (indexed once)."""
    index = SourceIndex(text)
    token = _CURRENT.set(index)
    try:
        yield index
    finally:
        _CURRENT.reset(token)


def check_grounded(value: Any, info: ValidationInfo) -> Any:
    context = info.context
    index: SourceIndex | None
    if isinstance(context, dict) and isinstance(context.get(SOURCE_KEY), str):
        found = context.get(_INDEX_KEY)
        index = found if isinstance(found, SourceIndex) else SourceIndex(context[SOURCE_KEY])
        context[_INDEX_KEY] = index
    else:
        index = _CURRENT.get()
    if index is None:
        return value
    if not index.contains(value):
        raise PydanticCustomError(
            "ungrounded",
            "value {value} does not occur in the document; copy it from the document "
            "or use null if it is not there",
            {"value": repr(value)[:200]},
        )
    return value


class Grounded:
    """Marks a field whose value must occur in the source text: ``Annotated[str, Grounded()]``."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(check_grounded, handler(source))

    def __repr__(self) -> str:
        return "Grounded()"
