"""The single-file HTML report: Jinja2 with autoescape, charts as inline SVG, no scripts.

Chart geometry is computed here as numbers; every label is placed by the template, which escapes
it, and the page's Content-Security-Policy forbids scripts and fetches as a second line of defence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from . import _render as fmt
from ._documents import MAX_DOCUMENTS, DocumentView
from ._model import Report

PALETTE = ["#3b7dd8", "#2e8540", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#c0392b"]
UNRESOLVED = "#c8ced6"


def template_env() -> Environment:
    """The Jinja2 environment of the report's and eval's pages (autoescape on)."""
    env = Environment(
        loader=PackageLoader("extractkit.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def hbars(title: str, items: list[tuple[str, float | None, str]], width: int = 640) -> dict[str, Any]:
    """Horizontal bars: (label, value, text shown). None values get no bar."""
    left, room = 160, width - 160 - 120
    top = max((v for _, v, _ in items if v is not None), default=0) or 1
    bars = []
    for i, (label, value, text) in enumerate(items):
        w = 0 if value is None else max(1, round(room * value / top))
        bars.append({"label": label, "text": text, "y": i * 28, "w": w, "color": PALETTE[i % len(PALETTE)]})
    return {"title": title, "width": width, "height": max(28, len(items) * 28), "left": left, "bars": bars}


def stacked(title: str, items: list[tuple[str, int, str]], width: int = 760) -> dict[str, Any]:
    total = sum(v for _, v, _ in items) or 1
    x, segments = 0.0, []
    for i, (label, value, text) in enumerate(items):
        w = width * value / total
        color = UNRESOLVED if label == "unresolved" else PALETTE[i % len(PALETTE)]
        segments.append({"label": label, "text": text, "x": round(x, 2), "w": round(w, 2), "color": color})
        x += w
    return {"title": title, "width": width, "height": 60, "segments": segments}


def line(
    title: str,
    days: list[str],
    series: list[tuple[str, list[float | None]]],
    *,
    fmt_y: Any = str,
    width: int = 760,
    height: int = 200,
) -> dict[str, Any]:
    left, bottom = 70, height - 40
    values = [v for _, vs in series for v in vs if v is not None]
    ymin, ymax = 0.0, (max(values) if values else 1.0) or 1.0
    n = max(1, len(days) - 1)
    out = []
    for i, (name, vs) in enumerate(series):
        pts = []
        for j, v in enumerate(vs):
            if v is None:
                continue
            x = left + (width - 10 - left) * j / n
            y = bottom - (bottom - 20) * (v - ymin) / (ymax - ymin)
            pts.append({"x": round(x, 1), "y": round(y, 1), "label": f"{days[j]}: {fmt_y(v)}"})
        out.append(
            {
                "name": name,
                "color": PALETTE[i % len(PALETTE)],
                "dots": pts,
                "points": " ".join(f"{p['x']},{p['y']}" for p in pts),
            }
        )
    return {
        "title": title,
        "width": width,
        "height": height,
        "left": left,
        "bottom": bottom,
        "ymin": fmt_y(ymin),
        "ymax": fmt_y(ymax),
        "xmin": days[0] if days else "",
        "xmax": days[-1] if days else "",
        "series": out,
    }


def page_context() -> dict[str, Any]:
    """What every page's template gets: the formatting helpers as ``f``, the version, the time."""
    from .. import __version__

    return {"f": fmt, "version": __version__, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def report_html(data: Report | dict[str, Any], documents: Sequence[DocumentView] | None = None) -> str:
    """The report as one self-contained HTML page (a Report, or its plain data as ``--json`` prints it);
    with ``documents`` (``read_documents``), the per-document view too."""
    report = Report.from_dict(data)
    t = report.totals
    share = [(x.tier, x.resolved, f"{x.resolved} ({fmt.pct(x.share_resolved)})") for x in report.tiers]
    share.append(("unresolved", t.failed, f"{t.failed}"))
    # no bar: "no valid extraction" when the tier resolved nothing, "price unknown" when it did
    cost: list[tuple[str, float | None, str]] = [
        (x.tier, x.cost_per_valid_usd, fmt.per_valid(x.cost_per_valid_usd, x.resolved, "no valid extraction"))
        for x in report.tiers
    ]
    whole = fmt.per_valid(t.cost_per_valid_usd, t.ok, "n/a")
    cost.append(("whole chain", t.cost_per_valid_usd, whole))
    days = [d.day for d in report.trend]
    charts: dict[str, Any] = {
        "share": stacked("documents resolved by tier", share),
        "cost": hbars("cost per valid extraction (USD)", cost),
        "trend_success": None,
        "trend_cost": None,
    }
    if len(days) >= 2:
        charts["trend_success"] = line(
            "share of documents valid, per day",
            days,
            [
                (
                    "valid share",
                    [d.ok / d.documents if d.documents else None for d in report.trend],
                )
            ],
            fmt_y=fmt.pct,
        )
        charts["trend_cost"] = line(
            "cost per valid extraction, per day",
            days,
            [("cost per valid (USD)", [d.cost_per_valid_usd for d in report.trend])],
            fmt_y=lambda v: fmt.money(v, "-"),
        )
    return (
        template_env()
        .get_template("report.html.j2")
        .render(r=report, charts=charts, scope=fmt.scope_line(report), documents=documents,
                documents_limit=MAX_DOCUMENTS, **page_context())
    )
