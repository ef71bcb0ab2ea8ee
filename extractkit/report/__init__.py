"""Reports over the ledger: tier usage, rescue analysis, verdicts, drift; terminal, JSON, CSV, HTML.

Every number is SQL over the ledger's plain tables (the queries are returned with the report), so
it can be reproduced with any SQLite client.
"""

from ._aggregate import SQL, Scope, build_report
from ._html import report_html
from ._render import field_failures_csv, plural, print_report, print_verdicts, report_csv, write_text
from ._stats import documents_needed, mcnemar_exact, percentile, two_proportion_z, wilson
from ._verdict import DROP, KEEP, NO_DATA, UNDECIDED, Economics, Verdict, headline_sentence, marginal_verdict

__all__ = [
    "DROP",
    "KEEP",
    "NO_DATA",
    "SQL",
    "UNDECIDED",
    "Economics",
    "Scope",
    "Verdict",
    "build_report",
    "documents_needed",
    "field_failures_csv",
    "headline_sentence",
    "marginal_verdict",
    "mcnemar_exact",
    "percentile",
    "plural",
    "print_report",
    "print_verdicts",
    "report_csv",
    "report_html",
    "two_proportion_z",
    "wilson",
    "write_text",
]
