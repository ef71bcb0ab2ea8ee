"""Rendering the report: terminal (rich) and CSV, from its typed values (``_model``).

Model output and paths are printed with markup off, so a value like ``[red]`` or ``<script>``
is shown as text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._words import plural
from ._format import (
    count,
    first_line,
    low_confidence_line,
    money,
    pct,
    per_valid,
    saving_line,
    secs,
    short_version,
    sources_line,
    when,
)
from ._model import Checklist, Report, Unresolved, ValueCount, Versions
from ._verdict import Verdict

TERMINAL_UNRESOLVED = 5  # unresolved documents listed in the terminal (the JSON and HTML list more)
TERMINAL_FIELDS = 5  # fields per tier in the terminal's failure table


def unresolved_more(un: Unresolved, shown: int) -> str | None:
    """``and N more ...`` under a list of ``shown`` unresolved documents, with where to see them."""
    listed = len(un.examples)
    total = max(un.documents, listed)
    if total <= shown:
        return None
    if shown < listed:
        where = f"--json and --html list the {listed} most recent"
        if total > listed:
            where += "; the query `unresolved_examples` in --json, without its LIMIT, lists them all"
    else:
        where = "the query `unresolved_examples` in --json, without its LIMIT, lists them all"
    return f"... and {total - shown} more ({where})"


def value_counts(values: Sequence[ValueCount] | None) -> str:
    if values is None:
        return "(not shown)"
    return ", ".join(f"{v.value} ({v.n})" for v in values) or "-"


def print_field_failures(report: Report, console: Console) -> None:
    ff = report.field_failures
    if not ff.rows:
        return
    table = Table(title="fields that failed most often, per tier (most recent failed attempts)",
                  title_justify="left", box=box.SIMPLE_HEAD)  # fmt: skip
    for c in ("tier", "field", "validation", "ungrounded", "rejected values (times)"):
        table.add_column(c, justify="right" if c in ("validation", "ungrounded") else "left",
                         no_wrap=c != "rejected values (times)")  # fmt: skip
    left: dict[str, int] = {}
    for r in ff.rows:
        n = left.get(r.tier, 0)
        left[r.tier] = n + 1
        if n >= TERMINAL_FIELDS:
            continue
        table.add_row(Text(r.tier), Text(r.field), str(r.validation), str(r.ungrounded),
                      Text(value_counts(r.values)))  # fmt: skip
    console.print(table)
    more = {t: n - TERMINAL_FIELDS for t, n in left.items() if n > TERMINAL_FIELDS}
    if more:
        console.print("  and " + ", ".join(f"{plural(n, 'more field')} in {t}" for t, n in more.items())
                      + " (--json, --html)", markup=False, highlight=False)  # fmt: skip
    if ff.values_hidden:
        console.print(f"  {ff.values_hidden}", markup=False, highlight=False)


DECISION_STYLE = {"keep": "bold green", "drop": "bold red", "not_enough_evidence": "bold yellow"}


def scope_line(report: Report) -> str:
    s = report.scope
    parts = [
        f"schema {s.schema_name}" if s.schema_name else "all schemas",
        f"run {s.run_id}" if s.run_id else "all runs",
    ]
    if s.config_hash:
        parts.append(f"config {s.config_hash}")
    if s.since is not None or s.until is not None:
        parts.append(f"{when(s.since)} to {when(s.until)}")
    return ", ".join(parts)


ANSWER_STYLE = {"yes": "green", "no": "red", "not_enough_evidence": "yellow"}
ANSWER_WORDS = {"yes": "yes", "no": "no", "not_enough_evidence": "not enough evidence"}
DIMENSION_WORDS = {"prompt": "prompt", "examples": "examples", "k_select": "k / select"}
BY = ("tier", "prompt", "checklist")  # what `report --by` shows in full


def print_checklist(checklist: Checklist, console: Console) -> None:
    """One line per question, its answer and the numbers behind it."""
    target = f", target {pct(checklist.target_success)}" if checklist.target_success is not None else ""
    console.print(Text(f"checklist before fine-tuning{target}:", style="bold"))
    for i in checklist.items:
        line = Text("  ")
        line.append(f"[{ANSWER_WORDS.get(i.answer, i.answer)}]", style=ANSWER_STYLE.get(i.answer, ""))
        line.append(f" {i.question} {i.detail}")
        console.print(line)


def print_versions_compact(versions: Versions, console: Console) -> None:
    """Per tier, how many prompt versions, the best against the first: one line (--by prompt: in full)."""
    parts = []
    for tier in dict.fromkeys(v.tier for v in versions.rows):
        vs = [v for v in versions.rows if v.tier == tier and v.dimension == "prompt"]
        counted = [v for v in vs if v.documents >= versions.min_documents]
        part = f"{tier} {len(vs)}"
        best = next((v for v in counted if v.best), None)
        if best is not None:
            first = pct(counted[0].success_rate)
            part += f" (best {short_version(best.version)} {pct(best.success_rate)}, first {first})"
        parts.append(part)
    if parts:
        console.print("prompt versions: " + "; ".join(parts) + " (--by prompt: every version, compared)",
                      markup=False, highlight=False)  # fmt: skip


def print_versions(versions: Versions, console: Console) -> None:
    """Every version of every tier's prompt, examples and k / select, and the paired comparisons."""
    table = Table(title=f"versions per tier (counted from {plural(versions.min_documents, 'document')}; "
                  "* the best)", title_justify="left", box=box.SIMPLE_HEAD)  # fmt: skip
    right = ("documents", "resolved", "per valid")
    columns = ("tier", "setting", "version", "first used", "last used", *right[:2], "success (95% CI)")
    for c in (*columns, right[2], "failed attempts"):
        table.add_column(c, justify="right" if c in right else "left")
    for v in versions.rows:
        ci = f" ({pct(v.success_ci[0])}-{pct(v.success_ci[1])})" if v.success_ci else ""
        name = ("* " if v.best else "") + short_version(v.version)
        table.add_row(
            Text(v.tier), DIMENSION_WORDS.get(v.dimension, v.dimension), Text(name),
            when(v.first_used), when(v.last_used), str(v.documents), str(v.resolved),
            pct(v.success_rate) + ci,
            per_valid(v.cost_per_valid_usd, v.resolved, "-"),
            Text(", ".join(f"{k} {n}" for k, n in v.failure_outcomes.items()) or "none"),
        )  # fmt: skip
    console.print(table)
    if not versions.comparisons:
        console.print("  no two versions of a tier's setting were sent the same documents: nothing to pair",
                      markup=False, highlight=False)  # fmt: skip
        return
    pairs = Table(title="paired comparisons (documents both versions were sent; exact McNemar)",
                  title_justify="left", box=box.SIMPLE_HEAD)  # fmt: skip
    left = ("tier", "setting", "a (earlier)", "b")
    for c in (*left, "documents", "resolved a", "resolved b", "only a", "only b", "p"):
        pairs.add_column(c, justify="left" if c in left else "right")
    for x in versions.comparisons:
        pairs.add_row(Text(x.tier), DIMENSION_WORDS.get(x.dimension, x.dimension), Text(short_version(x.a)),
                      Text(short_version(x.b)), str(x.documents), str(x.resolved_a), str(x.resolved_b),
                      str(x.only_a), str(x.only_b), f"{x.p_value:.2g}")  # fmt: skip
    console.print(pairs)


