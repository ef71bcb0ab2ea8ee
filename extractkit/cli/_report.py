"""`extractkit report`: the ledger turned into a decision."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from ._app import app, check_writable, err, fail_usage, out
from ._ledger_opt import ConfigOpt, LedgerOpt

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([dh])$")


def parse_when(value: str | None, now: float, option: str) -> float | None:
    """'2026-11-01', '2026-11-01T12:00', '7d' or '12h' (before now) -> Unix seconds (UTC)."""
    if value is None:
        return None
    m = _RELATIVE.match(value.strip())
    if m:
        return now - float(m.group(1)) * (86_400 if m.group(2) == "d" else 3_600)
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail_usage(
            f"{option}: expected a date like 2026-11-01, a time like 2026-11-01T12:00, "
            f"or a span like 7d or 12h; got {value!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def ledger_or_fail(ledger_path: str | Path | None, config: Path | None = None):  # type: ignore[no-untyped-def]
    """The ledger a read-only command uses (see ``_ledger_opt``): it must exist."""
    from ._ledger_opt import load_cli_config, open_ledger

    return open_ledger(ledger_path, load_cli_config(config, required=False), must_exist=True)


def economics_or_fail(failure_cost: float, training_cost: float | None, min_share: float, min_documents: int):  # type: ignore[no-untyped-def]
    """The report's assumptions; a bad value is a ConfigError (exit 2, through the one error handler)."""
    from ..report import Economics

    return Economics(failure_cost=failure_cost, training_cost=training_cost, min_share=min_share,
                     min_documents=min_documents)  # fmt: skip


def emit(data: dict[str, Any], as_json: bool, csv_path: Path | None, html_path: Path | None, *,
         csv: Callable[[dict[str, Any]], str], html: Callable[[dict[str, Any]], str],
         show: Callable[[dict[str, Any], Any], None]) -> None:  # fmt: skip
    """The four output formats of `report` and `eval`: files for --csv/--html, then JSON or the view.
    The data is redacted once here, before any format renders it."""
    from .._redact import redact_json
    from ..report import write_text

    data = redact_json(data)
    for path, render in ((csv_path, csv), (html_path, html)):
        if path:
            write_text(path, render(data))
            err.print(f"wrote {path}", highlight=False)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        show(data, out)


FailureCost = Annotated[
    float, typer.Option(help="What one failed document costs you (e.g. a manual review), USD.")
]
TrainingCost = Annotated[
    float | None, typer.Option(help="One-off fine-tuning cost, USD, for the break-even volume.")
]
MinShare = Annotated[
    float, typer.Option(help="Smallest share of documents a tier must rescue to be worth running.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the report as JSON (with the SQL behind it).")]
CsvOut = Annotated[Path | None, typer.Option("--csv", help="Write the per-tier table as CSV to this file.")]
MinDocuments = Annotated[int, typer.Option(help="Fewer documents than this: no verdict yet.")]
HtmlOut = Annotated[
    Path | None, typer.Option("--html", help="Write a self-contained HTML page to this file.")
]


@app.command()
def report(
    ledger_path: LedgerOpt = None,
    config: ConfigOpt = None,
    schema: Annotated[str | None, typer.Option(help="Only this schema (name or hash prefix).")] = None,
    run: Annotated[str | None, typer.Option(help="Only this run id.")] = None,
    since: Annotated[str | None, typer.Option(help="From: 2026-11-01, 2026-11-01T12:00, or 7d ago.")] = None,
    until: Annotated[str | None, typer.Option(help="Until (exclusive), same forms as --since.")] = None,
    config_hash: Annotated[str | None, typer.Option("--config-hash", help="Only this chain config.")] = None,
    failure_cost: FailureCost = 2.00,
    training_cost: TrainingCost = None,
    min_share: MinShare = 0.01,
    min_documents: MinDocuments = 30,
    recent_days: Annotated[float, typer.Option(help="Drift: the recent window, days.")] = 7,
    baseline_days: Annotated[float, typer.Option(help="Drift: the window before it, days.")] = 28,
    as_of: Annotated[str | None, typer.Option(help="Report as of this time (default now).")] = None,
    by: Annotated[str, typer.Option(
        "--by", help="What to show in full: tier (the default report), prompt (every prompt / examples / "
        "k-select version per tier, compared, then the checklist) or checklist. With --csv: that table.",
    )] = "tier",
    target_success: Annotated[float | None, typer.Option(
        help="Checklist: the share of documents you want valid (e.g. 0.98); the gap the cheap tiers leave "
        "is tested against it.",
    )] = None,
    min_version_documents: Annotated[int, typer.Option(
        help="Checklist: documents a prompt version needs to count as tried.",
    )] = 30,
    as_json: AsJson = False,
    csv_path: CsvOut = None,
    html_path: HtmlOut = None,
) -> None:
    """Which tier resolves what, at what cost; what the fine-tuned tier rescues; a verdict; drift;
    prompt versions compared and the checklist of cheap things to try before fine-tuning.

    Example: extractkit report -c extractkit.toml --failure-cost 2.00 --html report.html

    Example: extractkit report --by prompt --target-success 0.98

    The ledger: --ledger, else $EXTRACTKIT_LEDGER, else the config's \\[ledger] path (the one
    `extract -c` wrote), else .extractkit/ledger.sqlite3.

    Every number is SQL over the ledger (see `--json`, key "queries").
    """
    from ..report import (
        BY,
        Scope,
        check_scope_exists,
        checklist_csv,
        print_report,
        read_documents,
        read_report,
        report_csv,
        report_html,
        versions_csv,
    )

    if by not in BY:
        raise fail_usage(f"--by: one of {', '.join(BY)}; got {by!r}")

    now = time.time()
    now = parse_when(as_of, now, "--as-of") or now
    scope = Scope(
        schema=schema,
        run_id=run,
        since=parse_when(since, now, "--since"),
        until=parse_when(until, now, "--until"),
        config_hash=config_hash,
    )
    economics = economics_or_fail(failure_cost, training_cost, min_share, min_documents)
    check_writable(csv_path, "--csv")
    check_writable(html_path, "--html")
    with ledger_or_fail(ledger_path, config) as ledger:
        check_scope_exists(ledger, scope)
        data = read_report(ledger, scope, economics=economics, as_of=now, recent_days=recent_days,
                           baseline_days=baseline_days, target_success=target_success,
                           min_version_documents=min_version_documents)  # fmt: skip
        # the page's per-document view: the documents to review, with their text and values in place
        documents = read_documents(ledger, scope) if html_path else None
        err.print(f"ledger: {ledger.target}", highlight=False, markup=False)  # which one it read
    csv = {"prompt": versions_csv, "checklist": checklist_csv}.get(by, report_csv)
    emit(data.to_dict(), as_json, csv_path, html_path, csv=csv, html=lambda d: report_html(d, documents),
         show=lambda d, console: print_report(d, console, by=by))  # fmt: skip
