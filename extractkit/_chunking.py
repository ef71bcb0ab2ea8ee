"""Long documents: a text split into chunks that each fit a tier's context.

``split`` cuts a document into chunks of at most ``max_tokens`` tokens (counted as ``_tokens``
counts them), preferring to cut where a page starts (``Document.pages``: pages are joined by a
blank line), then between paragraphs (a blank line), then between lines, then between words; a
run of text with no such break is cut by its characters. Consecutive chunks overlap by up to
``overlap_tokens`` tokens of whole pieces (paragraphs, when they are small enough), so a value
that straddles a cut is seen whole by one of them. Every chunk knows where it is in the
document: ``text[chunk.start:chunk.end] == chunk.text``.

Pure and CPU-bound (it tokenises the whole text once, piece by piece): a caller on an event loop
runs it in a worker thread. What the chain does with the chunks (extract each, merge) is in
``_chain.py`` and ``_merge.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._tokens import count_tokens

DEFAULT_OVERLAP_TOKENS = 200  # a tier's chunk_overlap when not set
MIN_CHUNK_TOKENS = 256  # a tier whose context leaves less than this for a chunk cannot chunk
MIN_UNIT_TOKENS = 64  # the least a piece of a paragraph too large for a chunk is cut to

_PARAGRAPH = re.compile(r"\n[ \t\f\r]*\n\s*")  # a blank line (and whatever whitespace follows)
_LINE = re.compile(r"\n\s*")
_WORD = re.compile(r"\s+")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: ``text == document[start:end]`` (leading and trailing whitespace
    left out), about ``tokens`` tokens; ``pages``: its first and last page numbers, when the
    document has pages."""

    index: int
    start: int
    end: int
    text: str
    tokens: int
    pages: tuple[int, int] | None = None


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    tokens: int
    page_start: bool  # a page begins here


