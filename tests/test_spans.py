"""Where each value came from (issue 19, item 4): for every grounded value, the spans of the
document's original text where grounding found it, ``text[start:end]`` being the source text as
written ("1.249,50", "7. Mai 2014", "Coolblue B.V"), whatever normalisation found it."""

from __future__ import annotations

import datetime as dt
import sys
import unicodedata
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel

import extractkit._grounding as grounding
from extractkit import Grounded, Span
from extractkit._grounding import (
    _NUMBER,
    MAX_SPANS,
    SourceIndex,
    _Forms,
    alnum_form,
    dates_in,
    normalize_text,
    number_readings,
    spans_for,
    value_spans,
)
from extractkit._pages import Page
from extractkit.batch._loaders import TEXT_TYPES, load
from extractkit.evaluate import convert_invoice2data, load_gold

from .test_grounding import NOT_IN_TEXT

D = dt.date


class Item(BaseModel):
    sku: Annotated[str, Grounded()]
    amount: Annotated[Decimal, Grounded()]
    note: str | None = None  # not grounded: no span


class Doc(BaseModel):
    issuer: Annotated[str, Grounded()]
    date: Annotated[dt.date, Grounded()]
    total: Annotated[float, Grounded()]
    due: Annotated[dt.date | None, Grounded()] = None
    items: list[Item] = []
    tags: list[Annotated[str, Grounded()]] = []
    currency: str = "EUR"


def matched(text: str, span: Span) -> str:
    return text[span.start : span.end]


def assert_exact(value: object, source: str) -> None:
    """``source`` (a span's text) is the value as written, nothing more: the same value once read
    the way grounding reads it, and every character of it part of that reading."""
    if isinstance(value, dt.date):
        assert value in dates_in(normalize_text(source)), (value, source)
        assert source[0].isalnum() and source[-1].isalnum(), source
    elif isinstance(value, (int, float, Decimal)):
        assert _NUMBER.fullmatch(source), source  # one number token of the text, whole
        assert abs(Decimal(str(value))).normalize() in number_readings(source), (value, source)
    else:
        assert alnum_form(normalize_text(source)) == alnum_form(normalize_text(str(value))), (value, source)
    assert SourceIndex(source).contains(value), (value, source)  # the slice alone grounds the value


# -- the shared invoice corpus ------------------------------------------------------------------------


def test_every_grounded_gold_value_of_the_corpus_has_exact_spans(corpus, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    sys.modules.pop("invoice_schema", None)
    from invoice_schema import Invoice as CorpusInvoice

    grounded = [n for n, f in CorpusInvoice.model_fields.items() if any(isinstance(m, Grounded) for m in f.metadata)]
    out = tmp_path / "gold.jsonl"
    convert_invoice2data(corpus, out, schema=CorpusInvoice)
    checked = 0
    for item in load_gold(out, CorpusInvoice):
        assert item.path is not None
        text = load(item.path, TEXT_TYPES[item.path.suffix.lower()]).text
        value, fields = CorpusInvoice.model_construct(), set()
        for field in grounded:
            if field in item.expected and (item.gold_id, field) not in NOT_IN_TEXT:
                # validated by the grounded model against the text: the values grounding accepts
                value = CorpusInvoice.__pydantic_validator__.validate_assignment(
                    value, field, item.expected[field], context={"source_text": text}
                )
                fields.add(field)
        spans = spans_for(value, text)
        assert set(spans) == fields, item.gold_id
        for field, found in spans.items():
            assert found, f"{item.gold_id}.{field}: no span"
            for span in found:
                assert 0 <= span.start < span.end <= len(text) and span.page is None
                assert_exact(getattr(value, field), matched(text, span))
            checked += 1
    assert checked >= 40


# -- each kind of value ---------------------------------------------------------------------------------

TEXT = (
    "  Rechnung\n\n von  COOLBLUE B.V.\tDatum: 7. Mai 2014, fällig 2014-06-07, Summe 1.249,50 EUR\n"
    "SKU-1 x 2 = 1 249,50\nSKU-2 x 1 =  12.00\nTotal: 1,249.50  ORLEN spółka akcyjna"
)


def test_spans_of_text_numbers_dates_and_legal_forms_are_the_source_as_written():
    value = Doc(issuer="Coolblue BV", date=D(2014, 5, 7), total=1249.5, due=D(2014, 6, 7),
                items=[Item(sku="sku 1", amount=Decimal("1249.50"), note="x"), Item(sku="SKU-2", amount=12)],
                tags=["Orlen S.A.", "rechnung"])  # fmt: skip
    spans = spans_for(value, TEXT)
    shown = {k: [matched(TEXT, s) for s in v] for k, v in spans.items()}
    assert shown == {
        "issuer": ["COOLBLUE B.V"],  # punctuation between letters is part of it; the last dot is not
        "date": ["7. Mai 2014"],
        "due": ["2014-06-07"],
        "total": ["1.249,50", "1 249,50", "1,249.50"],  # every reading of the number, as written
        "items[0].sku": ["SKU-1"],
        "items[0].amount": ["1.249,50", "1 249,50", "1,249.50"],
        "items[1].sku": ["SKU-2"],
        "items[1].amount": ["12.00"],
        "tags[0]": ["ORLEN spółka akcyjna"],  # a legal form written out, abbreviated in the value
        "tags[1]": ["Rechnung"],
    }
    for key, found in spans.items():
        for span in found:
            assert_exact(_value_at(value, key), matched(TEXT, span))


def _value_at(value: BaseModel, key: str) -> object:
    obj: object = value
    for part in key.replace("]", "").replace("[", ".").split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)  # type: ignore[index]
    return obj


