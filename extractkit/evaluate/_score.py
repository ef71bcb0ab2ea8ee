"""Field-level scoring of an extraction against a gold value.

Each field the gold value names is scored once (nested objects as dotted paths, list items as
``lines[].name``):

- ``tp``     both have a value and they match after normalisation;
- ``wrong``  both have a value and they differ (counts as a false positive *and* a false negative);
- ``fn``     the gold has a value, the extraction has none (missing or null);
- ``fp``     the gold says null, the extraction has a value;
- ``tn``     both are null or missing.

A field the gold value does not name is not scored. A failed extraction scores every gold value
``fn``. Precision is tp / (tp + fp + wrong), recall tp / (tp + fn + wrong).

Normalisation: numbers are parsed ("1,249.50", "$1 249,50" and 1249.5 are equal); dates go to ISO
("03/15/2024", "15.03.2024", "March 15, 2024" and "2024-03-15" are equal; slashes read month
first unless ``dayfirst``); strings are compared case- and whitespace-folded. Digit-only strings
on both sides ("0042" vs "42") are identifiers and compared as strings.

List fields are matched item by item, independent of order: scalar items by equality, object
items greedily by the number of matching fields; unmatched gold items score ``fn`` for each of
their values, unmatched extracted items ``fp``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

TP, TN, FP, FN, WRONG = "tp", "tn", "fp", "fn", "wrong"
_MISSING = object()


@dataclass(frozen=True)
class FieldScore:
    field: str
    expected: Any
    got: Any
    result: str


# -- normalisation ----------------------------------------------------------------------------

_NUM_CHARS = re.compile(
    r"^[\s+\-]*[$€£¥₹]?\s*[+\-]?[\d.,'\s\u00a0\u202f]*\d[\d.,'\s\u00a0\u202f]*\s*(%|[$€£¥₹]|[A-Z]{3})?$"
)
_DIGITS = re.compile(r"^\d+$")


def parse_number(value: Any) -> Decimal | None:
    """A number, or a string that reads as one ("1,249.50", "1.249,50", "$ 1 249.50"); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return Decimal(str(value))
    if not isinstance(value, str) or not _NUM_CHARS.match(value.strip()):
        return None
    s = re.sub(r"[^\d.,\-]", "", value.replace("\u2212", "-"))
    negative = s.startswith("-")
    s = s.lstrip("-")
    if "," in s and "." in s:  # the last separator is the decimal one
        comma_last = s.rfind(",") > s.rfind(".")
        s = s.replace(".", "").replace(",", ".") if comma_last else s.replace(",", "")
    elif "," in s:
        # 1,249 / 1,249,000 are thousands; 12,5 / 1249,50 are decimals
        s = s.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", s) else s.replace(",", ".")
    elif s.count(".") > 1:  # 1.249.000
        s = s.replace(".", "")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    return -d if negative else d


_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}


def parse_date(value: Any, *, dayfirst: bool = False) -> dt.date | None:
    """A date from a date, an ISO string (with or without time) or a common written form."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        return None
    s = value.strip()
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ][\d:.]+(?:Z|[+\-]\d{2}:?\d{2})?)?", s)
    if m:
        return _mk(int(m[1]), int(m[2]), int(m[3]))
    m = re.fullmatch(r"(\d{4})[/.](\d{1,2})[/.](\d{1,2})", s)
    if m:
        return _mk(int(m[1]), int(m[2]), int(m[3]))
    m = re.fullmatch(r"(\d{1,2})([/.\-])(\d{1,2})\2(\d{2}|\d{4})", s)
    if m:
        a, sep, b, y = int(m[1]), m[2], int(m[3]), int(m[4])
        y = y + 2000 if y < 100 else y
        if sep == "." or dayfirst or a > 12:  # dots are day-first in every locale that uses them
            return _mk(y, b, a)
        return _mk(y, a, b) or _mk(y, b, a)
    m = re.fullmatch(r"(\d{1,2})(?:st|nd|rd|th)?\.?\s+([A-Za-z]{3,})\.?,?\s+(\d{4})", s)
    if m and m[2][:3].lower() in _MONTHS:
        return _mk(int(m[3]), _MONTHS[m[2][:3].lower()], int(m[1]))
    m = re.fullmatch(r"([A-Za-z]{3,})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", s)
    if m and m[1][:3].lower() in _MONTHS:
        return _mk(int(m[3]), _MONTHS[m[1][:3].lower()], int(m[2]))
    return None


def _mk(y: int, m: int, d: int) -> dt.date | None:
    try:
        return dt.date(y, m, d)
    except ValueError:
        return None


def fold(value: str) -> str:
    return " ".join(value.split()).casefold()


def same(expected: Any, got: Any, *, dayfirst: bool = False) -> bool:
    """Whether two scalar values match after normalisation (see the module docstring)."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got or (isinstance(got, str) and fold(got) == str(expected).lower())
    both_ids = (
        isinstance(expected, str)
        and isinstance(got, str)
        and _DIGITS.match(expected.strip())
        and _DIGITS.match(got.strip())
    )
    if not both_ids:
        a, b = parse_number(expected), parse_number(got)
        if a is not None and b is not None:
            return a == b
    da, db = parse_date(expected, dayfirst=dayfirst), parse_date(got, dayfirst=dayfirst)
    if da is not None and db is not None:
        return da == db
    return fold(str(expected)) == fold(str(got))


