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

import bisect
import collections.abc
import datetime as dt
import functools
import re
import types
import typing
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, GetCoreSchemaHandler, ValidationInfo
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


# -- where each value was found: spans in the original text ---------------------------------------
#
# Grounding compares normalised forms (NFKC, whitespace collapsed, casefolded; then letters and
# digits only, legal forms abbreviated). A span is found in a normalised form, then mapped back to
# the original text through the maps below, each from one form to the one before it; numbers are
# found in the original text itself. Computed for the final value only (``spans_for``), never
# while validating.

MAX_SPANS = 20  # occurrences kept per value


@dataclass(frozen=True)
class Span:
    """Where a value was found: ``text[start:end]`` of the document's text (as written there:
    "1.249,50", "7. Mai 2014", "Coolblue B.V"), and its page (1-based; None without pages)."""

    start: int
    end: int
    page: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {"start": self.start, "end": self.end, "page": self.page}


class _Map:
    """Positions of a derived string -> ranges of the string it was derived from, piecewise: a
    *linear* piece maps character k to character ``src + k`` (an unchanged stretch), any other
    piece maps each of its characters to the whole source range ``[src, src_end)`` (a composed
    character, a whitespace run, a written-out legal form)."""

    __slots__ = ("_starts", "_pieces")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._pieces: list[tuple[int, int, bool]] = []  # (src, src_end, linear)

    def add(self, dst: int, src: int, src_end: int, linear: bool) -> None:
        self._starts.append(dst)
        self._pieces.append((src, src_end, linear))

    def range_of(self, pos: int) -> tuple[int, int]:
        i = bisect.bisect_right(self._starts, pos) - 1
        src, src_end, linear = self._pieces[i]
        if linear:
            at = src + pos - self._starts[i]
            return at, at + 1
        return src, src_end

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The source range of the derived characters ``[start, end)`` (end > start)."""
        return self.range_of(start)[0], self.range_of(end - 1)[1]


def _linear(n: int) -> _Map:
    m = _Map()
    m.add(0, 0, n, True)
    return m


_ASCII_OR_GROUP = re.compile(r"(?:[\x00-\x7f](?![^\x00-\x7f]))+|[\x00-\x7f]?[^\x00-\x7f]+")


def _nfkc_map(text: str) -> tuple[str, _Map]:
    """NFKC of ``text`` and its map. ASCII is left as it is by NFKC (and nothing composes with an
    ASCII character that follows): only the non-ASCII groups (with the ASCII character before them,
    which a combining mark may compose with) are normalised, one character and its combining marks
    at a time, or as a whole group when composition crosses characters (Hangul jamo)."""
    if text.isascii():
        return text, _linear(len(text))
    m, out, pos = _Map(), [], 0
    for match in _ASCII_OR_GROUP.finditer(text):
        s, e = match.span()
        group = match.group()
        if group.isascii():
            m.add(pos, s, e, True)
            out.append(group)
            pos += e - s
            continue
        whole = unicodedata.normalize("NFKC", group)
        clusters: list[tuple[str, int, int]] = []
        start = s
        for k in range(s + 1, e + 1):
            if k == e or not unicodedata.combining(text[k]):
                clusters.append((unicodedata.normalize("NFKC", text[start:k]), start, k))
                start = k
        if "".join(c for c, _, _ in clusters) != whole:
            rest = unicodedata.normalize("NFKC", group[1:])
            if group[0].isascii() and group[0] + rest == whole:  # the ASCII character before stays apart
                clusters = [(group[0], s, s + 1), (rest, s + 1, e)]
            else:
                clusters = [(whole, s, e)]
        for piece, cs, ce in clusters:
            if piece:
                m.add(pos, cs, ce, piece == text[cs:ce] and len(piece) == ce - cs)
                out.append(piece)
                pos += len(piece)
    return "".join(out), m


_WS_RUN = re.compile(r"\s{2,}")


def _ws_map(text: str) -> tuple[str, _Map]:
    """``_WS.sub(" ", text).strip()`` and its map: a run of whitespace becomes one space. A single
    whitespace character keeps its position, so only runs of two or more make pieces (a text of
    single spaces and newlines is one linear piece)."""
    lead = len(text) - len(text.lstrip())
    end = len(text.rstrip())
    m, pos, last = _Map(), 0, lead
    for match in _WS_RUN.finditer(text, lead, end):
        s, e = match.span()
        if s > last:
            m.add(pos, last, s, True)
            pos += s - last
        m.add(pos, s, e, False)
        pos += 1
        last = e
    if end > last:
        m.add(pos, last, end, True)
    return _WS.sub(" ", text[lead:end]), m


def _casefold_map(text: str) -> tuple[str, _Map]:
    if text.isascii():
        return text.lower(), _linear(len(text))
    m, out, pos = _Map(), [], 0
    for match in re.finditer(r"[\x00-\x7f]+|[^\x00-\x7f]", text):
        s, e = match.span()
        piece = match.group().casefold()
        m.add(pos, s, e, len(piece) == e - s)
        out.append(piece)
        pos += len(piece)
    return "".join(out), m


def _sub_map(pattern: re.Pattern[str], repl: Any, text: str) -> tuple[str, _Map]:
    """``pattern.sub(repl, text)`` and its map (``repl``: a function of the match)."""
    m, out, pos, last = _Map(), [], 0, 0
    for match in pattern.finditer(text):
        s, e = match.span()
        if s > last:
            m.add(pos, last, s, True)
            out.append(text[last:s])
            pos += s - last
        new = repl(match)
        if new:
            m.add(pos, s, e, False)
            out.append(new)
            pos += len(new)
        last = e
    if len(text) > last:
        m.add(pos, last, len(text), True)
        out.append(text[last:])
    return "".join(out), m


class _Forms:
    """A document's normalised forms with the maps back to its original text, built on first use."""

    def __init__(self, text: str):
        self.source = text
        nfkc, self._m1 = _nfkc_map(text)
        spaced, self._m2 = _ws_map(nfkc)
        self.text, self._m3 = _casefold_map(spaced)

    def to_source(self, start: int, end: int) -> tuple[int, int]:
        """A range of the normalised text -> the range of the original text it was made from."""
        for m in (self._m3, self._m2, self._m1):
            start, end = m.span(start, end)
        return start, end

    @functools.cached_property
    def _alnum(self) -> tuple[str, _Map, _Map]:
        legal, m_legal = _sub_map(_LEGAL, lambda x: LEGAL_FORMS[x.group(0)], self.text)
        alnum, m_alnum = _sub_map(_NOT_ALNUM, lambda x: "", legal)
        return alnum, m_alnum, m_legal

    def alnum_to_source(self, start: int, end: int) -> tuple[int, int]:
        _, m_alnum, m_legal = self._alnum
        start, end = m_alnum.span(start, end)
        return self.to_source(*m_legal.span(start, end))

    @functools.cached_property
    def numbers(self) -> dict[Decimal, list[tuple[int, int]]]:
        out: dict[Decimal, list[tuple[int, int]]] = {}
        readings: dict[str, set[Decimal]] = {}  # a token written many times ("1") is read once
        for match in _NUMBER.finditer(self.source):
            token = match.group()
            found_in = readings.get(token)
            if found_in is None:
                found_in = readings[token] = number_readings(token)
            for d in found_in:
                found = out.setdefault(d, [])
                if len(found) < MAX_SPANS:
                    found.append(match.span())
        return out

    @functools.cached_property
    def dates(self) -> dict[dt.date, list[tuple[int, int]]]:
        out: dict[dt.date, list[tuple[int, int]]] = {}
        for date, s, e in date_matches(self.text):
            found = out.setdefault(date, [])
            if len(found) < MAX_SPANS and (s, e) not in found:
                found.append((s, e))
        return {d: [self.to_source(s, e) for s, e in sorted(v)] for d, v in out.items()}

    def text_spans(self, value: str) -> list[tuple[int, int]]:
        needle = normalize_text(value)
        if not needle:
            return []
        found = _occurrences(self.text, needle)
        if found:
            return [self.to_source(s, e) for s, e in found]
        compact = alnum_form(needle)
        if not compact:
            return []
        return [self.alnum_to_source(s, e) for s, e in _occurrences(self._alnum[0], compact)]

    def spans(self, value: Any) -> list[tuple[int, int]]:
        """Where ``value`` (one scalar) occurs, as grounding reads it; [] when it does not."""
        if value is None or isinstance(value, bool):
            return []
        if isinstance(value, dt.datetime):
            return self.dates.get(value.date(), [])
        if isinstance(value, dt.date):
            return self.dates.get(value, [])
        if isinstance(value, (int, float, Decimal)):
            try:
                d = abs(Decimal(str(value))).normalize()
            except InvalidOperation:
                return []
            return self.numbers.get(d, [])
        return self.text_spans(str(value))


