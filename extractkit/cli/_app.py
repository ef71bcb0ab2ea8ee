from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup, TyperOption

from .. import __version__
from .._errors import ExtractkitError, RunError
from .._words import plural
from ..local import N_CTX  # the local model's context window per slot, decided in extractkit.local
from ._console import RedactingConsole, install_log_redaction
from ._ledger_opt import ConfigOpt, LedgerOpt

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def error_exit(exc: BaseException) -> int:
    """The one place an error becomes `error: ...` on stderr (one line, no traceback) and an exit
    code: 1 for a run that failed (RunError, e.g. a fine-tuning job the provider rejected), 2 for
    usage, config, ledger-open and file errors (every other ExtractkitError, OSError, sqlite3 and
    psycopg errors: the ledger maps the latter to LedgerError, this is the net under it)."""
    import sqlite3

    if isinstance(exc, OSError):
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    elif isinstance(exc, sqlite3.Error) or _is_psycopg(exc):
        message = f"ledger: {exc}"
    else:
        message = str(exc) or type(exc).__name__
    err.print("[bold red]error:[/]", end=" ")
    err.print(" ".join(message.split()), highlight=False, markup=False, soft_wrap=True)
    return EXIT_FAILED if isinstance(exc, RunError) else EXIT_USAGE


def _is_psycopg(exc: BaseException) -> bool:
    """A psycopg or psycopg_pool error, told by its module (no import of psycopg for it)."""
    return type(exc).__module__.split(".")[0] in ("psycopg", "psycopg_pool")


def reflow(text: str) -> str:
    """A docstring's paragraphs as one line each, so `--help` wraps them to the terminal instead of
    keeping the source's line breaks (typer's rich help keeps them after the first paragraph).
    A paragraph starting with ``\\b`` is kept as it is (click's "no rewrap" mark)."""
    import inspect

    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(x.strip() for x in p.splitlines())
                       for p in paragraphs)  # fmt: skip


def _flag_type(self: Any, ctx: Any) -> str | None:
    """No `<bool>` after a flag (`--version`, `--help`, `--json`) in the help: it takes no value."""
    if getattr(self, "is_flag", False) and self.metavar is None:
        return None
    return _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


class _Group(TyperGroup):
    """Every subcommand (and sub-app) runs inside this invoke, so every ExtractkitError and OSError
    that escapes a command ends here instead of as a traceback. Each command's help is reflowed
    (``reflow``)."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and cmd.help:
            cmd.help = reflow(cmd.help)
        return cmd

    def invoke(self, ctx: Any) -> Any:
        import sqlite3

        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader went away (`extractkit report --json | head`): stop quietly
            import os
            import sys

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            raise typer.Exit(EXIT_FAILED) from None
        except (ExtractkitError, OSError, sqlite3.Error) as exc:
            raise typer.Exit(error_exit(exc)) from None
        except Exception as exc:
            if not _is_psycopg(exc):
                raise
            raise typer.Exit(error_exit(exc)) from None


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


app = typer.Typer(
    cls=_Group,
    name="extractkit",
    help="Structured extraction with LLMs: zero-shot, then few-shot, then fine-tuned.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = RedactingConsole(stderr=True)  # everything printed passes the redaction boundary
out = RedactingConsole()
install_log_redaction()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Structured extraction with LLMs: zero-shot, then few-shot, then fine-tuned."""


def fail_usage(message: str) -> typer.Exit:
    err.print("[bold red]error:[/]", end=" ")
    err.print(message, highlight=False, markup=False, soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def _money(v: float | None) -> str:
    return "unknown" if v is None else f"${v:.6f}"


def _narrow_table(title: str | None = None) -> Table:
    """A table that shows its values whole in 80 columns: no box lines between columns."""
    from rich import box

    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)


def _cost(v: float | None) -> str:
    """A cost short enough for a table cell (the report has the exact figure)."""
    if v is None:
        return "unknown"
    if 0 < v < 0.0001:
        return "<$0.0001"
    return f"${v:.4f}" if v < 100 else f"${v:,.0f}"


