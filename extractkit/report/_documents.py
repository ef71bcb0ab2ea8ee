"""The report's per-document view: the documents a reviewer should look at (unresolved, or resolved
only after re-asks or escalation), each with its text and, highlighted in it, the accepted values
where grounding found them (``extractions.spans_json``) and the values failed attempts were refused
for, where they occur in the text.

The text is the ledger's ``documents.text`` (None when it was recorded with ``store_text = false``:
then neither the text nor any value is shown), cut at ``MAX_SHOWN_CHARS``. A span is highlighted
only when the characters it covers still ground its value (the stored text is redacted when it is
written, so a span after a secret may point elsewhere): nothing is highlighted in the wrong place.
Every piece of text is redacted and then escaped by the template (autoescape): a document holding
``<script>`` shows it as text.
"""

from __future__ import annotations

import ast
import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._grounding import SourceIndex, value_spans
from .._redact import redact
from .._words import plural

if TYPE_CHECKING:
    from ..ledger import Ledger, ReviewDocument
    from ._aggregate import Scope

MAX_SHOWN_CHARS = 20_000  # characters of a document's text shown
MAX_DOCUMENTS = 20  # documents in the view
MAX_VALUE_CHARS = 120  # a value as the view's table shows it


@dataclass(frozen=True)
class Segment:
    text: str
    kind: str | None = None  # None (plain) | "accepted" | "rejected"
    label: str = ""  # the field(s) it is the value of


@dataclass(frozen=True)
class Mark:
    kind: str  # accepted | rejected
    field: str
    value: str
    where: str  # "120-128 (page 1)", "not in the text", "after the text shown"
    source: str = ""  # for a rejected value: the attempt that sent it ("zero_shot #1 ungrounded")


@dataclass(frozen=True)
class DocumentView:
    title: str
    sha256: str | None
    status: str
    reason: str
    error: str | None
    stored: bool  # False: recorded with store_text off, nothing shown
    segments: tuple[Segment, ...]
    marks: tuple[Mark, ...]
    shown_chars: int
    text_chars: int


def read_documents(
    ledger: Ledger, scope: Scope | None = None, *, limit: int = MAX_DOCUMENTS,
    max_chars: int = MAX_SHOWN_CHARS,
) -> tuple[DocumentView, ...]:  # fmt: skip
    """The view of the report's scope: its unresolved documents, then those that needed more than
    one attempt, at most ``limit``, each text cut at ``max_chars``."""
    from ._aggregate import Scope

    where, params = (scope or Scope()).where()
    docs = ledger.review_documents(where, params, limit=limit, max_chars=max_chars)
    return tuple(document_view(d) for d in docs)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = redact(" ".join(text.split()))
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _value_at(value: Any, path: str) -> Any:
    """``items[3].sku`` of a value's JSON form; None when it is not there."""
    obj = value
    for part in path.replace("]", "").replace("[", ".").split("."):
        if isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, dict) and part in obj:
            obj = obj[part]
        else:
            return None
    return obj


