"""`extractkit enqueue`, `extractkit worker`, `extractkit status`: many workers on one PostgreSQL
ledger and its work queue (``ledger/_queue.py``, ``batch/_worker.py``).

A shared queue needs a ledger every worker reaches: these commands take a PostgreSQL ledger
(``--ledger postgresql://...``, ``$EXTRACTKIT_LEDGER`` or the config's ``[ledger] url``) and say so
in one line when given a SQLite file (one machine needs no queue: ``extractkit extract``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from .._errors import ConfigError
from .._words import plural
from ._app import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    _cost,
    _narrow_table,
    app,
    err,
    out,
)
from ._ledger_opt import ConfigOpt

SharedLedgerOpt = Annotated[
    str | None,
    typer.Option(
        "--ledger", show_default=False, metavar="URL",
        help="The shared ledger: postgresql://user@host/db. Default: $EXTRACTKIT_LEDGER, else the "
        "config's \\[ledger] url.",
    ),
]  # fmt: skip
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def shared_ledger_url(ledger: str | None, cfg: Any) -> str:
    """The PostgreSQL URL of the shared ledger (``_ledger_opt.ledger_choice``: --ledger,
    $EXTRACTKIT_LEDGER, [ledger] url or path). A SQLite file is a ConfigError that says which
    one was found and how to give a PostgreSQL one."""
    from ..ledger import ENV_VAR, refuse_other_databases
    from ._ledger_opt import ledger_choice

    choice = ledger_choice(ledger, cfg)
    if choice.is_url:
        return str(choice.path)
    # the value as given (a Path() of "mysql://u:pw@h/db" lost a slash): another database's URL or a
    # libpq keyword string is refused as the ledger refuses it, without repeating it (a password)
    raw = ledger if ledger else os.environ.get(ENV_VAR) or str(choice.path)
    refuse_other_databases(raw)
    raise ConfigError(
        f"a shared work queue needs a PostgreSQL ledger: {choice.path} ({choice.source}) is a SQLite file; "
        f"pass --ledger postgresql://user@host/db, set ${ENV_VAR} or [ledger] url (on one machine "
        "`extractkit extract` needs no queue)"
    )


def open_shared(ledger: str | None, cfg: Any, *, outage_limit_s: float | None = None) -> tuple[Any, Any]:
    """(the PostgreSQL ``Ledger``, its ``WorkQueue``): both the caller's to close.
    ``outage_limit_s`` (a worker's): a database that is down (refusing connections, starting up)
    is waited for that long, as during a run, then ``LedgerUnavailable`` (exit 1); a wrong
    password or a missing database still fails at once."""
    from ..ledger import Ledger, Outage, WorkQueue, mask

    url = shared_ledger_url(ledger, cfg)
    store_text = cfg.ledger.store_text if cfg is not None else True

    def opened() -> tuple[Any, Any]:
        led = Ledger(url, store_text=store_text)
        try:
            queue = WorkQueue(url)
        except BaseException:
            led.close()
            raise
        return led, queue

    if outage_limit_s is None:
        return opened()
    return Outage(outage_limit_s, target=f"the ledger {mask(url)}").call(opened)


def run_cancellable(coro: Any, first_signal: Any = None) -> Any:
    """``asyncio.run(coro)``; SIGTERM and Ctrl-C cancel it (so a worker puts back what it holds)
    and raise KeyboardInterrupt here. ``first_signal(signum)``: called on the first signal instead
    (a graceful stop); the second one cancels."""

    async def main() -> Any:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        stopped: list[int] = []

        def stop(signum: int) -> None:
            stopped.append(signum)
            if first_signal is not None and len(stopped) == 1:
                first_signal(signum)
            else:
                task.cancel()

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
                pass
        try:
            return await task
        except asyncio.CancelledError:
            if stopped:
                raise KeyboardInterrupt from None
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


@app.command()
def enqueue(
    paths: Annotated[list[str], typer.Argument(help="Files or folders (walked recursively), or URIs (s3://bucket/prefix).")],
    config: ConfigOpt = None,
    schema: Annotated[str | None, typer.Option(help="module:Model, overrides the config.")] = None,
    ledger: SharedLedgerOpt = None,
    include: Annotated[
        list[str] | None,
        typer.Option(help="Only file names matching this glob (repeatable; case-insensitive)."),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="Also queue again documents whose job failed validation (transient "
                           "failures and unreadable documents are always queued again).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue every document under PATHS for the config's schema and chain, on a PostgreSQL ledger.

    Example: extractkit enqueue invoices/ -c extractkit.toml --ledger postgresql://me@db/extractkit

    Each document is read once to know it by content: the same document queued twice (or at two
    paths) is one job. Then run `extractkit worker` on as many machines as you like.
    Exit codes: 0 queued, 1 some documents could not be read (listed, not queued), 2 usage or config.
    """
    from ..batch import aenqueue
    from ._app import fail_usage
    from ._build import build

    extractor, cfg = build(Path(config) if config else None, schema, resolve_keys=False)
    from ._batch import refuse_batch_tiers

    refuse_batch_tiers(extractor, "enqueue")
    from ..batch import URI, as_source

    sources = [as_source(p) for p in paths]  # scheme://... is a URI (s3://bucket/prefix)
    for p in sources:
        if not isinstance(p, URI) and not p.exists() and not p.is_symlink():
            raise fail_usage(f"no such file or folder: {p}")
    led, queue = open_shared(ledger, cfg)
    try:
        result = asyncio.run(aenqueue(extractor, queue, sources, include=include,
                                      retry_failed=retry_failed, max_bytes=cfg.batch.max_bytes,
                                      max_chars=cfg.batch.max_chars, ledger=led))  # fmt: skip
    finally:
        queue.close()
        led.close()
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        c = result.counts
        parts = [f"{plural(c.new, 'new document')} queued"]
        parts += [f"{n} {what}" for n, what in (
            (c.requeued, "failed earlier, queued again"), (c.waiting, "already waiting"),
            (c.in_flight, "already in flight"), (c.done, "already done"),
            (c.failed, "failed validation earlier (not queued again: --retry-failed)"),
        ) if n]  # fmt: skip
        out.print("; ".join(parts), highlight=False)
        if result.skipped:
            out.print(f"{plural(result.skipped, 'file')} of other types skipped", highlight=False)
        for path, exc in result.unreadable:  # the message names the path
            err.print(f"not queued: {exc}" if path in str(exc) else f"not queued: {path}: {exc}",
                      highlight=False, markup=False)  # fmt: skip
    raise typer.Exit(EXIT_FAILED if result.unreadable else EXIT_OK)


@app.command()
def worker(
    config: ConfigOpt = None,
    schema: Annotated[str | None, typer.Option(help="module:Model, overrides the config.")] = None,
    ledger: SharedLedgerOpt = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Documents in flight.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="When the queue is empty, wait for more "
                                       "(until SIGTERM or Ctrl-C) instead of exiting.")] = False,
    lease: Annotated[float, typer.Option("--lease", min=1, metavar="SECONDS", help="How long a claimed "
                                         "document stays this worker's without a heartbeat (sent every "
                                         "third of it); a dead worker's documents go to the others after "
                                         "it.")] = 60.0,
    outage_limit: Annotated[float, typer.Option("--outage-limit", min=0, metavar="SECONDS", help="How long "
                                                "to wait for the ledger's database to come back (a restart, "
                                                "a failover) before stopping with exit 1.")] = 60.0,
    rpm: Annotated[float | None, typer.Option(min=1, help="Requests/minute limit.")] = None,
    tpm: Annotated[float | None, typer.Option(min=1, help="Tokens/minute limit.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Send again documents whose last result in the ledger "
                                               "failed validation.")] = False,
    max_cost: Annotated[float | None, typer.Option("--max-cost", metavar="USD", help="Stop claiming once "
                                                   "this worker has spent this much.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Claim queued documents of the config's schema and chain, extract and record them.

    Example: extractkit worker -c extractkit.toml --ledger postgresql://me@db/extractkit --concurrency 64

    Run any number, on any machines. Exits when nothing is waiting and no other worker holds a
    document (unless --wait). SIGTERM or Ctrl-C: no new claims, the documents in flight finish, the
    rest is put back at once (a second signal stops at once, putting back the ones in flight too);
    a worker killed outright has its documents taken over by the others when its lease runs out.

    Exit codes: 0 done (also a --wait worker stopped by SIGTERM: its normal stop); 1 some documents
    failed (extractkit status --failed lists them), --max-cost was reached, or the ledger was
    unreachable for longer than --outage-limit (its documents go back to the queue); 2 usage or config
    (also: only other chains' documents are waiting); 3 the provider stopped answering; 130
    stopped by Ctrl-C, or by SIGTERM with documents left undone.
    """
    from ..batch import Worker, open_limiter
    from ._build import build

    extractor, cfg = build(Path(config) if config else None, schema)
    from ._batch import refuse_batch_tiers

    refuse_batch_tiers(extractor, "worker")
    led, queue = open_shared(ledger, cfg, outage_limit_s=outage_limit)
    reasons: dict[str, str] = {}  # path -> why it was not extracted, as `extract` prints it
    signals: list[int] = []

    def on_result(r: Any, _s: Any) -> None:
        if r.status != "ok":
            reasons[r.path] = r.error or r.outcome or r.status

    try:
        # the limits are the organisation's: shared with every process on this ledger (ledger/_limits.py)
        with open_limiter(led, rpm or cfg.batch.rpm, tpm or cfg.batch.tpm) as limiter:
            ceiling = max_cost if max_cost is not None else cfg.batch.max_cost
            w = Worker(extractor, led, queue, concurrency=concurrency or cfg.batch.concurrency, lease_s=lease,
                       wait=wait, retry_failed=retry_failed, max_bytes=cfg.batch.max_bytes,
                       max_chars=cfg.batch.max_chars, max_cost=ceiling, limiter=limiter,
                       outage_limit_s=outage_limit, on_result=on_result)  # fmt: skip
            if not as_json:
                err.print(f"worker {w.worker_id} on {queue.target}", highlight=False)

            async def run() -> Any:
                async with extractor:
                    return await w.run()

            def graceful(signum: int) -> None:  # the first SIGTERM / Ctrl-C: what was paid for is kept
                signals.append(signum)
                w.stop()
                err.print("[yellow]stopping[/]: no new document is claimed; the documents in flight finish "
                          "(SIGTERM or Ctrl-C again stops at once)", highlight=False)  # fmt: skip

            try:
                summary = run_cancellable(run(), graceful)
            except KeyboardInterrupt:  # the second signal: what finished is still worth a summary
                _worker_summary(w.summary, reasons, as_json)
                err.print(f"[yellow]stopped[/]: {plural(w.summary.released, 'document')} put back in the "
                          "queue; finished documents are kept", highlight=False)  # fmt: skip
                raise typer.Exit(EXIT_INTERRUPTED) from None
            if summary.batch.documents == 0 and not signals:  # nothing for this chain: say why
                _nothing_for_this_chain(queue, extractor)
    finally:
        queue.close()
        led.close()
    b = summary.batch
    _worker_summary(summary, reasons, as_json, stopped=bool(signals))
    if signals:
        err.print(f"[yellow]stopped[/]: {plural(summary.released, 'document')} put back in the queue; "
                  "finished documents are kept", highlight=False)  # fmt: skip
        # a supervisor stops a --wait worker with SIGTERM: its normal end, unless work was left undone
        if not (wait and signals[0] == signal.SIGTERM and summary.released == 0 and not b.error):
            raise typer.Exit(EXIT_INTERRUPTED)
    if b.error:
        err.print("[bold red]error:[/]", end=" ")
        err.print(b.error, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED if b.status == "stopped_max_cost" else EXIT_UNREACHABLE)
    raise typer.Exit(EXIT_FAILED if b.failed_paths else EXIT_OK)


SHOWN_FAILED = 20  # `not extracted:` lines a worker prints; `extractkit status --failed` lists them all


def _worker_summary(summary: Any, reasons: dict[str, str], as_json: bool, *, stopped: bool = False) -> None:
    """A worker's summary: one table that fits 80 columns, then each document not extracted
    with the reason ``extract`` prints for it. ``stopped``: by a signal (its run ended early, not
    "done")."""
    b = summary.batch
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    rate = b.documents / summary.elapsed_s if summary.elapsed_s > 0 else 0.0
    state = "stopped" if stopped and b.status == "done" else b.status
    table = _narrow_table(f"worker {summary.worker_id} ({state})")
    for col in ("docs", "ok", "failed", "errors", "resumed", "reclaimed", "attempts", "cost", "docs/s"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_row(*(str(x) for x in (b.documents, b.ok, b.failed, b.errors, b.resumed, summary.reclaimed,
                                      b.attempts)), _cost(b.cost_usd), f"{rate:.1f}")  # fmt: skip
    out.print(table)
    for p in b.failed_paths[:SHOWN_FAILED]:
        why = reasons.get(p)
        out.print(f"  not extracted: {p}: {why}" if why else f"  not extracted: {p}", highlight=False,
                  markup=False, soft_wrap=True)  # fmt: skip
    if len(b.failed_paths) > SHOWN_FAILED:
        out.print(f"  ... and {len(b.failed_paths) - SHOWN_FAILED} more: extractkit status --failed lists "
                  "every failed document with its reason", highlight=False, soft_wrap=True)  # fmt: skip


@app.command()
def status(
    config: ConfigOpt = None,
    ledger: SharedLedgerOpt = None,
    failed: Annotated[bool, typer.Option("--failed", help="List the documents whose job failed, with the "
                                         "reason (newest first; --limit of them).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="With --failed: how many to list.")] = 100,
    all_workers: Annotated[bool, typer.Option("--all", help="List every worker, also those stopped or "
                                              "silent for more than 5 minutes.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The shared queue: done, in flight, failed, waiting, per chain; each worker with its rate.

    Example: extractkit status --ledger postgresql://me@db/extractkit --json

    `expired` counts documents whose worker stopped sending heartbeats: the next worker to claim
    takes them over. A running worker's rate is over the last 5 minutes; a stopped or lost
    worker's is what it did while it ran. --failed lists the failed documents with their reason.

    Exit codes: 0 shown, 2 usage or config, or the ledger cannot be opened.
    """
    from ..ledger import WorkQueue
    from ._ledger_opt import load_cli_config

    cfg = load_cli_config(Path(config) if config else None, required=False)
    with WorkQueue(shared_ledger_url(ledger, cfg)) as queue:
        data = queue.status(all_workers=all_workers)
        if failed:
            n_failed, rows = queue.failures(limit=limit)
            data["failed"] = {"total": n_failed, "documents": [
                {"source": r["source"], "sha256": r["document_sha256"], "schema_hash": r["schema_hash"],
                 "config_hash": r["config_hash"], "status": r["result_status"], "outcome": r["outcome"],
                 "error": r["error"], "worker": r["worker_id"], "finished_at": r["finished_at"]}
                for r in rows]}  # fmt: skip
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    t = data["totals"]
    out.print(f"done {t['done']}  in flight {t['in_flight']}  failed {t['failed']}  waiting {t['waiting']}  "
              f"expired leases {t['expired']}  reclaimed so far {t['reclaims']}",
              highlight=False, soft_wrap=True)  # fmt: skip
    for ch in data["chains"]:  # one line per chain: a worker claims only its own config's
        out.print(f"  chain {_chain(ch)}: done {ch['done']}  in flight {ch['claimed']}  failed {ch['failed']}"
                  f"  waiting {ch['waiting']}", highlight=False, soft_wrap=True)  # fmt: skip
    if data["workers"]:
        table = _narrow_table(f"workers (a running one's rate: last {data['rate_window_s'] // 60:g} minutes)")
        for col in ("worker", "state", "held", "done", "failed", "docs/min", "seen"):
            table.add_column(col, justify="left" if col in ("worker", "state") else "right",
                             no_wrap=col != "worker", overflow="fold")  # fmt: skip
        for w in data["workers"]:
            table.add_row(w["id"], w["state"], str(w["in_flight"]), str(w["done"]), str(w["failed"]),
                          f"{w['per_minute']:.1f}", f"{w['last_seen_s']:.0f}s ago")  # fmt: skip
        out.print(table)
    hidden = data.get("hidden_workers") or {}
    older = [plural(n, f"{what} worker") for what, n in hidden.items() if n]
    if older:
        out.print(f"and {' and '.join(older)} not seen for more than {data['rate_window_s'] // 60:g} minutes "
                  "(--all lists them)", highlight=False, soft_wrap=True)  # fmt: skip
    if failed:
        f = data["failed"]
        out.print(f"{plural(f['total'], 'failed document')}" + (f" (the {len(f['documents'])} newest)"
                  if f["total"] > len(f["documents"]) else "") + (":" if f["total"] else ""),
                  highlight=False)  # fmt: skip
        for d in f["documents"]:
            why = d["error"] or d["outcome"] or d["status"]
            out.print(f"  {d['source']}: {why}", highlight=False, markup=False, soft_wrap=True)


def _chain(ch: dict[str, Any]) -> str:
    """A chain as `extractkit status` and the worker name it: schema hash / config hash (16 hex)."""
    return f"{str(ch['schema_hash'])[:16]}/{str(ch['config_hash'])[:16]}"


def _nothing_for_this_chain(queue: Any, extractor: Any) -> None:
    """A worker that found nothing to do while documents of other chains wait was most likely
    started with another config than they were enqueued with: a ConfigError (exit 2) naming the
    chains that wait and this worker's own."""
    mine = (extractor.schema_hash, extractor.config_hash)
    others = [ch for ch in queue.status()["chains"] if (ch["schema_hash"], ch["config_hash"]) != mine
              and int(ch["waiting"]) + int(ch["claimed"])]  # fmt: skip
    if others:
        n = sum(int(ch["waiting"]) + int(ch["claimed"]) for ch in others)
        which = ", ".join(f"{int(ch['waiting']) + int(ch['claimed'])} for {_chain(ch)}" for ch in others)
        own = _chain({"schema_hash": mine[0], "config_hash": mine[1]})
        raise ConfigError(
            f"nothing is queued for this worker's chain {own} "
            f"(schema {extractor.schema.__name__}), but {plural(n, 'document')} of other chains "
            f"wait ({which}; schema hash/config hash): start the worker with the config they were "
            "enqueued with (-c), or enqueue with this one (extractkit status shows the chains)"
        )


def extract_shared(
    extractor: Any, cfg: Any, ledger: str | None, paths: Sequence[Any], *, include: list[str] | None,
    out_path: Path | None, concurrency: int, force: bool, retry_failed: bool, as_json: bool,
    rpm: float | None, tpm: float | None, max_cost: float | None,
) -> int:  # fmt: skip
    """`extractkit extract` on a PostgreSQL ledger: enqueue the documents, then work the queue
    with one local worker until it is drained; other workers may help, and a document another
    worker extracted (or an earlier run did) gets its line from the ledger, as a resumed one.
    ``--out`` has one line per document of PATHS, as on SQLite. Returns the exit code.
    ``--force`` is refused: every worker would have to extract those documents again, and a
    queued job does not carry that yet."""
    from contextlib import ExitStack

    from ..batch import DocResult, Worker, aenqueue, open_limiter
    from ._app import _print_summary

    if force:
        raise ConfigError(
            "--force is not supported on a shared (PostgreSQL) ledger: a queued job does not carry "
            "`extract again`, so any other worker claiming one would resume the result already in "
            "the ledger instead of paying for a new one. To extract documents again, change the chain "
            "(a new prompt, example or model is a new config: its documents are queued and sent anew), "
            "or use --retry-failed for those that failed validation"
        )  # fmt: skip
    led, queue = open_shared(ledger, cfg)
    closing = ExitStack()
    limiter = closing.enter_context(open_limiter(led, rpm, tpm))  # shared with every process on this ledger
    lines: dict[str, DocResult] = {}
    out = None
    try:
        if out_path is not None:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out = out_path.open("w", encoding="utf-8", errors="backslashreplace")

        given: dict[str, str] = {}  # queued (absolute) path -> as given on the command line

        details: dict[str, str] = {}  # path (as queued and as given) -> why it was not extracted

        def write(r: DocResult) -> None:
            if r.status != "ok":  # the summary lists queued (absolute) paths: the same reason as SQLite
                details[r.path] = details[given.get(r.path, r.path)] = r.error or r.outcome or r.status
            if r.path in given:
                r = dataclasses.replace(r, path=given[r.path])
            lines[r.path] = r
            if out is not None:
                out.write(r.to_json() + "\n")
                out.flush()
            if not as_json:
                err.print(f"{r.status:6} {r.tier or r.outcome or '':16} {r.path}", highlight=False)

        mine: set[str] = set()
        w = Worker(extractor, led, queue, concurrency=concurrency, retry_failed=retry_failed,
                   max_bytes=cfg.batch.max_bytes, max_chars=cfg.batch.max_chars, max_cost=max_cost,
                   limiter=limiter, on_result=lambda r, _s: write(r) if r.path in mine else None)  # fmt: skip

        async def run() -> Any:
            async with extractor:
                queued = await aenqueue(extractor, queue, paths, include=include,
                                        retry_failed=retry_failed, max_bytes=cfg.batch.max_bytes,
                                        max_chars=cfg.batch.max_chars, ledger=led)  # fmt: skip
                mine.update(queued.shas)
                given.update(queued.given)
                return queued, await w.run()

        try:
            queued, summary = run_cancellable(run())
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished documents are kept in the ledger and the queue; "
                      "run the same command again to resume.")  # fmt: skip
            return EXIT_INTERRUPTED
        b = summary.batch
        for path, exc in queued.unreadable:  # not queued: an error line each, recorded as on SQLite
            led.record_error(run_id=b.run_id or None, path=path, kind=exc.kind, message=str(exc),
                             schema_hash=extractor.schema_hash,
                             config_hash=extractor.config_hash)  # fmt: skip
            r = DocResult(path=path, status="error", outcome=exc.kind, error=str(exc))
            b.add(r)
            write(r)
        for path, sha in queued.shas.items():  # done elsewhere (another worker, an earlier run)
            path = given.get(path, path)
            if path in lines:
                continue
            row = led.find_final(sha, extractor.schema_hash, extractor.config_hash)
            if row is None:
                r = DocResult(path=path, status="error", sha256=sha, outcome="not_extracted",
                              error="its job did not finish: see `extractkit status`")  # fmt: skip
            else:
                r = DocResult(path=path, status=row["status"], sha256=sha, tier=row["tier"],
                              value=json.loads(row["value_json"]) if row["value_json"] else None,
                              outcome=row["outcome"], error=row["error"], attempts=row["n_attempts"],
                              prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                              cost_usd=row["cost_usd"], resumed=True)  # fmt: skip
            b.add(r)
            write(r)
        if as_json:
            print(json.dumps(b.to_dict(), indent=2))
        else:
            _print_summary(b, led, details)
    finally:
        if out is not None:
            out.close()
        closing.close()  # a shared limiter gives back the budget it did not spend
        queue.close()
        led.close()
    if b.error:
        err.print("[bold red]error:[/]", end=" ")
        err.print(b.error, highlight=False, markup=False, soft_wrap=True)
        return EXIT_FAILED if b.status == "stopped_max_cost" else EXIT_UNREACHABLE
    return EXIT_OK if not b.failed_paths else EXIT_FAILED