@app.command()
def version() -> None:
    """Print the extractkit version."""
    typer.echo(__version__)


@app.command()
def extract(
    paths: Annotated[list[str], typer.Argument(help="Files or folders (walked recursively), or URIs: "
                                              "s3://bucket/prefix (an object or every object under it).")],
    config: ConfigOpt = None,
    schema: Annotated[str | None, typer.Option(help="module:Model, overrides the config.")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="JSON Lines, one per doc.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Documents in flight.")] = None,
    rpm: Annotated[float | None, typer.Option(min=1, help="Requests/minute limit.")] = None,
    tpm: Annotated[float | None, typer.Option(min=1, help="Tokens/minute limit.")] = None,
    force: Annotated[bool, typer.Option(help="Extract again even if the ledger has it.")] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="Also send again documents whose last result failed validation under "
                           "this same chain (a changed prompt or examples is a new chain: its documents are "
                           "sent anyway). Documents whose last result was transient are always sent again; "
                           "successes never.")
    ] = False,
    ledger_path: LedgerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    include: Annotated[
        list[str] | None, typer.Option(help="Only file names matching this glob (repeatable; "
                                       "case-insensitive: '*.pdf' also matches 'SCAN.PDF').")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Send nothing, record nothing: list the documents (unreadable "
                           "ones with the reason, resumed ones as skipped) and estimate the input tokens "
                           "and the cost per tier, first attempt and worst case.")
    ] = False,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", metavar="USD", help="Stop sending new documents once this "
                                   "run has spent this much (default: max_cost in the config's batch "
                                   "table); finished results are kept, exit 1, rerun to continue. Checked "
                                   "before each document: the documents already in flight (up to "
                                   "--concurrency) finish and may pass it. Every tier needs a known price.")
    ] = None,
    via: Annotated[
        str | None, typer.Option("--via", metavar="live|batch", help="How tiers without their own `via` "
                                 "send: live (default) or batch (the provider's Batch API, in waves, at its "
                                 "batch price; a rerun continues the waves). See `extractkit batch status`.")
    ] = None,
    poll: Annotated[
        float | None, typer.Option("--poll", min=0, metavar="SECONDS", help="With batch tiers: seconds "
                                   "between polls of the open batches (default 30).")
    ] = None,
) -> None:
    """Extract from every document under PATHS; record every attempt in the ledger.

    Example: extractkit extract invoices/ --config extractkit.toml --out results.jsonl

    A rerun resumes: successes are reused, transient failures (rate limit, API error, timeout,
    connection error) are sent again, validation failures too with --retry-failed.

    Know the bill first: extractkit extract invoices/ -c extractkit.toml --dry-run

    From object storage (pip install 'extractkit[s3]'; credentials from the environment, AWS_*):
    extractkit extract s3://bucket/invoices/ -c extractkit.toml --out results.jsonl

    Exit codes: 0 all documents extracted, 1 some failed (listed) or --max-cost was reached (the
    rest were left unattempted: run again to resume) or, with --via batch, the Batch API stopped
    the run (no Batch API, a batch the provider failed or lost, an unreadable output file: the
    error says how many documents are left in which waves and what frees them), 2 usage or config
    error, 3 the provider stopped answering or refused the key (the rest were left unattempted:
    run again to resume).
    """
    from ..batch import URI, BatchRunner, as_source, count_documents, open_limiter
    from ._build import build
    from ._ledger_opt import ledger_choice, open_ledger

    extractor, cfg = build(config, schema, resolve_keys=not dry_run)  # a dry run needs no key
    from ._batch import extract_via_batch, tier_vias

    vias = tier_vias(extractor, via)  # per tier: its own `via`, else --via, else live
    sources = [as_source(p) for p in paths]  # scheme://... is a URI (s3://bucket/prefix)
    for p in sources:
        if not isinstance(p, URI) and not p.exists() and not p.is_symlink():
            raise fail_usage(f"no such file or folder: {p}")
    # counted without reading a file (a URI prefix: listed): the progress bar's total; NoDocuments
    # (exit 2) if none
    total = count_documents(list(sources), include)
    max_cost = max_cost if max_cost is not None else cfg.batch.max_cost
    if dry_run:
        from ._estimate import dry_run as run_dry

        raise typer.Exit(run_dry(extractor, cfg, sources, ledger_choice(ledger_path, cfg).path,
                                 include=include, force=force, retry_failed=retry_failed,
                                 max_cost=max_cost, as_json=as_json, vias=vias))  # fmt: skip
    if out_path is not None:
        check_writable(out_path)  # before a run is started: never leave a run `running`
    if "batch" in vias.values():  # the wave driver (either ledger engine; no work queue)
        raise typer.Exit(extract_via_batch(
            extractor, cfg, ledger_path, sources, vias=vias, out_path=out_path, force=force,
            retry_failed=retry_failed, include=include, as_json=as_json, max_cost=max_cost,
            concurrency=concurrency, poll_s=poll,
        ))  # fmt: skip
    if ledger_choice(ledger_path, cfg).is_url:  # a shared ledger: enqueue, then one local worker
        from ._work import extract_shared

        raise typer.Exit(extract_shared(
            extractor, cfg, ledger_path, sources, include=include, out_path=out_path, force=force,
            concurrency=concurrency or cfg.batch.concurrency, retry_failed=retry_failed, as_json=as_json,
            rpm=rpm or cfg.batch.rpm, tpm=tpm or cfg.batch.tpm, max_cost=max_cost,
        ))  # fmt: skip
    with open_ledger(ledger_path, cfg) as ledger, open_limiter(ledger, rpm or cfg.batch.rpm,
                                                                tpm or cfg.batch.tpm) as limiter:  # fmt: skip
        # opened here, closed here; so is the extractor. The limiter is shared on PostgreSQL
        runner = BatchRunner(extractor, ledger, concurrency=concurrency or cfg.batch.concurrency,
                             force=force, retry_failed=retry_failed, out=out_path, include=include,
                             freeze_gc=True, max_bytes=cfg.batch.max_bytes,
                             max_chars=cfg.batch.max_chars, max_cost=max_cost, limiter=limiter)  # fmt: skip
        code = _run_batch(runner, ledger, sources, as_json, total)
    raise typer.Exit(code)


