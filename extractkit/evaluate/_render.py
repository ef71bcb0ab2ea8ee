"""The eval report in the terminal, as CSV and as one HTML page (shares the report's helpers)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._words import plural
from ..report import PALETTE, money, page_context, pct, print_verdicts, secs, template_env


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_eval(ev: dict[str, Any], console: Console) -> None:
    console.print(
        Text(f"extractkit eval: run {ev['run_id']}, {plural(ev['documents'], 'gold document')}", style="bold")
    )
    for note in ev["notes"]:
        console.print(Text("note: " + note, style="yellow"))
    for u in ev["unreadable"]:
        console.print(f"  unreadable: {u['path'] or u['gold_id']}", markup=False, highlight=False)
    if not ev["tiers"]:  # nothing was scored (the provider refused or did not answer): no empty tables
        console.print(Text(ev["verdict"]))
        return
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
    print_documents(ev, console)
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


DOCUMENTS_SHOWN = 10  # documents the terminal lists, worst first (--json and --html have all)
ERRORS_SHOWN = 5  # distinct errors listed under the documents
VALUE_CHARS = 28  # a value in a terminal cell
RESULT_STYLE = {"tp": "green", "tn": "green", "wrong": "red", "fn": "red", "fp": "yellow"}
RESULT_WORD = {"tp": "right", "tn": "right (empty)", "wrong": "wrong", "fn": "missing", "fp": "extra"}


def shown_value(value: Any, limit: int = VALUE_CHARS) -> str:
    """A value in a cell: strings as they are, anything else as JSON; cut to ``limit``."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(answer: dict[str, Any] | None, tier: dict[str, Any] | None, hidden: bool) -> Text:
    if answer is None:
        return Text("-", style="dim")
    result = answer["result"]
    if tier is not None and tier["status"] != "ok":
        return Text(f"failed ({tier['outcome']})", style="red")
    if hidden:
        return Text(RESULT_WORD[result], style=RESULT_STYLE[result])
    text = "(none)" if result == "fn" else shown_value(answer["value"])
    return Text(text, style=RESULT_STYLE[result])