def _rejected_value(raw: Any) -> Any:
    """The value an attempt sent, from its recorded error: Pydantic's input as ``repr`` writes it (cut
    at 200 characters; ``_steps``) read back as the literal it is; None for a structure."""
    if not isinstance(raw, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw[1:] if raw[:1] in ("'", '"') else None  # a text cut short: what it starts with
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None


def _where(start: int, end: int, page: Any = None) -> str:
    return f"{start}-{end}" + (f" (page {page})" if page is not None else "")


def _reason(doc: ReviewDocument) -> str:
    """Why the document is to review: unresolved, or what it took, and OCR'd pages to check (low
    confidence or little text read)."""
    why = _took(doc)
    if doc.low_pages:
        pages = ", ".join(str(p) for p in doc.low_pages[:10]) + (", ..." if len(doc.low_pages) > 10 else "")
        word = "pages" if len(doc.low_pages) > 1 else "page"
        ocr = f"OCR to check on {word} {pages} (low confidence or little text read)"
        lone = doc.status != "failed" and doc.n_attempts <= 1 and not doc.n_chunks
        return ocr if lone else f"{why}; {ocr}"
    return why


def _took(doc: ReviewDocument) -> str:
    """Unresolved, or what it took. A long document's attempts are one per chunk, not re-asks:
    its reason counts its chunks, re-asks, retries and tiers."""
    if not doc.n_chunks:
        return "unresolved" if doc.status == "failed" else (
            f"resolved by {doc.tier} after {doc.n_attempts} attempts (re-asked or escalated)")  # fmt: skip
    if doc.status == "failed":
        return f"unresolved ({doc.n_chunks} chunks)"
    took = [plural(doc.n_reasks, "re-ask or retry", "re-asks or retries")] if doc.n_reasks else []
    if doc.n_tiers > 1:
        took.append(f"escalation through {doc.n_tiers} tiers")
    after = f" after {' and '.join(took)}" if took else ""
    return f"resolved by {doc.tier} in {doc.n_chunks} chunks{after}"


def document_view(doc: ReviewDocument) -> DocumentView:
    title = redact(doc.path or doc.document_sha256 or doc.extraction_id)
    reason = _reason(doc)
    error = redact(doc.error) if doc.error else None
    if doc.text is None:
        return DocumentView(title, doc.document_sha256, doc.status, reason, None, False, (), (), 0,
                            doc.text_chars or 0)  # fmt: skip
    text = doc.text
    shown = len(text)
    value = json.loads(doc.value_json) if doc.value_json else None
    spans = json.loads(doc.spans_json) if doc.spans_json else {}
    marks: list[Mark] = []
    ranges: list[tuple[int, int, str, str]] = []  # (start, end, kind, field)
    for field, found in spans.items():
        v = _value_at(value, field)
        places = []
        for s in found:
            start, end = int(s["start"]), int(s["end"])
            if end > shown:
                places.append(_where(start, end, s.get("page")) + " after the text shown")
            elif v is not None and SourceIndex(text[start:end]).contains(v):  # still its value there
                ranges.append((start, end, "accepted", field))
                places.append(_where(start, end, s.get("page")))
        marks.append(Mark("accepted", field, _shown(v), ", ".join(places) or "not shown"))
    seen: set[tuple[str, str]] = set()
    for tier, number, outcome, e in doc.rejected:
        got = _rejected_value(e.get("input"))
        loc = ".".join(str(p) for p in e.get("loc") or ()) or "(root)"
        if got is None or isinstance(got, (dict, list, bool)) or (loc, repr(got)) in seen:
            continue
        seen.add((loc, repr(got)))
        found = value_spans(got, text) if str(got).strip() else []
        for s in found:
            ranges.append((s.start, s.end, "rejected", loc))
        where = ", ".join(_where(s.start, s.end) for s in found) or "not in the text shown"
        marks.append(Mark("rejected", loc, _shown(got), where, f"{tier} #{number} {outcome}"))
    pieces = tuple(segments(text, ranges))
    return DocumentView(title, doc.document_sha256, doc.status, reason, error, True, pieces, tuple(marks),
                        shown, doc.text_chars or shown)  # fmt: skip


def segments(text: str, ranges: Sequence[tuple[int, int, str, str]]) -> list[Segment]:
    """``text`` cut into plain and highlighted pieces: accepted values before rejected ones where
    they overlap, a range overlapping one already placed left out (its field is still listed)."""
    placed: dict[tuple[int, int], tuple[str, list[str]]] = {}
    starts: list[int] = []  # of the placed ranges, sorted (they do not overlap)
    ends: list[int] = []
    for start, end, kind, field in sorted(ranges, key=lambda r: (r[2] != "accepted", r[0], -r[1])):
        same = placed.get((start, end))
        if same is not None:
            if same[0] == kind and field not in same[1]:
                same[1].append(field)
            continue
        i = bisect.bisect_right(starts, start)
        if (i > 0 and ends[i - 1] > start) or (i < len(starts) and starts[i] < end):
            continue
        starts.insert(i, start)
        ends.insert(i, end)
        placed[(start, end)] = (kind, [field])
    out, at = [], 0
    for start, end in zip(starts, ends, strict=True):
        kind, fields = placed[(start, end)]
        if start > at:
            out.append(Segment(redact(text[at:start])))
        out.append(Segment(redact(text[start:end]), kind, ", ".join(fields)))
        at = end
    if at < len(text):
        out.append(Segment(redact(text[at:])))
    return out