def check_writable(path: Path | None, option: str = "--out") -> None:
    """Before any work: exit 2 with `error: cannot write OPTION PATH: why` if ``path`` cannot be
    written (its folder is created, as the write would; no file is left behind)."""
    from .._files import check_writable as check

    if path is None:
        return
    try:
        check(path)
    except OSError as exc:
        raise fail_usage(f"cannot write {option} {path}: {exc.strerror or exc}") from None


local_app = typer.Typer(help="The bundled local model (SmolLM2-135M on llama.cpp's server, via xllamacpp).",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(local_app, name="local")


@local_app.command("serve")
def local_serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8012,
    n_ctx: Annotated[int, typer.Option(help="Context window of each slot (tokens).")] = N_CTX,
    parallel: Annotated[int, typer.Option(min=1, help="Slots: requests answered at once.")] = 1,
) -> None:
    """Run the local model server in the foreground (OpenAI-compatible, 127.0.0.1).

    Example: extractkit local serve --port 8012 --parallel 2, then
    EXTRACTKIT_LOCAL_URL=http://127.0.0.1:8012/v1 (or OPENAI_BASE_URL) points extractkit at it.
    """
    import os

    from ..local import MODEL_NAME, check_installed, server_command

    check_installed()
    cmd = server_command(port, n_ctx, parallel)
    slots = plural(parallel, "slot")
    err.print(f"serving {MODEL_NAME} at http://127.0.0.1:{port}/v1 with {slots} of {n_ctx} tokens "
              "(Ctrl-C stops it). It proves the pipeline, not accuracy.", highlight=False)  # fmt: skip
    os.execv(cmd[0], cmd)