def print_ways(report: Report, console: Console) -> None:
    """Cost per valid extraction by way (live / batch / mixed) and the saving: only when some
    attempts went by the Batch API."""
    if not report.ways:
        return
    table = Table(title="by way (live requests or the provider's Batch API)", title_justify="left",
                  box=box.SIMPLE_HEAD)  # fmt: skip
    for c in ("way", "documents", "valid", "cost", "per valid", "at live prices"):
        table.add_column(c, justify="left" if c == "way" else "right", no_wrap=True)
    for w in report.ways:
        table.add_row(Text(w.via), str(w.documents), str(w.ok), money(w.cost_usd),
                      per_valid(w.cost_per_valid_usd, w.ok, "-"), money(w.live_cost_usd))  # fmt: skip
    console.print(table)
    console.print(saving_line(report.saving_usd, report.saving_ratio), markup=False, highlight=False)


def print_report(data: Report | dict[str, Any], console: Console, by: str = "tier") -> None:
    """The report in the terminal (a Report, or its plain data as ``--json`` prints it). ``by``:
    ``prompt`` shows the prompt versions in full, then the checklist; ``checklist`` the checklist alone."""
    report = Report.from_dict(data)
    t = report.totals
    console.print(Text(f"extractkit report: {scope_line(report)}", style="bold"))
    if by == "prompt":
        print_versions(report.versions, console)
        print_checklist(report.checklist, console)
        console.print(Text("checklist: " + report.checklist.conclusion, style="bold"))
        return
    if by == "checklist":
        print_checklist(report.checklist, console)
        console.print(Text("checklist: " + report.checklist.conclusion, style="bold"))
        return
    if not t.documents:
        console.print(report.verdict, markup=False, highlight=False)
        print_document_errors(report, console)  # documents were met, none could be read
        if report.document_errors:
            print_checklist(report.checklist, console)
        return
    console.print(
        f"{plural(t.documents, 'document')} ({when(t.first_at)} to {when(t.last_at)}): "
        f"{t.ok} valid ({pct(t.success_rate)}), {t.failed} unresolved; "
        f"cost {money(t.cost_usd)}, "
        f"per valid extraction {per_valid(t.cost_per_valid_usd, t.ok, 'n/a')}; "
        f"latency p50 {secs(t.latency_p50_s)} p95 {secs(t.latency_p95_s)}",
        markup=False,
        highlight=False,
    )
    results = Table(title="tiers in chain order: results", title_justify="left", box=box.SIMPLE_HEAD)
    effort = Table(
        title="tiers in chain order: effort", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for c in ("tier", "reached", "resolved", "success", "95% CI", "share of all"):
        results.add_column(c, justify="left" if c == "tier" else "right", no_wrap=True)
    for c in ("tier", "attempts", "re-asks", "tokens", "cost", "per valid", "p50", "p95"):
        effort.add_column(c, justify="left" if c == "tier" else "right", no_wrap=True)
    for r in report.tiers:
        ci = r.success_ci
        results.add_row(
            Text(r.tier),
            str(r.reached),
            str(r.resolved),
            pct(r.success_rate),
            f"{pct(ci[0])}-{pct(ci[1])}" if ci else "-",
            pct(r.share_resolved),
        )
        effort.add_row(
            Text(r.tier),
            str(r.attempts),
            str(r.reasks),
            f"{count(r.prompt_tokens)}/{count(r.completion_tokens)}",
            money(r.cost_usd),
            per_valid(r.cost_per_valid_usd, r.resolved, "-"),
            secs(r.latency_p50_s),
            secs(r.latency_p95_s),
        )
    console.print(results)
    console.print(effort)
    for r in report.tiers:
        if r.failure_outcomes:
            outcomes = ", ".join(f"{k} {v}" for k, v in r.failure_outcomes.items())
            console.print(f"  {r.tier} failed attempts: {outcomes}", markup=False, highlight=False)
    un = report.unresolved
    if un.by_outcome:
        why = ", ".join(f"{k} {v}" for k, v in un.by_outcome.items())
        console.print(f"unresolved documents by last outcome: {why}", markup=False, highlight=False)
        for e in un.examples[:TERMINAL_UNRESOLVED]:
            console.print(
                f"  {e.path or (e.document_sha256 or '')[:12]}: {first_line(e.error or e.outcome or '')}",
                markup=False,
                highlight=False,
            )
        more = unresolved_more(un, TERMINAL_UNRESOLVED)
        if more:
            console.print(f"  {more}", markup=False, highlight=False)
    print_ways(report, console)
    print_field_failures(report, console)
    print_document_errors(report, console)
    print_sources(report, console)
    econ = report.economics
    served: dict[str, list[str]] = {}
    for m in report.served_models:
        fp = f" ({m.fingerprint})" if m.fingerprint else ""
        seen = f"{m.served_model}{fp} since {when(m.first_seen)}"
        served.setdefault(f"{m.tier} ({m.model})", []).append(seen)
    if served:
        console.print("models that answered: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in served.items()),
                      markup=False, highlight=False)  # fmt: skip
    for note in report.notes:
        console.print(Text("note: " + note, style="yellow"))
    for x in report.rescue:
        line = (
            f"rescue by {x.tier} (after {' -> '.join(x.after) or 'nothing'}): {x.rescued} of "
            f"{plural(x.documents, 'document')}; their cost {money(x.rescue_cost_usd)} "
            f"({money(x.own_cost_usd)} in {x.tier}, {money(x.lower_cost_usd)} in earlier tiers), "
            f"{money(x.cost_per_rescued_usd, '-')} per rescued document; "
            f"{x.tier} spent {money(x.tier_cost_usd)} in all"
        )
        if x.break_even_documents is not None:
            line += f"; break-even after {plural(x.break_even_documents, 'document')}"
        console.print(line, markup=False, highlight=False)
    training = f", training costs {money(econ.training_cost)}" if econ.training_cost is not None else ""
    console.print(
        f"assumptions: a failure costs {money(econ.failure_cost)}{training}; a tier must rescue at least "
        f"{pct(econ.min_share)} of documents; a verdict needs {plural(econ.min_documents, 'document')} "
        "(--failure-cost, --training-cost, --min-share, --min-documents)",
        markup=False,
        highlight=False,
    )
    d = report.drift
    if d.flagged:
        console.print(Text("drift: " + "; ".join(d.flagged), style="bold yellow"))
    elif d.tiers and all(i.note for i in d.tiers):
        console.print(
            f"drift: too few documents to compare the last {d.recent.days:g} days with the "
            f"{d.baseline.days:g} before (20 per tier per window)",
            markup=False,
            highlight=False,
        )
    elif d.tiers:
        console.print(
            f"drift: no significant change, last {d.recent.days:g} days against the "
            f"{d.baseline.days:g} before",
            markup=False,
            highlight=False,
        )
    print_versions_compact(report.versions, console)
    print_checklist(report.checklist, console)
    print_verdicts(report.verdicts, report.verdict, console)
    # the checklist's conclusion beside the verdict's arithmetic
    console.print(Text("checklist: " + report.checklist.conclusion, style="bold"))


def print_sources(report: Report, console: Console) -> None:
    """Where the documents' text came from, and the documents with low-confidence OCR'd pages."""
    src = report.sources
    if src is None:
        return
    console.print(f"text: {sources_line(src)}", markup=False, highlight=False)
    for d in src.low_confidence[:TERMINAL_UNRESOLVED]:
        console.print(f"  low OCR confidence: {low_confidence_line(d)}", markup=False, highlight=False)
    more = src.low_confidence_documents - min(len(src.low_confidence), TERMINAL_UNRESOLVED)
    if more > 0:
        console.print(f"  and {more} more (--json lists up to {len(src.low_confidence)})", markup=False,
                      highlight=False)  # fmt: skip


def print_document_errors(report: Report, console: Console) -> None:
    if report.document_errors:
        errs = ", ".join(f"{k} {v}" for k, v in report.document_errors.items())
        console.print(f"unreadable documents (never sent): {errs}", markup=False, highlight=False)


def print_verdicts(verdicts: Sequence[Verdict | Mapping[str, Any]], headline: str, console: Console) -> None:
    """Each verdict's sentence and reasons, then the headline (report and eval; a verdict may be given
    as its plain data, as eval keeps it)."""
    for v in verdicts:
        v = Verdict.model_validate(v) if isinstance(v, Mapping) else v
        console.print(Text(v.sentence, style=DECISION_STYLE.get(v.decision, "")))
        for reason in v.reasons:
            console.print(f"  - {reason}", markup=False, highlight=False)
    if len(verdicts) != 1:  # with one verdict, it is the headline already printed
        console.print(Text(("verdict: " if verdicts else "") + headline, style="bold"))


TIER_CSV = (
    "tier",
    "kind",
    "models",
    "reached",
    "resolved",
    "success_rate",
    "success_ci_low",
    "success_ci_high",
    "share_resolved",
    "attempts",
    "reasks",
    "retries",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cost_per_attempt_usd",
    "cost_per_valid_usd",
    "latency_p50_s",
    "latency_p95_s",
    "failure_outcomes",
    "field_failures",
)
FIELD_CSV = ("tier", "field", "validation", "ungrounded", "failures", "rejected_values")


def report_csv(data: Report | dict[str, Any]) -> str:
    """One row per tier (the table a spreadsheet wants); the rest is in --json."""
    report = Report.from_dict(data)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TIER_CSV)
    fields = report.field_failures.rows
    for r in report.tiers:
        ci = r.success_ci or (None, None)
        row = {
            **r.model_dump(),
            "models": " ".join(r.models),
            "success_ci_low": ci[0],
            "success_ci_high": ci[1],
            "failure_outcomes": " ".join(f"{k}={v}" for k, v in r.failure_outcomes.items()),
            "field_failures": " ".join(
                f"{f.field}:{kind}={getattr(f, kind)}" for f in fields if f.tier == r.tier
                for kind in ("validation", "ungrounded") if getattr(f, kind)),
        }  # fmt: skip
        w.writerow(["" if row.get(c) is None else row[c] for c in TIER_CSV])
    return buf.getvalue()


