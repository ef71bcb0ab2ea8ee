"""The report as a small tree of typed, frozen values; its serialisation is the ``--json`` output.

::

    Report
    ├── scope: ReportScope              what the report covers, and as of when
    ├── economics: Economics            the assumptions the verdicts use
    ├── totals: Totals                  the chain over the documents in scope
    ├── tiers: (TierStats, ...)         per tier, in chain order
    │   └── ungrounded_fields: (FieldCount, ...)
    ├── unresolved: Unresolved          documents no tier resolved, by last outcome, with examples
    ├── document_errors: {outcome: n}   documents that could not be read
    ├── rescue: (Rescue, ...)           what each tier after the first rescued, at what cost
    ├── verdicts: (Verdict, ...)        keep / drop / not enough evidence, per tier after the first
    ├── verdict: str                    the headline sentence
    ├── drift: Drift                    recent window against the one before it, per tier
    ├── served_models: (ServedModel, ...)
    ├── trend: (TrendDay, ...)
    ├── sampled: Sampled                how the latency percentiles were sampled
    ├── field_failures: FieldFailures   the fields that failed most often, per tier
    ├── versions: Versions              per tier, each prompt / examples / k-select version, compared
    ├── checklist: Checklist            the cheap things, tried or not, before the fine-tuned verdict
    ├── notes: (str, ...)
    ├── ways: (Way, ...)                by way (live / batch / mixed): only when batch attempts exist
    ├── saving_usd, saving_ratio        what the Batch API saved (only then too)
    ├── sources: Sources                text layer / OCR / mixed, low-confidence OCR'd documents
    │                                   (only when documents with pages are in scope)
    └── queries: (Query, ...)           every SQL query run, with its parameters

Pydantic (already a dependency) rather than dataclasses: one ``model_dump`` gives the JSON form
(nested values, tuples as lists, field order as key order), and ``Report.model_validate`` reads
that form back, so a renderer can take a report saved with ``--json`` as readily as a fresh one.
Values are frozen and their sequences are tuples; the few mappings (outcome -> count) are plain
dicts inside a frozen value. Numbers are data, never formatted: words are the renderers' job.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer
from pydantic_core.core_schema import SerializerFunctionWrapHandler

from ._verdict import Economics, Verdict

Number = int | float  # a count or an amount given as an int stays an int in the JSON, as before


class Value(BaseModel):
    """Base of the report's values: frozen, no unknown keys."""

    # constants: an infinite z (a change with no spread) stays -inf / Infinity in the JSON, as before
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, ser_json_inf_nan="constants"
    )


class Sparse(Value):
    """A value whose optional keys (those with a default) are in its JSON only when they were set:
    a drift item has ``note`` or the z values, never both."""

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        required = {name for name, f in type(self).model_fields.items() if f.is_required()}
        return {k: v for k, v in data.items() if k in required or k in self.model_fields_set}


class ReportScope(Value):
    schema_name: str | None = Field(alias="schema")
    run_id: str | None
    since: float | None
    until: float | None
    config_hash: str | None
    as_of: float


class Totals(Value):
    documents: int
    ok: int
    failed: int
    success_rate: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Number | None
    cost_per_valid_usd: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    first_at: float | None
    last_at: float | None
    configs: int
    schemas: int


class FieldCount(Value):
    field: str
    n: int


class TierStats(Value):
    tier: str
    reached: int
    resolved: int
    attempts: int
    reasks: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    unpriced_attempts: int
    models: tuple[str, ...]
    failure_outcomes: dict[str, int]  # most frequent first
    kind: str | None
    success_rate: float | None
    success_ci: tuple[float, float] | None
    share_resolved: float | None
    cost_per_attempt_usd: float | None
    cost_per_valid_usd: float | None
    first_attempt_at: float | None
    last_attempt_at: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    ungrounded_fields: tuple[FieldCount, ...]  # most often rejected first


