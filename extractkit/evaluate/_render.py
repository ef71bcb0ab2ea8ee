"""The eval report in the terminal, as CSV and as one HTML page (shares the report's helpers)."""

from __future__ import annotations

import csv
import io
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..report import _html
from ..report._render import money, pct, print_verdicts, secs


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_eval(ev: dict[str, Any], console: Console) -> None:
    console.print(
        Text(f"extractkit eval: run {ev['run_id']}, {ev['documents']} gold documents", style="bold")
    )
    for note in ev["notes"]:
        console.print(Text("note: " + note, style="yellow"))
    for u in ev["unreadable"]:
        console.print(f"  unreadable: {u['path'] or u['gold_id']}", markup=False, highlight=False)
    t = Table(title="each tier alone", title_justify="left", box=box.SIMPLE_HEAD)
    for c in ("tier", "valid", "correct", "95% CI", "field P/R/F1", "per doc", "p50", "p95"):
        t.add_column(c, justify="left" if c == "tier" else "right", no_wrap=True)
    for r in ev["tiers"]:
        ci = r["accuracy_ci"]
        t.add_row(
            Text(r["tier"]),
            pct(r["valid_rate"]),
            pct(r["accuracy"]),
            f"{pct(ci[0])}-{pct(ci[1])}" if ci else "-",
            f"{_f(r['precision'])}/{_f(r['recall'])}/{_f(r['f1'])}",
            money(r["cost_per_document_usd"]),
            secs(r["latency_p50_s"]),
            secs(r["latency_p95_s"]),
        )
    console.print(t)
    tiers = [r["tier"] for r in ev["tiers"]]
    ft = Table(title="field F1 by tier", title_justify="left", box=box.SIMPLE_HEAD)
    ft.add_column("field", no_wrap=True)
    for name in tiers:
        ft.add_column(name, justify="right")
    for field, per in ev["fields"].items():
        ft.add_row(Text(field), *(_f(per.get(name, {}).get("f1")) for name in tiers))
    console.print(ft)
    ct = Table(
        title="chain simulation (from the forced results; nothing paid again)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for c in ("chain", "valid", "correct", "F1", "per doc", "per correct", "mean latency"):
        ct.add_column(c, justify="left" if c == "chain" else "right")
    for c in ev["chains"]:
        ct.add_row(
            Text(c["name"]),
            pct(c["valid_rate"]),
            pct(c["accuracy"]),
            _f(c["f1"]),
            money(c["cost_per_document_usd"]),
            money(c["cost_per_correct_usd"], "-"),
            secs(c["latency_mean_s"]),
        )
    console.print(ct)
    for v in ev["verdicts"]:
        if v["wrong_answers_accepted"]:
            console.print(
                f"  {v['tier']}: {v['wrong_answers_accepted']} valid but wrong answer(s) the chain "
                "would accept",
                markup=False,
                highlight=False,
            )
    for c in ev.get("comparisons", []):
        console.print(Text("same data, two uses: " + c["sentence"], style="bold"))
    print_verdicts(ev["verdicts"], ev["verdict"], console)


CSV_COLUMNS = (
    "table",
    "name",
    "field",
    "documents",
    "valid_rate",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "tp",
    "fp",
    "fn",
    "wrong",
    "cost_usd",
    "cost_per_document_usd",
    "cost_per_correct_usd",
    "latency_p50_s",
    "latency_p95_s",
    "latency_mean_s",
)


def eval_csv(ev: dict[str, Any]) -> str:
    """Long format: one row per tier, per (tier, field) and per simulated chain; column ``table``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in ev["tiers"]:
        w.writerow({"table": "tier", "name": r["tier"], **r})
    for field, per in ev["fields"].items():
        for tier, r in per.items():
            w.writerow({"table": "field", "name": tier, "field": field, **r})
    for c in ev["chains"]:
        w.writerow({"table": "chain", **c, "name": c["name"]})
    return buf.getvalue()


def eval_html(ev: dict[str, Any]) -> str:
    chains = ev["chains"]
    charts = {
        "accuracy": _html.hbars(
            "documents fully correct, by chain",
            [(c["name"], c["accuracy"], pct(c["accuracy"])) for c in chains],
        ),
        "cost": _html.hbars(
            "cost per document, by chain",
            [(c["name"], c["cost_per_document_usd"], money(c["cost_per_document_usd"])) for c in chains],
        ),
    }
    return _html._env().get_template("eval.html.j2").render(ev=ev, charts=charts, **_html._common())