def field_failures_csv(data: Report | dict[str, Any]) -> str:
    """The per-field failure table, one row per tier and field; ``rejected_values`` holds the most
    frequent values as ``value (times)``, empty when values are not shown (store_text off)."""
    report = Report.from_dict(data)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELD_CSV)
    for f in report.field_failures.rows:
        values = "" if f.values is None else value_counts(f.values)
        w.writerow([f.tier, f.field, f.validation, f.ungrounded, f.failures, values])
    return buf.getvalue()


VERSION_CSV = (
    "tier", "dimension", "version", "best", "configs", "first_used", "last_used", "documents", "resolved",
    "success_rate", "success_ci_low", "success_ci_high", "cost_usd", "cost_per_valid_usd", "failure_outcomes",
)  # fmt: skip
COMPARISON_CSV = ("tier", "dimension", "a", "b", "documents", "resolved_a", "resolved_b", "only_a", "only_b",
                  "p_value")  # fmt: skip
CHECKLIST_CSV = ("key", "question", "answer", "detail")


def versions_csv(data: Report | dict[str, Any]) -> str:
    """One row per tier, setting and version (``report --by prompt --csv``); then, after a blank line,
    the paired comparisons as a second table with its own header."""
    report = Report.from_dict(data)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(VERSION_CSV)
    for v in report.versions.rows:
        ci = v.success_ci or (None, None)
        row = {**v.model_dump(), "success_ci_low": ci[0], "success_ci_high": ci[1],
               "failure_outcomes": " ".join(f"{k}={n}" for k, n in v.failure_outcomes.items())}  # fmt: skip
        w.writerow(["" if row.get(c) is None else row[c] for c in VERSION_CSV])
    if report.versions.comparisons:
        w.writerow([])
        w.writerow(COMPARISON_CSV)
        for c in report.versions.comparisons:
            w.writerow([getattr(c, k) for k in COMPARISON_CSV])
    return buf.getvalue()


def checklist_csv(data: Report | dict[str, Any]) -> str:
    """One row per question (``report --by checklist --csv``), then the conclusion as a last row."""
    report = Report.from_dict(data)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CHECKLIST_CSV)
    for i in report.checklist.items:
        w.writerow([i.key, i.question, i.answer, i.detail])
    w.writerow(["conclusion", "Is the checklist complete?", "yes" if report.checklist.complete else "no",
                report.checklist.conclusion])  # fmt: skip
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    """A report / eval file (CSV, HTML), redacted, replaced atomically."""
    from .._files import write_atomic
    from .._redact import redact

    write_atomic(path, redact(text))