class UnresolvedExample(Value):
    path: str | None
    document_sha256: str | None
    outcome: str | None
    error: str | None


class Unresolved(Value):
    by_outcome: dict[str, int]
    documents: int
    examples: tuple[UnresolvedExample, ...]
    more: int


class Rescue(Value):
    tier: str
    kind: str | None
    after: tuple[str, ...]
    documents: int
    rescued: int
    own_cost_usd: float | None
    lower_cost_usd: float | None
    rescue_cost_usd: float | None
    cost_per_rescued_usd: float | None
    tier_cost_usd: float | None
    marginal_cost_per_rescue_usd: float | None
    failures_avoided_usd: float
    break_even_documents: float | None


class Window(Sparse):
    reached: int
    resolved: int
    success_rate: float | None
    cost_usd: float | None = None  # absent when the window saw nothing of the tier
    cost_per_valid_usd: float | None


class DriftTier(Sparse):
    tier: str
    recent: Window
    baseline: Window
    flags: tuple[str, ...]
    note: str | None = None  # too few documents to compare: no z values
    success_z: float | None = None
    cost_per_attempt_z: float | None = None


class Span(Value):
    since: float
    until: float
    days: Number


class ModelChange(Value):
    tier: str
    model: str
    before: tuple[str, ...]
    new: tuple[str, ...]
    sentence: str


class Drift(Value):
    model_changes: tuple[ModelChange, ...]
    recent: Span
    baseline: Span
    tiers: tuple[DriftTier, ...]
    flagged: tuple[str, ...]


class ServedModel(Value):
    tier: str
    model: str
    served_model: str
    fingerprint: str
    first_seen: float
    last_seen: float


class TrendDay(Value):
    day: str
    documents: int
    ok: int
    cost_usd: float
    resolved_by_tier: dict[str, int]
    cost_per_valid_usd: float | None


class Sampled(Value):
    attempt_latency_every: int
    document_latency_every: int


class ValueCount(Value):
    value: str
    n: int


class FieldFailure(Value):
    tier: str
    field: str
    validation: int
    ungrounded: int
    values: tuple[ValueCount, ...] | None  # None: not shown (store_text off)
    failures: int


class FieldFailures(Value):
    rows: tuple[FieldFailure, ...]
    values_hidden: str | None
    sample_per_tier_and_outcome: int
    outcomes: tuple[str, ...]


class Version(Value):
    """One version of one tier's setting (``dimension``: its prompt, its examples file, its k and
    select), identified by content: the prompt's hash (``instructions`` included), the examples'
    hash as validated, ``k=3 select=similar``."""

    tier: str
    dimension: str  # prompt | examples | k_select
    version: str
    configs: int  # chain configs in scope whose chain has this version
    first_used: float | None
    last_used: float | None
    documents: int  # documents the tier was sent with this version (reached)
    resolved: int
    success_rate: float | None
    success_ci: tuple[float, float] | None
    cost_usd: float | None  # None when some attempt had no price
    cost_per_valid_usd: float | None
    failure_outcomes: dict[str, int]  # failed attempts by outcome, most frequent first
    best: bool  # the highest success rate of the versions with at least min_documents documents


class VersionComparison(Value):
    """Two versions of one tier's setting on the documents both were sent (a paired comparison):
    ``a`` first used earlier than ``b``; ``only_a`` documents a resolved and b did not; exact McNemar."""

    tier: str
    dimension: str
    a: str
    b: str
    documents: int
    resolved_a: int
    resolved_b: int
    only_a: int
    only_b: int
    p_value: float


class Versions(Value):
    rows: tuple[Version, ...]  # per tier (chain order), dimension, first used first
    comparisons: tuple[VersionComparison, ...]
    min_documents: int  # a version needs this many documents to count (--min-version-documents)


