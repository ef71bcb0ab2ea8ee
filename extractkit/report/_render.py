"""Rendering the report: terminal (rich), CSV, and the formatting both share.

Model output and paths are printed with markup off, so a value like ``[red]`` or ``<script>``
is shown as text.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def money(v: float | None, none: str = "unknown") -> str:
    if v is None:
        return none
    if v == 0:
        return "$0"
    if abs(v) >= 1:
        return f"${v:,.2f}"
    whole, _, frac = f"{v:.6f}".partition(".")
    return f"${whole}.{frac.rstrip('0'):0<2}"


def count(n: int) -> str:
    return f"{n}" if n < 10_000 else f"{n / 1000:.0f}k" if n < 10_000_000 else f"{n / 1e6:.0f}M"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}" if v in (0, 1) or 0.1 <= v <= 0.9 else f"{v:.1%}"


def secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}s" if v < 10 else f"{v:.0f}s"


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + " UTC"


DECISION_STYLE = {"keep": "bold green", "drop": "bold red", "not_enough_evidence": "bold yellow"}


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def scope_line(report: dict[str, Any]) -> str:
    s = report["scope"]
    parts = [
        f"schema {s['schema']}" if s.get("schema") else "all schemas",
        f"run {s['run_id']}" if s.get("run_id") else "all runs",
    ]
    if s.get("config_hash"):
        parts.append(f"config {s['config_hash']}")
    if s.get("since") is not None or s.get("until") is not None:
        parts.append(f"{when(s.get('since'))} to {when(s.get('until'))}")
    return ", ".join(parts)


def print_report(report: dict[str, Any], console: Console) -> None:
    t = report["totals"]
    console.print(Text(f"extractkit report: {scope_line(report)}", style="bold"))
    if not t["documents"]:
        console.print(report["verdict"], markup=False, highlight=False)
        return
    console.print(
        f"{t['documents']} documents ({when(t['first_at'])} to {when(t['last_at'])}): "
        f"{t['ok']} valid ({pct(t['success_rate'])}), {t['failed']} unresolved; "
        f"cost {money(t['cost_usd'])}, per valid extraction {money(t['cost_per_valid_usd'], 'n/a')}; "
        f"latency p50 {secs(t['latency_p50_s'])} p95 {secs(t['latency_p95_s'])}",
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
    for r in report["tiers"]:
        ci = r["success_ci"]
        results.add_row(
            Text(r["tier"]),
            str(r["reached"]),
            str(r["resolved"]),
            pct(r["success_rate"]),
            f"{pct(ci[0])}-{pct(ci[1])}" if ci else "-",
            pct(r["share_resolved"]),
        )
        effort.add_row(
            Text(r["tier"]),
            str(r["attempts"]),
            str(r["reasks"]),
            f"{count(r['prompt_tokens'])}/{count(r['completion_tokens'])}",
            money(r["cost_usd"]),
            money(r["cost_per_valid_usd"], "-"),
            secs(r["latency_p50_s"]),
            secs(r["latency_p95_s"]),
        )
    console.print(results)
    console.print(effort)
    for r in report["tiers"]:
        if r["failure_outcomes"]:
            outcomes = ", ".join(f"{k} {v}" for k, v in r["failure_outcomes"].items())
            console.print(f"  {r['tier']} failed attempts: {outcomes}", markup=False, highlight=False)
    un = report["unresolved"]
    if un["by_outcome"]:
        why = ", ".join(f"{k} {v}" for k, v in un["by_outcome"].items())
        console.print(f"unresolved documents by last outcome: {why}", markup=False, highlight=False)
        for e in un["examples"][:5]:
            console.print(
                f"  {e['path'] or e['document_sha256'][:12]}: {first_line(e['error'] or e['outcome'])}",
                markup=False,
                highlight=False,
            )
    if report["document_errors"]:
        errs = ", ".join(f"{k} {v}" for k, v in report["document_errors"].items())
        console.print(f"unreadable documents (never sent): {errs}", markup=False, highlight=False)
    econ = report["economics"]
    served: dict[str, list[str]] = {}
    for r in report.get("served_models", []):
        fp = f" ({r['fingerprint']})" if r["fingerprint"] else ""
        key = f"{r['tier']} ({r['model']})"
        served.setdefault(key, []).append(f"{r['served_model']}{fp} since {when(r['first_seen'])}")
    if served:
        console.print("models that answered: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in served.items()),
                      markup=False, highlight=False)  # fmt: skip
    for note in report.get("notes", []):
        console.print(Text("note: " + note, style="yellow"))
    for r in report["rescue"]:
        line = (
            f"rescue by {r['tier']} (after {' -> '.join(r['after']) or 'nothing'}): {r['rescued']} of "
            f"{r['documents']} documents; their cost {money(r['rescue_cost_usd'])} "
            f"({money(r['own_cost_usd'])} in {r['tier']}, {money(r['lower_cost_usd'])} in earlier tiers), "
            f"{money(r['cost_per_rescued_usd'], '-')} per rescued document; "
            f"{r['tier']} spent {money(r['tier_cost_usd'])} in all"
        )
        if r["break_even_documents"] is not None:
            line += f"; break-even after {r['break_even_documents']:,.0f} documents"
        console.print(line, markup=False, highlight=False)
    training = f", training costs {money(econ['training_cost'])}" if econ["training_cost"] is not None else ""
    console.print(
        f"assumptions: a failure costs {money(econ['failure_cost'])}{training}; a tier must rescue at least "
        f"{pct(econ['min_share'])} of documents; a verdict needs {econ['min_documents']} documents "
        "(--failure-cost, --training-cost, --min-share, --min-documents)",
        markup=False,
        highlight=False,
    )
    d = report["drift"]
    if d["flagged"]:
        console.print(Text("drift: " + "; ".join(d["flagged"]), style="bold yellow"))
    elif d["tiers"] and all(i.get("note") for i in d["tiers"]):
        console.print(
            f"drift: too few documents to compare the last {d['recent']['days']:g} days with the "
            f"{d['baseline']['days']:g} before (20 per tier per window)",
            markup=False,
            highlight=False,
        )
    elif d["tiers"]:
        console.print(
            f"drift: no significant change, last {d['recent']['days']:g} days against the "
            f"{d['baseline']['days']:g} before",
            markup=False,
            highlight=False,
        )
    print_verdicts(report["verdicts"], report["verdict"], console)


def print_verdicts(verdicts: list[dict[str, Any]], headline: str, console: Console) -> None:
    for v in verdicts:
        console.print(Text(v["sentence"], style=DECISION_STYLE.get(v["decision"], "")))
        for reason in v["reasons"]:
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
)


def report_csv(report: dict[str, Any]) -> str:
    """One row per tier (the table a spreadsheet wants); the rest is in --json."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TIER_CSV)
    for r in report["tiers"]:
        ci = r["success_ci"] or [None, None]
        row = {
            **r,
            "models": " ".join(r["models"]),
            "success_ci_low": ci[0],
            "success_ci_high": ci[1],
            "failure_outcomes": " ".join(f"{k}={v}" for k, v in r["failure_outcomes"].items()),
        }
        w.writerow(["" if row.get(c) is None else row[c] for c in TIER_CSV])
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    """A report / eval file (CSV, HTML), redacted, replaced atomically."""
    from .._redact import redact

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(redact(text), encoding="utf-8")
    tmp.replace(path)