def test_whitespace_variants_map_back_to_every_character_between():
    text = "Issuer:\u00a0ACME\n\n\t  Widgets\u2003Ltd.\r\nend"
    (span,) = spans_for(Doc.model_construct(issuer="Acme Widgets Limited"), text)["issuer"]
    assert matched(text, span) == "ACME\n\n\t  Widgets\u2003Ltd"


@pytest.mark.parametrize(
    ("text", "value", "written"),
    [
        ("Firma Cafe\u0301 Mu\u0308ller GmbH", "Café Müller GmbH", "Cafe\u0301 Mu\u0308ller GmbH"),  # combining marks
        ("Firma Café Müller GmbH", "Cafe\u0301 Mu\u0308ller GmbH", "Café Müller GmbH"),  # precomposed
        ("bill ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　Ｌｔｄ ok", "fullwidth ABC Ltd", "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　Ｌｔｄ"),  # NFKC
        ("Großhandel ﬁne Straße 12", "fine strasse", "ﬁne Straße"),  # ligature, ß casefolds to ss
        ("x \u00a8 a ‘Ⅻ’ y", "xii", "Ⅻ"),  # one character written as several
        ("Kim 가\u1100\u1161 Corp", "가가", "가\u1100\u1161"),  # composition across characters
    ],
)
def test_unicode_that_normalisation_changes_maps_back_exactly(text, value, written):
    assert SourceIndex(text).contains(value)
    (span,) = value_spans(value, text)
    assert matched(text, Span(span.start, span.end)) == written


def test_the_maps_agree_with_grounding_on_every_character():
    """The normalised text the maps build is the one grounding compares against, and every
    character of it maps to characters of the original that normalise to it."""
    samples = [TEXT, "  a\u0301\u0327 ß ﬃ Ⅻ ｆ\u3000x \u00a8\u00a8 가\u1100\u1161\u11a8 Σας  ", "\u212b\u0301 é\n", ""]
    for text in samples:
        forms = _Forms(text)
        assert forms.text == normalize_text(text)
        for i, ch in enumerate(forms.text):
            s, e = forms.to_source(i, i + 1)
            written = unicodedata.normalize("NFKC", text[s:e])
            assert ch in normalize_text(text[s:e]) or (ch == " " and any(c.isspace() for c in written)), (text, i)


def test_a_value_written_many_times_has_a_span_for_each_capped():
    text = "; ".join(f"line {i}: 19.99 EUR ACME" for i in range(60))
    spans = spans_for(Doc.model_construct(issuer="ACME", total=19.99), text)
    assert len(spans["total"]) == len(spans["issuer"]) == MAX_SPANS
    assert [matched(text, s) for s in spans["total"]] == ["19.99"] * MAX_SPANS
    assert spans["total"] == sorted(spans["total"], key=lambda s: s.start)
    assert len({s.start for s in spans["issuer"]}) == MAX_SPANS


def test_spans_carry_their_page():
    pages = [Page(1, 0, 20, "text"), Page(2, 22, 44, "ocr", 0.93)]
    text = "Issuer: ACME Ltd    \n\nTotal 12.50 due now   "
    assert len(text) == 44
    spans = spans_for(Doc.model_construct(issuer="ACME Ltd", total=12.5), text, pages)
    assert spans["issuer"] == [Span(8, 16, 1)]
    assert spans["total"] == [Span(28, 33, 2)] and matched(text, spans["total"][0]) == "12.50"


def test_values_not_grounded_or_absent_have_no_spans():
    class Plain(BaseModel):
        issuer: str
        total: float

    assert spans_for(Plain(issuer="ACME", total=1.0), "ACME 1.0") == {}
    value = Doc.model_construct(issuer="ACME", date=None, total=None, items=[], tags=[])
    assert spans_for(value, "ACME") == {"issuer": [Span(0, 4)]}
    assert spans_for(Doc.model_construct(issuer="Nobody"), "ACME") == {"issuer": []}


# -- a hostile text: big, and built to make a careless scan quadratic --------------------------------------


def test_a_2mb_hostile_text_costs_linear_work(monkeypatch):
    """2 MB of whitespace runs, digits, combining marks and a repeated value: the maps are built in
    one pass (pieces proportional to the text, never per pair of positions) and each value's search
    stops at MAX_SPANS."""
    unit = "ACME  1.249,50 \u0301e\u0301\u00a0x\t7. Mai 2014 ﬁ " * 40 + "\n"
    text = (unit * (2_000_000 // len(unit) + 1))[:2_000_000]
    calls = {"find": 0}
    real = grounding._occurrences

    def counted(haystack: str, needle: str) -> list[tuple[int, int]]:
        calls["find"] += 1
        return real(haystack, needle)

    monkeypatch.setattr(grounding, "_occurrences", counted)
    forms = _Forms(text)
    pieces = sum(len(m._starts) for m in (forms._m1, forms._m2, forms._m3))
    assert pieces <= 3 * len(text)  # at most a few pieces per character: linear
    value = Doc.model_construct(issuer="acme", date=D(2014, 5, 7), total=1249.5)
    spans = spans_for(value, text)
    assert calls["find"] == 1 and all(len(v) == MAX_SPANS for v in spans.values())
    for key, found in spans.items():
        for span in found:
            assert_exact(getattr(value, key), matched(text, span))
    assert unicodedata.normalize("NFKC", text) != text  # the slow path was taken
