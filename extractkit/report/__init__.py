"""Reports over the ledger: tier usage, rescue analysis, verdicts, drift, prompt versions compared and
the checklist before fine-tuning; terminal, JSON, CSV, HTML.

Every number is SQL over the ledger's plain tables (the queries are returned with the report), so
it can be reproduced with any SQLite client. ``read_report`` returns the report as typed, frozen
values (``Report``, see ``_model``); ``build_report`` returns their plain data, the ``--json``
output. The renderers take either.
"""

from .._words import plural
from ._aggregate import SQL, Scope, build_report, check_scope_exists, read_report
from ._checklist import MIN_FORMULATIONS, MIN_VERSION_DOCUMENTS
from ._documents import DocumentView, read_documents
from ._format import money, pct, secs
from ._html import PALETTE, page_context, report_html, template_env
from ._model import (
    Checklist,
    ChecklistItem,
    Drift,
    DriftTier,
    FieldCount,
    FieldFailure,
    FieldFailures,
    ModelChange,
    Query,
    Report,
    ReportScope,
    Rescue,
    Sampled,
    ServedModel,
    Span,
    TierStats,
    Totals,
    TrendDay,
    Unresolved,
    UnresolvedExample,
    ValueCount,
    Version,
    VersionComparison,
    Versions,
    Window,
)
from ._render import (
    BY,
    checklist_csv,
    field_failures_csv,
    print_report,
    print_verdicts,
    report_csv,
    versions_csv,
    write_text,
)
from ._stats import documents_needed, mcnemar_exact, percentile, two_proportion_z, wilson
from ._verdict import DROP, KEEP, NO_DATA, UNDECIDED, Economics, Verdict, headline_sentence, marginal_verdict

__all__ = [
    "BY",
    "DROP",
    "KEEP",
    "MIN_FORMULATIONS",
    "MIN_VERSION_DOCUMENTS",
    "NO_DATA",
    "PALETTE",
    "SQL",
    "UNDECIDED",
    "Checklist",
    "ChecklistItem",
    "DocumentView",
    "Drift",
    "DriftTier",
    "Economics",
    "FieldCount",
    "FieldFailure",
    "FieldFailures",
    "ModelChange",
    "Query",
    "Report",
    "ReportScope",
    "Rescue",
    "Sampled",
    "Scope",
    "ServedModel",
    "Span",
    "TierStats",
    "Totals",
    "TrendDay",
    "Unresolved",
    "UnresolvedExample",
    "ValueCount",
    "Verdict",
    "Version",
    "VersionComparison",
    "Versions",
    "Window",
    "build_report",
    "check_scope_exists",
    "checklist_csv",
    "documents_needed",
    "field_failures_csv",
    "headline_sentence",
    "marginal_verdict",
    "mcnemar_exact",
    "money",
    "page_context",
    "pct",
    "percentile",
    "plural",
    "print_report",
    "print_verdicts",
    "read_documents",
    "read_report",
    "report_csv",
    "report_html",
    "secs",
    "template_env",
    "two_proportion_z",
    "versions_csv",
    "wilson",
    "write_text",
]
