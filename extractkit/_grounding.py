"""The grounding guard: values that must occur in the source document.

Mark a field ``Annotated[str, Grounded()]`` (or a number, a date, or a list of those). While the
extractor validates a model answer, the document is the *current source* (a context variable set
around the call, so it is not handed to instructor as a template context, which would run the
document through Jinja2); a value that does not occur in it fails validation with error type
``ungrounded`` and a message naming the field and the value ("date 2014-05-08 not found in the
document") — which re-asks and escalates like any other validation failure. Outside
extraction the check is skipped, so the same model validates stored data normally; to check
stored data against a text, validate with ``context={"source_text": text}`` or inside
``with grounding_source(text):``.

What counts as occurring:

- text: the value's letters and digits, in order, case-insensitive, with whitespace and
  punctuation ignored ("Coolblue BV" against "Coolblue B.V.") and a company's legal form
  written out or abbreviated ("spółka akcyjna" / "S.A.", "Limited" / "Ltd.", ``LEGAL_FORMS``);
- numbers: any reading of a number in the text ("1.249,50", "1,249.50", "1 249,50");
- dates: any date written in the text, found once per document: numeric ("7.5.2014",
  "07/05/14", "2014-05-07", "20140507"; day-month and month-day both read), or with a month
  name in any of ``MONTH_LOCALES`` (CLDR's names via babel, format and stand-alone, wide and
  abbreviated: "7. Mai 2014", "29 maart 2014", "02 Juillet 2015", "7 de mayo de 2014",
  "7 maja 2014", "May 7th, 2014", "7th May 2014", "2014. május 7.").
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import typing
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import GetCoreSchemaHandler, ValidationInfo
from pydantic_core import PydanticCustomError, core_schema

SOURCE_KEY = "source_text"
_INDEX_KEY = "_extractkit_grounding_index"

_NUMBER = re.compile(r"\d{1,3}(?:[.,'\u00a0\u202f ]\d{3})+(?:[.,]\d+)?|\d+(?:[.,]\d+)?")
_WS = re.compile(r"\s+")
_NOT_ALNUM = re.compile(r"[\W_]+")

# Languages whose month names ground dates (CLDR data through babel, read once per process).
# Names shared by two languages for different months (Polish "listopad" is November, Croatian
# October) ground both readings.
MONTH_LOCALES = (
    "en", "en_GB", "de", "nl", "fr", "es", "it", "pt", "ca", "gl", "eu", "pl", "cs", "sk", "sl",
    "hr", "bs", "sr_Latn", "hu", "ro", "sv", "da", "nb", "nn", "is", "fi", "et", "lv", "lt", "tr",
    "sq", "mt", "ga", "lb", "el", "ru", "uk", "bg",
)  # fmt: skip

# A company's legal form written out -> the abbreviation it is compared as (after punctuation and
# whitespace are dropped, "B.V." and "BV" are already the same).
LEGAL_FORMS = {
    "aktiengesellschaft": "ag",
    "besloten vennootschap": "bv",
    "naamloze vennootschap": "nv",
    "gesellschaft mit beschränkter haftung": "gmbh",
    "kommanditgesellschaft": "kg",
    "société anonyme": "sa",
    "sociedad anónima": "sa",
    "sociedade anónima": "sa",
    "sociedade anônima": "sa",
    "spółka akcyjna": "sa",
    "spółka z ograniczoną odpowiedzialnością": "spzoo",
    "société à responsabilité limitée": "sarl",
    "società a responsabilità limitata": "srl",
    "società per azioni": "spa",
    "sociedad limitada": "sl",
    "public limited company": "plc",
    "limited liability company": "llc",
    "limited": "ltd",
    "incorporated": "inc",
    "corporation": "corp",
    "company": "co",
}
_LEGAL = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, LEGAL_FORMS), key=len, reverse=True)) + r")\b")

# Date candidates, scanned once per document over its normalised text (casefolded, single
# spaces), one pattern at a time; a month word is confirmed against the month table, every
# reading against the calendar. The named forms look ahead (matches may overlap: in "du 1er au
# 31 juillet 2015", "1er au 31" must not hide "31 juillet 2015").
_ORD = r"(?:(?:st|nd|rd|th|er|re|ème|eme|e|º|ª|°|o|a)(?![^\W\d_]))?"
_DMY = re.compile(  # 7. mai 2014, 29 maart 2014, 7th may 2014, 7 de mayo de 2014, 7-may-14
    rf"(?=(?<![\d.,])(\d{{1,2}}){_ORD}\.?[\s,/-]*(?:(?:de|del)\s+|d['’]\s?)?"
    r"([^\W\d_]{2,})\.?[\s,/-]*(?:(?:de|del)\s+)?(\d{4}|\d{2})(?!\d))"
)
_DAY_YEAR = re.compile(  # the "7th, 2014" of "may 7th, 2014"; the month word is read just before it
    rf"(?<![\d.,])(\d{{1,2}}){_ORD}(?!\d)[\s,.-]*(\d{{4}})(?!\d)"
)
_WORD_BEFORE = re.compile(r"([^\W\d_]{2,})\.?[\s,-]*\Z")
_YMD = re.compile(  # 2014. május 7., 2014 m. gegužės 7 d.
    r"(?<![\d.,])(\d{4})\.?\s*(?:m\.\s*)?([^\W\d_]{2,})\.?\s*(\d{1,2})(?!\d)"
)
_NUMERIC = re.compile(  # 7.5.2014, 07/05/14, 2014-05-07, 2014/5/7, 7. 5. 2014
    r"(?<![\d.,])(\d{1,4})\s?([./-])\s?(\d{1,2})\s?\2\s?(\d{4}|\d{1,2})(?!\d)"
)
_CJK = re.compile(r"(\d{4})\s?[年년]\s?(\d{1,2})\s?[月월]\s?(\d{1,2})")  # 2014年5月7日
_COMPACT = re.compile(r"(?<![\d.,])((?:19|20)\d\d)(\d\d)(\d\d)(?!\d)")  # 20140507


def normalize_text(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def alnum_form(normalized: str) -> str:
    """Letters and digits only, legal forms abbreviated: what text values are compared as."""
    return _NOT_ALNUM.sub("", _LEGAL.sub(lambda m: LEGAL_FORMS[m.group(0)], normalized))


@functools.cache
def month_names() -> dict[str, frozenset[int]]:
    """Month name (casefolded, without dots or a leading "de"/"d'") -> the months it names, from
    CLDR for every locale in MONTH_LOCALES. Built once per process (about 0.15 s)."""
    from babel import Locale

    table: dict[str, set[int]] = {}
    for name in MONTH_LOCALES:
        months = Locale.parse(name).months
        for context in ("format", "stand-alone"):
            for width in ("wide", "abbreviated"):
                for number, word in months[context][width].items():
                    key = _month_key(word)
                    if len(key) >= 2 and " " not in key:
                        table.setdefault(key, set()).add(number)
    return {k: frozenset(v) for k, v in table.items()}


def _month_key(word: str) -> str:
    key = unicodedata.normalize("NFKC", word).casefold().strip().rstrip(".")
    for prefix in ("de ", "d’", "d'"):
        key = key.removeprefix(prefix)
    return key


def _year(text: str) -> int:
    y = int(text)
    if len(text) == 2:  # as strptime's %y reads it
        y += 2000 if y < 69 else 1900
    return y


def _add(out: set[dt.date], y: int, m: int, d: int) -> None:
    with suppress(ValueError):  # not a day of the calendar
        out.add(dt.date(y, m, d))


def dates_in(normalized: str) -> set[dt.date]:
    """Every date the (normalised) text can be read as writing; linear in the text."""
    months = month_names()
    out: set[dt.date] = set()
    for day, word, year in set(_DMY.findall(normalized)):
        for m in months.get(_month_key(word), ()):
            _add(out, _year(year), m, int(day))
    seen: set[tuple[str, str, str]] = set()
    for match in _DAY_YEAR.finditer(normalized):
        start = match.start()
        before = _WORD_BEFORE.search(normalized, max(0, start - 40), start)
        if before is not None and (key := (before.group(1), match.group(1), match.group(2))) not in seen:
            seen.add(key)
            for m in months.get(_month_key(key[0]), ()):
                _add(out, int(key[2]), m, int(key[1]))
    for year, word, day in set(_YMD.findall(normalized)):
        for m in months.get(_month_key(word), ()):
            _add(out, int(year), m, int(day))
    for a, _sep, b, c in set(_NUMERIC.findall(normalized)):
        if len(a) == 4:
            _add(out, int(a), int(b), int(c))
        elif len(a) <= 2 and len(c) in (2, 4):
            _add(out, _year(c), int(b), int(a))  # day first
            _add(out, _year(c), int(a), int(b))  # month first
    for pattern in (_CJK, _COMPACT):
        for y, m, d in set(pattern.findall(normalized)):
            _add(out, int(y), int(m), int(d))
    return out


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
    """A document prepared once for many grounding checks: each form of the text is built on
    first use (a schema without dates never scans for them), every check is then a substring
    search or a set lookup."""

    def __init__(self, text: str):
        self.source = text
        self.text = normalize_text(text)

    @functools.cached_property
    def alnum(self) -> str:
        return alnum_form(self.text)

    @functools.cached_property
    def numbers(self) -> set[Decimal]:
        out: set[Decimal] = set()
        for token in set(_NUMBER.findall(self.source)):
            out |= number_readings(token)
        return out

    @functools.cached_property
    def dates(self) -> set[dt.date]:
        return dates_in(self.text)

    def has_text(self, value: str) -> bool:
        needle = normalize_text(value)
        if not needle or needle in self.text:
            return True
        compact = alnum_form(needle)
        return bool(compact) and compact in self.alnum

    def has_number(self, value: float | int | Decimal) -> bool:
        try:
            d = abs(Decimal(str(value))).normalize()
        except InvalidOperation:
            return False
        return d in self.numbers

    def has_date(self, value: dt.date) -> bool:
        return value in self.dates

    def missing(self, value: Any) -> tuple[Any, ...]:
        """The first part of ``value`` that does not occur in the text, as a 1-tuple; () when
        all of it does."""
        if value is None or isinstance(value, bool):
            return ()
        if isinstance(value, (list, tuple, set, frozenset)):
            for v in value:
                gap = self.missing(v)
                if gap:
                    return gap
            return ()
        if isinstance(value, dt.datetime):
            found = self.has_date(value.date())
        elif isinstance(value, dt.date):
            found = self.has_date(value)
        elif isinstance(value, (int, float, Decimal)):
            found = self.has_number(value)
        else:
            found = self.has_text(str(value))
        return () if found else (value,)

    def contains(self, value: Any) -> bool:
        return not self.missing(value)


_CURRENT: ContextVar[SourceIndex | None] = ContextVar("extractkit_grounding_source", default=None)


@contextmanager
def grounding_source(text: str | SourceIndex) -> Iterator[SourceIndex]:
    """Validate Grounded fields against ``text`` inside this block (indexed once; an index
    already built is used as it is)."""
    index = text if isinstance(text, SourceIndex) else SourceIndex(text)
    token = _CURRENT.set(index)
    try:
        yield index
    finally:
        _CURRENT.reset(token)


def shown(value: Any, limit: int = 120) -> str:
    """A value as an ungrounded message names it: dates in ISO form, numbers plain, text quoted."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return str(value)
    text = repr(str(value)) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


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
    gap = index.missing(value)
    if gap:
        raise PydanticCustomError(
            "ungrounded",
            "{field} {value} not found in the document",
            {"field": info.field_name or "value", "value": shown(gap[0])},
        )
    return value


def _mentions_date(tp: Any) -> bool:
    if isinstance(tp, type) and issubclass(tp, dt.date):
        return True
    return any(_mentions_date(arg) for arg in typing.get_args(tp))


class Grounded:
    """Marks a field whose value must occur in the source text: ``Annotated[str, Grounded()]``."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        if _mentions_date(source):
            month_names()  # read the month tables now, while the schema is built, not on the event loop
        return core_schema.with_info_after_validator_function(check_grounded, handler(source))

    def __repr__(self) -> str:
        return "Grounded()"