class ChecklistItem(Value):
    key: str  # prompts | examples | retrieval | input | gap
    question: str
    answer: str  # yes | no | not_enough_evidence
    detail: str  # the numbers behind the answer, in words
    numbers: dict[str, Any]


class Checklist(Value):
    target_success: float | None
    min_version_documents: int
    items: tuple[ChecklistItem, ...]
    complete: bool  # every answer is yes
    conclusion: str  # said beside the verdict on the fine-tuned tier


class Query(Value):
    name: str
    sql: str
    params: tuple[Any, ...] | dict[str, Any]  # positional or named, as the query takes them


class Way(Value):
    """The documents in scope whose attempts went one way: ``live``, ``batch`` (the provider's Batch
    API) or ``mixed`` (some of each, e.g. a batch tier then a live one)."""

    via: str
    documents: int
    ok: int
    cost_usd: float | None  # None when some attempt had no price
    cost_per_valid_usd: float | None
    live_cost_usd: float | None  # what the same attempts cost, or would have cost, live; None: unknown


class Chunked(Value):
    """The documents in scope longer than a tier's context, extracted in chunks and merged: how
    many, their chunks, the conflicts between chunks, and what they cost (every chunk's attempts:
    in ``Totals.cost_usd`` too, per document)."""

    documents: int
    chunks: int
    conflicts: int
    cost_usd: float | None  # None when some attempt had no price


class LowConfidenceDocument(Value):
    """A document in scope with OCR'd pages whose confidence is under the recorded threshold."""

    path: str | None
    document_sha256: str
    source: str  # ocr | mixed
    pages: tuple[int, ...]  # the low pages
    n_pages: int
    min_confidence: float | None
    mean_confidence: float | None
    threshold: float | None


class Sources(Value):
    """Where the text of the documents in scope came from (documents loaded with pages: PDFs and
    images; plain text files have no pages and are not counted here)."""

    documents: dict[str, int]  # text | ocr | mixed (| none) -> documents
    ocr_documents: int  # read wholly (ocr) or partly (mixed) by OCR
    ocr_pages: int
    mean_confidence: float | None  # over the OCR'd pages
    low_confidence_documents: int  # with at least one page under the threshold
    low_confidence: tuple[LowConfidenceDocument, ...]  # the lowest first, at most LOW_SHOWN


class Report(Sparse):
    """Everything ``extractkit report`` shows. ``to_dict()`` is the ``--json`` output (before
    redaction); ``Report.from_dict`` reads it back. ``ways``, ``saving_usd`` and ``saving_ratio``
    are there only when the scope holds batch attempts (a live-only report is as before)."""

    scope: ReportScope
    economics: Economics
    totals: Totals
    tiers: tuple[TierStats, ...]
    unresolved: Unresolved
    document_errors: dict[str, int]
    rescue: tuple[Rescue, ...]
    verdicts: tuple[Verdict, ...]
    verdict: str
    drift: Drift
    served_models: tuple[ServedModel, ...]
    trend: tuple[TrendDay, ...]
    sampled: Sampled
    field_failures: FieldFailures
    versions: Versions
    checklist: Checklist
    notes: tuple[str, ...]
    queries: tuple[Query, ...]
    ways: tuple[Way, ...] = ()  # live, batch, mixed (those with documents)
    # what the batch and mixed documents' attempts would have cost live minus what they cost
    # (None: a price unknown), and what they cost as a share of that
    saving_usd: float | None = None
    saving_ratio: float | None = None
    chunked: Chunked | None = None  # only when the scope holds documents extracted in chunks
    # where the documents' text came from (text layer, OCR): only when the scope holds documents
    # loaded with pages (PDFs, images), so a report of text files is as before
    sources: Sources | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (lists and dicts), the keys the ``--json`` output has."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, data: Report | dict[str, Any]) -> Report:
        """A report from its plain data (``to_dict()``, or ``--json`` read back); a Report as is."""
        return data if isinstance(data, Report) else cls.model_validate(data)
