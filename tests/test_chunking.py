"""Long documents, the pure parts: the chunker (_chunking.split) and the merge (_merge)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated

import pytest
from pydantic import BaseModel, ValidationError

from extractkit import Conflict, Grounded, Merge, SchemaError
from extractkit._chunking import split
from extractkit._merge import merge, policies, relaxed_schema
from extractkit._tokens import count_tokens


@dataclass(frozen=True)
class Page:  # the seam's Page (extractkit/_pages.py, i19ocr), as the chunker reads it
    number: int
    start: int
    end: int
    source: str = "text"
    confidence: float | None = None


def paged(pages: list[str]) -> tuple[str, list[Page]]:
    """Pages joined as Document.text joins them (a blank line), with their offsets."""
    out, spans, at = [], [], 0
    for i, p in enumerate(pages, 1):
        spans.append(Page(i, at, at + len(p)))
        out.append(p)
        at += len(p) + 2
    return "\n\n".join(out), spans


def paragraphs(n: int, words: int = 40, tag: str = "p") -> list[str]:
    return [f"{tag}{i} " + " ".join(f"word{i}x{j}" for j in range(words)) + "." for i in range(n)]


# -- the chunker ----------------------------------------------------------------------------------
def test_chunks_hold_their_offsets_and_fit_the_budget():
    text = "\n\n".join(paragraphs(60))
    chunks = split(text, max_tokens=400, overlap_tokens=80)
    assert len(chunks) > 5
    for i, c in enumerate(chunks):
        assert c.index == i
        assert text[c.start : c.end] == c.text
        assert count_tokens(c.text) <= 400 + 5  # the sum of its pieces' counts, within a few tokens
        assert c.text == c.text.strip()
    # every paragraph is in some chunk, whole; the chunks cover the text in order
    for p in text.split("\n\n"):
        assert any(p in c.text for c in chunks), p[:20]
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)


def test_chunks_cut_between_paragraphs_and_overlap():
    paras = paragraphs(40, words=12)  # ~50 tokens each
    text = "\n\n".join(paras)
    chunks = split(text, max_tokens=300, overlap_tokens=120)
    for c in chunks:  # cut only between paragraphs: each chunk starts and ends with a whole one
        assert c.text.split("\n\n")[0] in paras and c.text.split("\n\n")[-1] in paras
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start < a.end, "consecutive chunks overlap"
        shared = text[b.start : a.end]
        assert count_tokens(shared) <= 120 + 5
        assert b.end > a.end, "each chunk brings new text"


def test_no_overlap_when_asked_for_none():
    text = "\n\n".join(paragraphs(30))
    chunks = split(text, max_tokens=300, overlap_tokens=0)
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert b.start >= a.end
    assert "".join(text[c.start : c.end] for c in chunks).replace("\n", "") == text.replace("\n", "")


def test_chunks_prefer_page_boundaries():
    # pages of 3 paragraphs (~150 tokens): a 400-token chunk holds two pages and a bit; it ends where a
    # page ends instead of after the next page's first paragraph
    pages = ["\n\n".join(paragraphs(3, words=12, tag=f"page{n}p")) for n in range(1, 13)]
    assert 120 < count_tokens(pages[0]) < 190
    text, spans = paged(pages)
    chunks = split(text, max_tokens=400, overlap_tokens=0, pages=spans)
    ends = {p.end for p in spans}
    starts = {p.start for p in spans}
    for c in chunks[:-1]:
        assert c.end in ends, (c.index, c.text[-40:])
    for c in chunks:
        assert c.start in starts
        assert c.pages is not None and c.pages[0] <= c.pages[1]
    without = split(text, max_tokens=400, overlap_tokens=0)
    assert any(c.end not in ends for c in without[:-1]), "without pages the cut falls inside a page"


def test_a_paragraph_larger_than_a_chunk_is_cut_at_lines_then_words_then_characters():
    lines = "\n".join(f"line {i} " + "alpha beta " * 30 for i in range(20))
    one_word = "x" * 5000  # no break at all: cut by characters
    words = " ".join(f"w{i}" for i in range(3000))
    text = "\n\n".join([lines, words, one_word])
    chunks = split(text, max_tokens=200, overlap_tokens=0)
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert count_tokens(c.text) <= 200
    assert "".join(c.text for c in chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(
        " ", ""
    )


def test_short_and_empty_texts():
    assert split("   \n\n ", max_tokens=100) == []
    (only,) = split("Hello world.", max_tokens=100)
    assert (only.start, only.end, only.text) == (0, 12, "Hello world.")
    with pytest.raises(ValueError):
        split("x", max_tokens=0)


# -- the merge ------------------------------------------------------------------------------------
class Item(BaseModel):
    sku: str
    qty: int


class Party(BaseModel):
    name: str
    city: str


class Deal(BaseModel):
    title: str
    law: Annotated[str, Merge("most_frequent")]
    signed: dt.date | None = None
    seller: Party
    items: Annotated[list[Item], Merge(key="sku")]
    tags: list[str] = []


def test_first_non_null_wins_and_a_disagreement_is_a_conflict():
    parts = [
        (0, {"title": None, "law": None, "signed": None, "seller": None, "items": [], "tags": None}),
        (1, {"title": "Supply", "law": "England", "signed": "2024-03-01", "seller": None, "items": None}),
        (2, {"title": "Supply", "law": None, "signed": "2024-04-01", "seller": None, "items": None}),
    ]
    merged, conflicts = merge(Deal, parts)
    assert merged["title"] == "Supply" and merged["signed"] == "2024-03-01"
    assert conflicts == [Conflict("signed", ("2024-03-01", "2024-04-01"), ((1,), (2,)), "2024-03-01")]


def test_most_frequent_counts_chunks_and_a_tie_goes_to_the_first():
    parts = [(0, {"law": "France"}), (1, {"law": "England"}), (2, {"law": "England"}), (3, {"law": "France"}),
             (4, {"law": "England"})]  # fmt: skip
    merged, conflicts = merge(Deal, parts)
    assert merged["law"] == "England"
    assert conflicts == [Conflict("law", ("France", "England"), ((0, 3), (1, 2, 4)), "England")]
    tie, _ = merge(Deal, [(0, {"law": "France"}), (1, {"law": "England"})])
    assert tie["law"] == "France"


def test_lists_are_concatenated_and_deduplicated_by_the_declared_key():
    parts = [
        (0, {"items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}], "tags": ["x", "y"]}),
        (1, {"items": [{"sku": "B", "qty": 2}, {"sku": "C", "qty": 3}], "tags": ["y", "z"]}),
        (2, {"items": [{"sku": "C", "qty": 4}], "tags": ["x"]}),
    ]
    merged, conflicts = merge(Deal, parts)
    assert merged["items"] == [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}, {"sku": "C", "qty": 3}]
    assert merged["tags"] == ["x", "y", "z"]  # no key: whole items
    assert conflicts == [Conflict("items[C]", ({"sku": "C", "qty": 3}, {"sku": "C", "qty": 4}), ((1,), (2,)),
                                  {"sku": "C", "qty": 3})]  # fmt: skip


def test_nested_models_merge_field_by_field():
    parts = [(0, {"seller": {"name": "Acme", "city": None}}), (1, {"seller": {"name": "Acme", "city": "Leeds"}}),
             (2, {"seller": {"name": "Acme Ltd", "city": "Leeds"}})]  # fmt: skip
    merged, conflicts = merge(Deal, parts)
    assert merged["seller"] == {"name": "Acme", "city": "Leeds"}
    assert [c.field for c in conflicts] == ["seller.name"]


def test_relaxed_schema_is_all_optional_and_keeps_grounding():
    from extractkit._grounding import grounding_source

    class Doc(BaseModel):
        """A doc."""

        who: Annotated[str, Grounded()]
        seller: Party
        items: list[Item]

    Relaxed = relaxed_schema(Doc)
    assert Relaxed.__name__ == "Doc" and Relaxed.__doc__ == "A doc."
    assert Relaxed.model_validate({}).model_dump() == {"who": None, "seller": None, "items": None}
    assert Relaxed.model_validate({"seller": {"name": "A"}}).seller.city is None  # nested: relaxed too
    with pytest.raises(ValidationError):
        Relaxed.model_validate({"items": [{"sku": "A"}]})  # an item is found whole
    with grounding_source("Written by Alice."):
        assert Relaxed.model_validate({"who": "Alice"}).who == "Alice"
        with pytest.raises(ValidationError, match="not found"):
            Relaxed.model_validate({"who": "Bob"})
    assert "required" not in Relaxed.model_json_schema()  # a chunk may leave out any field


def test_declared_policies_and_a_bad_one():
    assert policies(Deal) == {"law": {"policy": "most_frequent", "key": None},
                              "items": {"policy": "first", "key": "sku"}}  # fmt: skip
    with pytest.raises(SchemaError, match="most_frequent"):
        Merge("newest")  # type: ignore[arg-type]