# -- scoring ----------------------------------------------------------------------------------


def _empty(v: Any) -> bool:
    return v is _MISSING or v is None or (isinstance(v, (str, list, dict)) and len(v) == 0)


def score(
    expected: dict[str, Any], got: dict[str, Any] | None, *, dayfirst: bool = False
) -> list[FieldScore]:
    """Score ``got`` (None for a failed extraction) against ``expected``, field by field."""
    out: list[FieldScore] = []
    _score_obj(expected, got if got is not None else {}, "", out, dayfirst)
    return out


def _score_obj(
    exp: dict[str, Any], got: dict[str, Any], prefix: str, out: list[FieldScore], dayfirst: bool
) -> None:
    for key, e in exp.items():
        _score_value(
            e, got.get(key, _MISSING) if isinstance(got, dict) else _MISSING, f"{prefix}{key}", out, dayfirst
        )


def _score_value(e: Any, g: Any, name: str, out: list[FieldScore], dayfirst: bool) -> None:
    if isinstance(e, dict):
        _score_obj(e, g if isinstance(g, dict) else {}, name + ".", out, dayfirst)
        return
    if isinstance(e, list):
        _score_list(e, g if isinstance(g, list) else [], name + "[]", out, dayfirst)
        return
    gv = None if g is _MISSING else g
    if _empty(e):
        out.append(FieldScore(name, None, gv, TN if _empty(g) else FP))
    elif _empty(g):
        out.append(FieldScore(name, e, None, FN))
    else:
        out.append(FieldScore(name, e, gv, TP if same(e, g, dayfirst=dayfirst) else WRONG))


def _leaves(v: Any, name: str, result: str, out: list[FieldScore], side: str) -> None:
    """Every non-empty value in an unmatched item, as fn (gold side) or fp (extracted side)."""
    if isinstance(v, dict):
        for k, x in v.items():
            _leaves(x, f"{name}.{k}", result, out, side)
    elif isinstance(v, list):
        for x in v:
            _leaves(x, name + "[]", result, out, side)
    elif not _empty(v):
        out.append(FieldScore(name, v if side == "gold" else None, v if side == "got" else None, result))


def _agreement(e: Any, g: Any, dayfirst: bool) -> int:
    if isinstance(e, dict) and isinstance(g, dict):
        return sum(_agreement(v, g.get(k), dayfirst) for k, v in e.items() if not _empty(v))
    if isinstance(e, (dict, list)) or isinstance(g, (dict, list)) or _empty(e) or _empty(g):
        return 0
    return int(same(e, g, dayfirst=dayfirst))


def _score_list(exp: list[Any], got: list[Any], name: str, out: list[FieldScore], dayfirst: bool) -> None:
    pairs = sorted(
        ((_agreement(e, g, dayfirst), i, j) for i, e in enumerate(exp) for j, g in enumerate(got)),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    used_e: set[int] = set()
    used_g: set[int] = set()
    for agree, i, j in pairs:
        if agree == 0 or i in used_e or j in used_g:
            continue
        used_e.add(i)
        used_g.add(j)
        _score_value(exp[i], got[j], name, out, dayfirst)
    for i, e in enumerate(exp):
        if i not in used_e:
            _leaves(e, name, FN, out, "gold")
    for j, g in enumerate(got):
        if j not in used_g:
            _leaves(g, name, FP, out, "got")


def counts(scores: list[FieldScore]) -> dict[str, int]:
    c = {TP: 0, TN: 0, FP: 0, FN: 0, WRONG: 0}
    for s in scores:
        c[s.result] += 1
    return c


def prf(tp: int, fp: int, fn: int, wrong: int) -> tuple[float | None, float | None, float | None]:
    """Precision, recall, F1 (None where the denominator is 0)."""
    p = tp / (tp + fp + wrong) if tp + fp + wrong else None
    r = tp / (tp + fn + wrong) if tp + fn + wrong else None
    f = (
        2 * p * r / (p + r)
        if p is not None and r is not None and p + r
        else (0.0 if p == 0 or r == 0 else None)
    )
    return p, r, f
