"""`extractkit eval` and `extractkit gold`: score every tier on a gold set, simulate chains, decide."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from .._words import plural
from ._app import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    app,
    check_writable,
    err,
    fail_usage,
    out,
)
from ._ledger_opt import ConfigOpt, LedgerOpt
from ._report import (
    AsJson,
    CsvOut,
    FailureCost,
    HtmlOut,
    MinDocuments,
    MinShare,
    TrainingCost,
    economics_or_fail,
    emit,
)


@app.command("eval")
def eval_(
    gold: Annotated[
        Path | None, typer.Argument(help='Gold file: JSON Lines of {"document": ..., "expected": {...}}.')
    ] = None,
    config: ConfigOpt = None,
    schema: Annotated[str | None, typer.Option(help="module:Model, overrides the config.")] = None,
    tier: Annotated[list[str] | None, typer.Option(help="Only this tier (repeatable); default all.")] = None,
    ledger_path: LedgerOpt = None,
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
    Exit codes: 0 done, 1 some gold documents could not be read or errored, 2 usage error, 3 the
    provider stopped answering or refused the key (run again to resume).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..batch import open_limiter
    from ..evaluate import aevaluate, build_eval, load_gold
    from ._build import build
    from ._ledger_opt import open_ledger
    from ._report import ledger_or_fail

    economics = economics_or_fail(failure_cost, training_cost, min_share, min_documents)
    check_writable(csv_path, "--csv")  # before anything is paid for
    check_writable(html_path, "--html")
    if run is not None:  # show an earlier eval: no config, no key, no requests
        with ledger_or_fail(ledger_path, config) as ledger:
            try:
                ev = build_eval(ledger, run, economics=economics)
            except ValueError as exc:
                raise fail_usage(str(exc)) from None
        _emit(ev, as_json, csv_path, html_path)
        return
    if gold is None:
        raise fail_usage("give a gold file (or --run EVAL_RUN_ID to show an earlier eval)")
    extractor, cfg = build(config, schema)
    items = load_gold(gold, extractor.schema)
    for name in tier or []:
        extractor.tier(name)
    n_tiers = len(tier or extractor.tiers)
    bar = Progress(TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                   disable=as_json or not err.is_terminal)  # fmt: skip
    task = bar.add_task("", total=len(items) * n_tiers)

    def progress(s: Any) -> None:
        bar.update(task, completed=s.extracted + s.reused, description=f"{s.reused} reused")

    async def evaluate(ledger: Any, limiter: Any) -> Any:
        async with extractor:  # built here: closed here, on the loop it ran on
            return await aevaluate(
                extractor, items, ledger, tiers=tier, concurrency=concurrency or cfg.batch.concurrency,
                force=force, dayfirst=dayfirst, on_progress=progress, limiter=limiter,
            )  # fmt: skip

    with open_ledger(ledger_path, cfg) as ledger, open_limiter(ledger, cfg.batch.rpm,
                                                                cfg.batch.tpm) as limiter:  # fmt: skip
        what = f"{plural(len(items), 'gold document')} x {plural(n_tiers, 'tier')}"
        err.print(f"evaluating {what} (each tier alone); ledger {ledger.target}", highlight=False)
        try:
            with bar:
                summary = asyncio.run(evaluate(ledger, limiter))
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished extractions are kept; run again to resume.")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        err.print(
            f"{summary.extracted} extracted, {summary.reused} reused from earlier evals", highlight=False
        )
        for u in summary.unreadable:
            err.print(f"unreadable gold document {u['gold_id']}: {u['error']}", markup=False, highlight=False)
        for e in summary.errors:
            err.print(f"error on {e['gold_id']} / {e['tier']}: {e['error']}", markup=False, highlight=False)
        ev = build_eval(ledger, summary.run_id, economics=economics)
    _emit(ev, as_json, csv_path, html_path)
    if summary.error is not None:  # the provider stopped answering or refused the key
        err.print("[bold red]error:[/]", end=" ")
        err.print(summary.error, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_UNREACHABLE)
    raise typer.Exit(EXIT_FAILED if summary.unreadable or summary.errors else EXIT_OK)


def _emit(ev: dict[str, Any], as_json: bool, csv_path: Path | None, html_path: Path | None) -> None:
    from ..evaluate import eval_csv, eval_html, print_eval

    emit(ev, as_json, csv_path, html_path, csv=eval_csv, html=eval_html, show=print_eval)


gold_app = typer.Typer(help="Gold files for `extractkit eval`.", no_args_is_help=True)
app.add_typer(gold_app, name="gold")


@gold_app.command("from-invoice2data")
def gold_from_invoice2data(
    folder: Annotated[Path, typer.Argument(help="Folder of NAME.json + NAME.pdf (or NAME.txt).")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Gold file to write.")] = Path("gold.jsonl"),
    schema: Annotated[str | None, typer.Option(help="module:Model: keep only its fields.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config: keep only its schema's fields.")
    ] = None,
) -> None:
    """Convert invoice2data's layout (NAME.json beside NAME.pdf) into a gold file.

    Example: extractkit gold from-invoice2data ../shared/corpora/invoice2data -o out/gold.jsonl \
      --config examples/openai.toml
    """
    from .._config import import_schema, load_config
    from ..evaluate import convert_invoice2data

    cfg = load_config(config) if config is not None else None  # its folder is importable, as for eval
    spec = schema or (cfg.schema_path if cfg is not None else None)
    model = import_schema(spec, [cfg.root] if cfg is not None else None) if spec else None
    written, notes = convert_invoice2data(folder, out_path, schema=model)
    for n in notes:
        err.print(f"note: {n}", markup=False, highlight=False)
    out.print(f"wrote {written} gold items to {out_path}", highlight=False)
    if not written:
        raise typer.Exit(EXIT_FAILED)