def print_documents(ev: dict[str, Any], console: Console, limit: int = DOCUMENTS_SHOWN) -> None:
    """The documents some tier got wrong, worst first: each field one tier missed, what the gold
    file expected and what every tier answered; then why a tier gave no valid answer."""
    view = ev.get("documents_view") or []
    bad = [d for d in view if d["wrong"] or d["failed_tiers"]]
    if not view:
        return
    if not bad:
        done = f"every tier answered every field of all {len(view)} documents right"
        console.print(Text(done, style="green"))
        return
    tiers = [r["tier"] for r in ev["tiers"]]
    hidden = bool(ev.get("values_hidden"))
    t = Table(
        title=f"documents with wrong fields, worst first ({min(limit, len(bad))} of {len(bad)})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    t.add_column("document", overflow="fold", max_width=24)
    t.add_column("field", overflow="fold")
    if not hidden:
        t.add_column("expected", overflow="fold")
    for name in tiers:
        t.add_column(name, overflow="fold")
    why: dict[str, list[str]] = {}  # an error -> the documents it ended (one line per distinct error)
    for d in bad[:limit]:
        first = True
        for row in d["fields"]:
            if all(a["result"] not in ("wrong", "fn", "fp") for a in row["answers"].values()):
                continue
            name = Text(_doc_name(d) if first else "")
            expected = [] if hidden else [Text(shown_value(row["expected"]))]
            cells = [_cell(row["answers"].get(tn), d["tiers"].get(tn), hidden) for tn in tiers]
            t.add_row(name, Text(row["field"]), *expected, *cells, end_section=False)
            first = False
        if first:  # no field scored wrong, yet a tier failed (a gold line with no expected values)
            t.add_row(Text(_doc_name(d)), Text("-"), *([] if hidden else [Text("-")]),
                      *(_cell(None, d["tiers"].get(tn), hidden) for tn in tiers))  # fmt: skip
        t.rows[-1].end_section = True
        for x in d["tiers"].values():
            if x["status"] != "ok" and x["error"]:
                why.setdefault(shown_value(x["error"], 200), []).append(d["gold_id"])
    console.print(t)
    if len(bad) > limit:
        console.print(
            f"  and {plural(len(bad) - limit, 'more document')} with wrong fields "
            "(all of them: --json or --html)",
            markup=False,
            highlight=False,
        )
    right = len(view) - len(bad)
    if right:
        console.print(f"  {plural(right, 'document')} right on every tier and field, not listed",
                      markup=False, highlight=False)  # fmt: skip
    if why:
        console.print(Text("why a tier gave no valid answer (documents listed above):", style="bold"))
        for error, docs in list(why.items())[:ERRORS_SHOWN]:
            more = f" and {len(docs) - 5} more" if len(docs) > 5 else ""
            console.print(f"  {error}  [{', '.join(docs[:5])}{more}]", markup=False, highlight=False)
        if len(why) > ERRORS_SHOWN:
            more_errors = f"  and {len(why) - ERRORS_SHOWN} more distinct error(s)"
            console.print(more_errors, markup=False, highlight=False)


def _doc_name(d: dict[str, Any]) -> str:
    path = d.get("path") or ""
    if not path or path.startswith("gold:"):  # the document was the gold line's text
        return str(d["gold_id"])
    return f"{d['gold_id']} ({path.rsplit('/', 1)[-1]})"


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


# Chart geometry for the eval page. Labels are measured with a generous width per character (12px
# system-ui averages under 7px), so a label is never cut and never runs into the bars.
CHAR_W = 7.5
ROW = 28  # one bar per row
PLOT_W = 320  # the bars' room
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _text_w(text: str) -> float:
    return len(text) * CHAR_W


def axis_bars(
    title: str,
    x_label: str,
    y_label: str,
    items: list[tuple[str, float | None, str]],
    tick: Any,
    *,
    top: float | None = None,
) -> dict[str, Any]:
    """Horizontal bars with a visible title, a labelled x axis with ticks and a labelled y axis:
    (label, value, text shown at the bar's end). None values get no bar. ``tick`` formats a tick
    value; ``top`` fixes the axis's end (1.0 for a share), else the largest value."""
    known = [v for _, v, _ in items if v is not None]
    top = top or max(known, default=0.0) or 1.0
    tick_texts = [tick(top * t) for t in TICKS] if known else []
    left = 30 + max((_text_w(label) for label, _, _ in items), default=0) + 10  # y-axis title, labels
    right = max([_text_w(text) for _, _, text in items] + [_text_w(t) / 2 for t in tick_texts] + [0]) + 16
    width = round(max(left + PLOT_W + right, _text_w(title) * 1.2 + 20))
    plot_top = 34
    bars = []
    for i, (label, value, text) in enumerate(items):
        w = 0 if value is None else max(1, round(PLOT_W * value / top))
        y = plot_top + i * ROW
        color = PALETTE[i % len(PALETTE)]
        bars.append({"label": label, "text": text, "y": y, "w": w, "color": color})
    axis_y = plot_top + max(1, len(items)) * ROW
    ticks = [{"x": round(left + PLOT_W * t, 1), "text": tick(top * t)} for t in TICKS] if known else []
    return {
        "title": title,
        "x_label": x_label if known else f"{x_label} (no value known)",
        "y_label": y_label,
        "width": width,
        "height": axis_y + 48,
        "left": round(left, 1),
        "plot_w": PLOT_W,
        "plot_top": plot_top,
        "axis_y": axis_y,
        "bars": bars,
        "ticks": ticks,
    }


def eval_html(ev: dict[str, Any]) -> str:
    chains = ev["chains"]
    charts = {
        "accuracy": axis_bars(
            "Documents fully correct, by chain",
            "documents with every field right",
            "chain",
            [(c["name"], c["accuracy"], pct(c["accuracy"])) for c in chains],
            pct,
            top=1.0,
        ),
        "cost": axis_bars(
            "Cost per document, by chain",
            "USD per document (every tier the document reached)",
            "chain",
            [(c["name"], c["cost_per_document_usd"], money(c["cost_per_document_usd"], "price unknown"))
             for c in chains],
            money,
        ),
    }  # fmt: skip
    view = ev.get("documents_view") or []
    wrong = [d for d in view if d["wrong"] or d["failed_tiers"]]
    right = [d for d in view if not (d["wrong"] or d["failed_tiers"])]
    return template_env().get_template("eval.html.j2").render(
        ev=ev, charts=charts, wrong_docs=wrong, right_docs=right, shown=shown_value, words=RESULT_WORD,
        **page_context(),
    )  # fmt: skip
