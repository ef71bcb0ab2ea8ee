"""`extractkit eval` and `extractkit gold`: score every tier on a gold set, simulate chains, decide."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .._errors import ExtractkitError
from ._app import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, app, err, fail_usage, out
from ._report import (
    AsJson,
    CsvOut,
    FailureCost,
    HtmlOut,
    MinDocuments,
    MinShare,
    TrainingCost,
    economics_or_fail,
)


@app.command("eval")
def eval_(
    gold: Annotated[
        Path, typer.Argument(help='Gold file: JSON Lines of {"document": ..., "expected": {...}}.')
    ],
    config: Annotated[Path, typer.Option("--config", "-c", help="TOML config.")] = Path("extractkit.toml"),
    schema: Annotated[str | None, typer.Option(help="module:Model, overrides the config.")] = None,
    tier: Annotated[list[str] | None, typer.Option(help="Only this tier (repeatable); default all.")] = None,
    ledger_path: Annotated[Path | None, typer.Option("--ledger", help="Ledger file.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Extractions in flight.")] = None,
    force: Annotated[
        bool, typer.Option(help="Extract again even if an earlier eval has the answer.")
    ] = False,
    dayfirst: Annotated[bool, typer.Option(help="Read 03/04/2024 as 3 April when scoring.")] = False,
    run: Annotated[str | None, typer.Option(help="Show an earlier eval run instead of running.")] = None,
    failure_cost: FailureCost = 2.00,
    training_cost: TrainingCost = None,
    min_share: MinShare = 0.01,
    min_documents: MinDocuments = 30,
    as_json: AsJson = False,
    csv_path: CsvOut = None,
    html_path: HtmlOut = None,
) -> None:
    """Run every tier on its own over a gold set; score fields; simulate each chain order; verdict.

    Example: extractkit eval gold.jsonl --config extractkit.toml --html eval.html

    Forced extractions are kept in the ledger, so running it again pays only for what is new.
    Exit codes: 0 done, 1 some gold documents could not be read or errored, 2 usage error.
    """
    from ..batch import RateLimiter
    from ..evaluate import aevaluate, build_eval, eval_csv, eval_html, load_gold, print_eval
    from ..ledger import Ledger
    from ..report import write_text
    from ._build import build

    economics = economics_or_fail(failure_cost, training_cost, min_share, min_documents)
    try:
        extractor, cfg = build(config, schema)
        items = load_gold(gold, extractor.schema)
        for name in tier or []:
            extractor.tier(name)
    except ExtractkitError as exc:
        raise fail_usage(str(exc)) from None
    extractor.limiter = RateLimiter(cfg.batch.rpm, cfg.batch.tpm)
    path = ledger_path or Path(cfg.resolve(cfg.ledger.path) or "")
    code = EXIT_OK
    with Ledger(path, store_text=cfg.ledger.store_text) as ledger:
        if run is None:
            err.print(
                f"evaluating {len(items)} gold documents x {len(tier or extractor.tiers)} tiers "
                f"(each tier alone); ledger {ledger.path}",
                highlight=False,
            )

            def progress(s: Any) -> None:
                if not as_json:
                    err.print(
                        f"  {s.extracted + s.reused} done ({s.reused} reused)", end="\r", highlight=False
                    )

            try:
                summary = asyncio.run(
                    aevaluate(
                        extractor,
                        items,
                        ledger,
                        tiers=tier,
                        concurrency=concurrency or cfg.batch.concurrency,
                        force=force,
                        dayfirst=dayfirst,
                        on_progress=progress,
                    )
                )
            except KeyboardInterrupt:
                err.print("[yellow]interrupted[/]: finished extractions are kept; run again to resume.")
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except ExtractkitError as exc:
                raise fail_usage(str(exc)) from None
            err.print(
                f"{summary.extracted} extracted, {summary.reused} reused from earlier evals", highlight=False
            )
            for u in summary.unreadable:
                err.print(
                    f"unreadable gold document {u['gold_id']}: {u['error']}", markup=False, highlight=False
                )
            for e in summary.errors:
                err.print(
                    f"error on {e['gold_id']} / {e['tier']}: {e['error']}", markup=False, highlight=False
                )
            if summary.unreadable or summary.errors:
                code = EXIT_FAILED
            run = summary.run_id
        try:
            ev = build_eval(ledger, run, economics=economics)
        except ValueError as exc:
            raise fail_usage(str(exc)) from None
    if csv_path:
        write_text(csv_path, eval_csv(ev))
        err.print(f"wrote {csv_path}", highlight=False)
    if html_path:
        write_text(html_path, eval_html(ev))
        err.print(f"wrote {html_path}", highlight=False)
    if as_json:
        print(json.dumps(ev, indent=2))
    else:
        print_eval(ev, out)
    raise typer.Exit(code)


gold_app = typer.Typer(help="Gold files for `extractkit eval`.", no_args_is_help=True)
app.add_typer(gold_app, name="gold")


@gold_app.command("from-invoice2data")
def gold_from_invoice2data(
    folder: Annotated[Path, typer.Argument(help="Folder of NAME.json + NAME.pdf (or NAME.txt).")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Gold file to write.")] = Path("gold.jsonl"),
    schema: Annotated[str | None, typer.Option(help="module:Model: keep only its fields.")] = None,
) -> None:
    """Convert invoice2data's layout (NAME.json beside NAME.pdf) into a gold file.

    Example: extractkit gold from-invoice2data ../shared/corpora/invoice2data -o gold.jsonl \
      --schema invoice_schema:Invoice
    """
    from .._config import import_schema
    from ..evaluate import convert_invoice2data

    try:
        model = import_schema(schema) if schema else None
        written, notes = convert_invoice2data(folder, out_path, schema=model)
    except ExtractkitError as exc:
        raise fail_usage(str(exc)) from None
    for n in notes:
        err.print(f"note: {n}", markup=False, highlight=False)
    out.print(f"wrote {written} gold items to {out_path}", highlight=False)
    if not written:
        raise typer.Exit(EXIT_FAILED)