def _run_batch(runner: Any, ledger: Any, paths: list[Any], as_json: bool, total: int | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]extracting"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.description}"), TimeElapsedColumn(),
        console=err, transient=False, disable=as_json or not err.is_terminal,
    )  # fmt: skip
    task = progress.add_task("", total=total)
    details: dict[str, str] = {}  # path -> why it was not extracted

    def on_result(r: Any, s: Any) -> None:
        if r.status != "ok":
            details[r.path] = r.error or r.outcome or r.status
        wins = " ".join(f"{k}:{v}" for k, v in s.wins.items())
        fails = " ".join(f"{k}:{v}" for k, v in s.tier_failures.items())
        progress.update(
            task, advance=1,
            description=f"ok {s.ok} failed {s.failed} errors {s.errors} | wins {wins or '-'} "
            f"| tier failures {fails or '-'} | cost {_money(s.cost_usd)}",
        )  # fmt: skip
        if not progress.disable:
            return
        if not as_json:
            err.print(f"{r.status:6} {r.tier or r.outcome or '':16} {r.path}", highlight=False)

    runner.on_result = on_result

    async def run() -> Any:
        async with runner.extractor:  # built by the command: closed by it, on the loop it ran on
            return await runner.run(list(paths), total=total)

    try:
        with progress:
            summary = asyncio.run(run())
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished documents are kept in the ledger; "
                  "run the same command again to resume.")  # fmt: skip
        return EXIT_INTERRUPTED
    return finish_extract(summary, ledger, details, as_json)


def finish_extract(summary: Any, ledger: Any, details: dict[str, str] | None, as_json: bool) -> int:
    """An extract run's summary (a table, or JSON) and its exit code: live and `--via batch` alike."""
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_summary(summary, ledger, details)
    if summary.error:  # the provider stopped answering: say where, once, without a traceback
        err.print("[bold red]error:[/]", end=" ")
        err.print(summary.error, highlight=False, markup=False, soft_wrap=True)
        return EXIT_FAILED if summary.status == "stopped_max_cost" else EXIT_UNREACHABLE
    return EXIT_OK if not summary.failed_paths else EXIT_FAILED


def _print_summary(summary: Any, ledger: Any, details: dict[str, str] | None = None) -> None:
    why = ": the provider refused the API key" if getattr(summary, "key_refused", False) else ""
    table = _narrow_table(f"batch {summary.run_id} ({summary.status}{why})")
    for col in ("documents", "ok", "failed", "errors", "skipped", "resumed", "attempts", "cost"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row(*(str(x) for x in (summary.documents, summary.ok, summary.failed,
                  summary.errors, summary.skipped + summary.special, summary.resumed,
                  summary.attempts)), _cost(summary.cost_usd))  # fmt: skip
    out.print(table)
    notes = [f"{n} {what}" for n, what in (
        (summary.retried, "sent again (last result transient or, with --retry-failed, invalid)"),
        (summary.duplicates, "identical to another path (sent once)"),
        (summary.special, "special files (FIFO, socket, device) skipped unopened"),
        (summary.unattempted, "left unattempted"),
    ) if n]  # fmt: skip
    if notes:
        out.print("; ".join(notes), highlight=False)
    if summary.wins:
        out.print("wins by tier: " + ", ".join(f"{k} {v}" for k, v in summary.wins.items()))
    if summary.failed_paths:
        out.print(f"[red]{plural(len(summary.failed_paths), 'document')} not extracted:[/]")
        by_path = {r.path: r for r in ledger.unfinished(summary.run_id)}
        for p in summary.failed_paths:
            r = by_path.get(p)
            detail = (details or {}).get(p) or ((r.error or r.outcome) if r else "see the ledger")
            out.print(f"  {p}: {detail}", highlight=False, markup=False)
    if summary.resumed_failed:
        out.print(f"{plural(summary.resumed_failed, 'of them', 'of them')} failed in an earlier run with "
                  "this chain and " + ("was" if summary.resumed_failed == 1 else "were") + " not sent again: "
                  "add --retry-failed to send them again (a changed prompt, example or schema needs no flag)",
                  highlight=False, markup=False)  # fmt: skip
    out.print(f"ledger: {ledger.target}", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(EXIT_INTERRUPTED)