def _occurrences(haystack: str, needle: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    at = haystack.find(needle)
    while at >= 0 and len(out) < MAX_SPANS:
        out.append((at, at + len(needle)))
        at = haystack.find(needle, at + len(needle))
    return out


def date_matches(normalized: str) -> Iterator[tuple[dt.date, int, int]]:
    """Every date the (normalised) text writes, with where it is written: what ``dates_in`` reads,
    one match at a time (the same patterns and the same readings)."""
    months = month_names()
    for match in _DMY.finditer(normalized):
        day, word, year = match.groups()
        for m in months.get(_month_key(word), ()):
            yield from _dated(_year(year), m, int(day), match.start(1), match.end(3))
    for match in _DAY_YEAR.finditer(normalized):
        start = match.start()
        before = _WORD_BEFORE.search(normalized, max(0, start - 40), start)
        if before is not None:
            for m in months.get(_month_key(before.group(1)), ()):
                yield from _dated(int(match.group(2)), m, int(match.group(1)), before.start(1), match.end(2))
    for match in _YMD.finditer(normalized):
        year, word, day = match.groups()
        for m in months.get(_month_key(word), ()):
            yield from _dated(int(year), m, int(day), match.start(1), match.end(3))
    for match in _NUMERIC.finditer(normalized):
        a, _sep, b, c = match.groups()
        s, e = match.start(1), match.end(4)
        if len(a) == 4:
            yield from _dated(int(a), int(b), int(c), s, e)
        elif len(a) <= 2 and len(c) in (2, 4):
            yield from _dated(_year(c), int(b), int(a), s, e)
            yield from _dated(_year(c), int(a), int(b), s, e)
    for pattern in (_CJK, _COMPACT):
        for match in pattern.finditer(normalized):
            y, mo, d = match.groups()
            yield from _dated(int(y), int(mo), int(d), match.start(1), match.end(3))


def _dated(y: int, m: int, d: int, s: int, e: int) -> Iterator[tuple[dt.date, int, int]]:
    with suppress(ValueError):
        yield dt.date(y, m, d), s, e


def _grounded_here(annotation: Any) -> bool:
    """Whether ``annotation`` itself (through Optional / Annotated, not into a list) is Grounded."""
    if typing.get_origin(annotation) is typing.Annotated:
        if any(isinstance(m, Grounded) for m in annotation.__metadata__):
            return True
        return _grounded_here(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_grounded_here(a) for a in typing.get_args(annotation))
    return False


def _element(annotation: Any) -> Any:
    """The element annotation of a list / tuple / set annotation (through Optional / Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _element(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(annotation):
            if (el := _element(a)) is not None:
                return el
        return None
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return args[0] if args else None
    return None


@functools.cache
def has_grounded(model: type[BaseModel]) -> bool:
    """Whether ``model`` (or a model inside it) has a Grounded field: spans_for has work to do."""

    def mentions(ann: Any, seen: frozenset[type]) -> bool:
        if _grounded_here(ann):
            return True
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return ann not in seen and any(
                any(isinstance(x, Grounded) for x in f.metadata) or mentions(f.annotation, seen | {ann})
                for f in ann.model_fields.values()
            )
        return any(mentions(a, seen) for a in typing.get_args(ann) if a is not Ellipsis)

    return mentions(model, frozenset())


def spans_for(value: BaseModel, text: str, pages: Sequence[Any] = ()) -> dict[str, list[Span]]:
    """For every grounded value of ``value`` (a validated model), the spans of ``text`` where it
    occurs, as the grounding guard found it (at most ``MAX_SPANS`` each), keyed by the field's path:
    ``"total"``, ``"items[3].sku"``. A grounded value found nowhere gets [] (it was not validated
    against this text); None values are left out. ``pages`` (``_pages.Page``) give each span's
    page. Linear in the text; run it off the event loop for a big document."""
    out: dict[str, list[tuple[int, int]]] = {}
    if has_grounded(type(value)):
        forms = _Forms(text)
        _walk_model(value, "", forms, out)
    from ._pages import page_of

    return {path: [Span(s, e, page_of(pages, s)) for s, e in found] for path, found in out.items()}


def _walk_model(model: BaseModel, prefix: str, forms: _Forms, out: dict[str, list[tuple[int, int]]]) -> None:
    for name, info in type(model).model_fields.items():
        grounded = any(isinstance(m, Grounded) for m in info.metadata)
        _visit(getattr(model, name, None), info.annotation, prefix + name, grounded, forms, out)


def _visit(value: Any, annotation: Any, path: str, grounded: bool, forms: _Forms,
           out: dict[str, list[tuple[int, int]]]) -> None:  # fmt: skip
    if value is None:
        return
    grounded = grounded or _grounded_here(annotation)
    if isinstance(value, BaseModel):
        _walk_model(value, path + ".", forms, out)
    elif isinstance(value, (list, tuple, set, frozenset)):
        element = _element(annotation)
        for i, v in enumerate(value if not isinstance(value, (set, frozenset)) else sorted(value, key=repr)):
            _visit(v, element, f"{path}[{i}]", grounded, forms, out)
    elif isinstance(value, dict):
        args = typing.get_args(annotation)
        for k, v in value.items():
            _visit(v, args[1] if len(args) == 2 else None, f"{path}[{k!r}]", grounded, forms, out)
    elif grounded:
        out[path] = forms.spans(value)


def value_spans(value: Any, text: str) -> list[Span]:
    """Where one scalar (a text, a number, a date) occurs in ``text`` as grounding reads it: for a
    value a report shows in place (a rejected value, given as Pydantic's input: a str that may be a
    number or an ISO date, each reading tried)."""
    forms = _Forms(text)
    found = forms.spans(value)
    if isinstance(value, str) and not found:
        with suppress(ValueError):
            found = forms.spans(dt.date.fromisoformat(value.strip()[:10]))
        if not found:
            with suppress(InvalidOperation):
                found = forms.spans(Decimal(value.strip()))
    return [Span(s, e) for s, e in found]