def split(
    text: str,
    *,
    max_tokens: int,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
    pages: Sequence[Any] = (),
    count: Callable[[str], int] = count_tokens,
) -> list[Chunk]:
    """``text`` as chunks of at most ``max_tokens`` tokens each (see the module docstring), in
    order, numbered from 0. ``pages``: ``Page`` objects (``.number``, ``.start``, ``.end``: the
    character offsets of each page in ``text``); a chunk then prefers to end where a page ends
    (when that keeps it at least half full). ``count``: the tokenizer (``_tokens.count_tokens``)."""
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
    overlap_tokens = max(0, min(overlap_tokens, max_tokens // 2))
    if not text.strip():
        return []
    page_starts = sorted({int(p.start) for p in pages if 0 < int(p.start) < len(text)})
    # a paragraph too large for a chunk is cut into pieces of about ``unit`` tokens (small enough
    # for the overlap to hold some), each counted whole, so the chunks fill up to max_tokens
    unit = max(MIN_UNIT_TOKENS, overlap_tokens // 2) if overlap_tokens else max_tokens
    pieces = _pieces(text, page_starts, min(unit, max_tokens), max_tokens, count)
    chunks: list[Chunk] = []
    i, n = 0, len(pieces)
    while i < n:
        j, total, best_page_cut = i, 0, None
        while j < n and total + pieces[j].tokens <= max_tokens:
            total += pieces[j].tokens
            j += 1
            if j < n and pieces[j].page_start and total * 2 >= max_tokens:
                best_page_cut = (j, total)
        if j == i:  # cannot happen (every piece fits), but never loop forever
            j, total = i + 1, pieces[i].tokens
        if j < n and best_page_cut is not None and not pieces[j].page_start:
            j, total = best_page_cut  # end where a page ends rather than inside the next page
        chunks.append(_chunk(text, len(chunks), pieces[i].start, pieces[j - 1].end, total, pages))
        if j >= n:
            break
        # the next chunk starts with the last pieces of this one, up to overlap_tokens of them,
        # leaving room for at least the next new piece
        room = min(overlap_tokens, max_tokens - pieces[j].tokens)
        k, back = j, 0
        while k - 1 > i and back + pieces[k - 1].tokens <= room:
            k -= 1
            back += pieces[k].tokens
        i = k
    return chunks


def _chunk(text: str, index: int, start: int, end: int, tokens: int, pages: Sequence[Any]) -> Chunk:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    span = None
    if pages:
        inside = [int(p.number) for p in pages if int(p.start) < end and int(p.end) > start]
        if inside:
            span = (min(inside), max(inside))
    return Chunk(index, start, end, text[start:end], tokens, span)


def _cuts(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[int]:
    """The offsets in ``text[start:end]`` where a piece begins after a break of ``pattern``."""
    return [m.end() for m in pattern.finditer(text, start, end) if start < m.end() < end]


def _pieces(
    text: str, page_starts: list[int], unit: int, max_tokens: int, count: Callable[[str], int]
) -> list[_Piece]:
    """``text`` cut at page starts and paragraph breaks into pieces that each fit ``max_tokens``
    (a larger one cut again into pieces of at most ``unit`` tokens, at lines, then words, then
    characters)."""
    bounds = sorted({0, len(text), *page_starts, *_cuts(text, 0, len(text), _PARAGRAPH)})
    starts = set(page_starts)
    out: list[_Piece] = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        n = count(text[a:b])
        if n <= max_tokens:
            out.append(_Piece(a, b, n, a in starts))
        else:
            parts = _fit(text, a, b, unit, count, (_LINE, _WORD))
            out.extend(_Piece(s, e, t, s == a and a in starts) for s, e, t in parts)
    return out


def _fit(
    text: str, start: int, end: int, max_tokens: int, count: Callable[[str], int],
    breaks: tuple[re.Pattern[str], ...],
) -> list[tuple[int, int, int]]:  # fmt: skip
    """``text[start:end]`` (over ``max_tokens``) as pieces that fit: cut at the first kind of
    break in ``breaks``, each piece the longest run of them that fits ``max_tokens`` counted
    whole (found by doubling, then bisection: a sum of the parts' counts would overstate it,
    a word alone counting its trailing space), a part still too large cut at the next kind; with
    no kind left, cut by characters."""
    if not breaks:
        return _by_chars(text, start, end, max_tokens, count)
    bounds = [start, *_cuts(text, start, end, breaks[0]), end]
    last = len(bounds) - 1
    out: list[tuple[int, int, int]] = []
    k = 0
    while k < last:
        a = bounds[k]
        n = count(text[a:bounds[k + 1]])
        if n > max_tokens:
            out.extend(_fit(text, a, bounds[k + 1], max_tokens, count, breaks[1:]))
            k += 1
            continue
        lo, lo_n, step = k + 1, n, 1  # lo: the furthest bound known to fit, with its count
        hi = last + 1  # the nearest bound known not to fit (past the end: none known)
        while lo < last:  # double the step until a run does not fit
            m = min(lo + step, last)
            m_n = count(text[a:bounds[m]])
            if m_n > max_tokens:
                hi = m
                break
            lo, lo_n, step = m, m_n, step * 2
        while hi - lo > 1:  # then bisect between the two
            m = (lo + hi) // 2
            m_n = count(text[a:bounds[m]])
            if m_n <= max_tokens:
                lo, lo_n = m, m_n
            else:
                hi = m
        out.append((a, bounds[lo], lo_n))
        k = lo
    return out


def _by_chars(
    text: str, start: int, end: int, max_tokens: int, count: Callable[[str], int]
) -> list[tuple[int, int, int]]:
    """``text[start:end]`` cut by characters: each piece the longest prefix of what is left that
    fits ``max_tokens`` (found by bisection: a few tokenisations per piece)."""
    out: list[tuple[int, int, int]] = []
    while start < end:
        lo, hi = start + 1, end  # lo: a length known to fit (one character always does)
        if count(text[start:hi]) <= max_tokens:
            lo = hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(text[start:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        out.append((start, lo, count(text[start:lo])))
        start = lo
    return out
