"""`extractkit extract --via batch` (the run) and `extractkit batch status | cancel`: the chain
through the provider's Batch API in waves (``batch/_waves.py``), its state in the ledger
(``ledger/_waves.py``). Errors go through the one handler (``_app.error_exit``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .._errors import ConfigError
from .._words import plural
from ._app import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    _narrow_table,
    app,
    err,
    fail_usage,
    finish_extract,
    out,
)
from ._ledger_opt import ConfigOpt, LedgerOpt

WAYS = ("live", "batch")
DEFAULT_POLL_S = 30.0

batch_app = typer.Typer(help="The provider's Batch API waves of `extract --via batch`: status, cancel.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(batch_app, name="batch")


def tier_vias(extractor: Any, via: str | None) -> dict[str, str]:
    """How each tier runs: its own ``via`` (config), else ``via`` (--via), else live."""
    if via is not None and via not in WAYS:
        raise fail_usage(f'--via must be "live" or "batch", got {via!r}')
    return {t.name: getattr(t, "via", None) or via or "live" for t in extractor.tiers}


def batch_tiers(extractor: Any) -> list[str]:
    """The tiers whose config says ``via = "batch"``."""
    return [t.name for t in extractor.tiers if getattr(t, "via", None) == "batch"]


def refuse_batch_tiers(extractor: Any, command: str) -> None:
    """`worker` / `enqueue`: the work queue sends live; a tier set to batch is a usage error."""
    names = batch_tiers(extractor)
    if names:
        raise fail_usage(
            f"`extractkit {command}` sends every request live (the work queue has no Batch API waves), "
            f"and {plural(len(names), 'tier', 'tiers').split(' ', 1)[1]} {', '.join(map(repr, names))} "
            f"{'say' if len(names) > 1 else 'says'} via = \"batch\": "
            "run `extractkit extract DOCS -c CONFIG --via batch` instead, or set via = \"live\""
        )


def extract_via_batch(
    extractor: Any, cfg: Any, ledger_path: str | None, sources: list[Any], *, vias: dict[str, str],
    out_path: Path | None, force: bool, retry_failed: bool, include: list[str] | None, as_json: bool,
    max_cost: float | None, concurrency: int | None, poll_s: float | None,
) -> int:  # fmt: skip
    """`extract --via batch`: the WaveRunner on the ledger (SQLite or PostgreSQL: no work queue);
    the same --out lines, summary and exit codes as `extract`."""
    from ..batch import WaveRunner
    from ._ledger_opt import open_ledger

    poll = poll_s if poll_s is not None else getattr(cfg.batch, "poll_s", DEFAULT_POLL_S)
    with open_ledger(ledger_path, cfg) as ledger:
        runner = WaveRunner(
            extractor, ledger, via="batch", tier_via=vias, poll_s=poll,
            concurrency=concurrency or cfg.batch.concurrency, force=force, retry_failed=retry_failed,
            out=out_path, include=include, max_cost=max_cost, max_bytes=cfg.batch.max_bytes,
            max_chars=cfg.batch.max_chars,
        )  # fmt: skip
        details: dict[str, str] = {}

        def on_result(r: Any, s: Any) -> None:
            if r.status != "ok":
                details[r.path] = r.error or r.outcome or r.status
            if not as_json:
                err.print(f"{r.status:6} {r.tier or r.outcome or '':16} {r.path}", highlight=False)

        def on_wave(e: Any) -> None:
            if not as_json and e.event in ("submitted", "ingested"):
                err.print(f"wave {e.wave} part {e.part} ({e.tier}, {plural(e.lines, 'line')}): {e.event} "
                          f"[{e.status}] {e.provider_batch_id or ''}", highlight=False)  # fmt: skip

        def on_note(text: str) -> None:
            if not as_json:
                err.print(f"note: {text}", highlight=False, markup=False, soft_wrap=True)

        runner.on_result, runner.on_wave, runner.on_note = on_result, on_wave, on_note

        async def run() -> Any:
            async with extractor:
                return await runner.run(list(sources))

        try:
            summary = asyncio.run(run())
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: the submitted batches and finished documents are kept in the "
                      "ledger; run the same command again to continue the waves.")  # fmt: skip
            return EXIT_INTERRUPTED
        return finish_extract(summary, ledger, details, as_json)


def _chain_keys(config: Path | None, schema: str | None) -> tuple[Any, Any, Any]:
    """(extractor or None, cfg or None, (schema_hash, config_hash) or (None, None)): the chain of
    -c CONFIG (or ./extractkit.toml), else every chain of the ledger."""
    from ._build import build
    from ._ledger_opt import DEFAULT_CONFIG

    if config is None and not DEFAULT_CONFIG.is_file():
        return None, None, (None, None)
    extractor, cfg = build(config, schema, resolve_keys=False)
    return extractor, cfg, (extractor.schema_hash, extractor.config_hash)


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _part(job: Any) -> dict[str, Any]:
    d = dataclasses.asdict(job)
    d["provider_batch_id"] = job.provider_batch_id
    for k in ("created_at", "submitted_at", "ended_at", "ingested_at", "updated_at"):
        d[k] = _iso(d[k])
    return d


def _reasons(errors: list[Any], keep: int = 5) -> str:
    """A failed batch's ``errors.data`` in one line: ``code: message (line N)``, the first few."""
    said = []
    for e in errors[:keep]:
        e = e if isinstance(e, dict) else {"message": str(e)}
        text = ": ".join(str(e[k]) for k in ("code", "message") if e.get(k))
        said.append(text + (f" (line {e['line']})" if e.get("line") else ""))
    more = f" (+{len(errors) - keep} more)" if len(errors) > keep else ""
    return "; ".join(said) + more if said else "no reason given"


@batch_app.command("status")
def status(
    config: ConfigOpt = None,
    schema: Annotated[str | None, typer.Option(help="module:Model, overrides the config.")] = None,
    ledger_path: LedgerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the Batch API waves in the ledger: per wave and part, the tier, model, status, lines,
    completed and failed (as the provider counts them), documents, provider batch id and times.

    Example: extractkit batch status -c extractkit.toml

    With a config (-c, or ./extractkit.toml) only its chain's waves; without, every chain's.
    """
    from ._ledger_opt import open_ledger

    _, cfg, (schema_hash, config_hash) = _chain_keys(config, schema)
    with open_ledger(ledger_path, cfg, must_exist=True) as ledger:
        waves = ledger.wave_summary(schema_hash, config_hash)
        jobs = sorted(ledger.batch_jobs(schema_hash=schema_hash, config_hash=config_hash),
                      key=lambda j: (j.schema_hash, j.config_hash, j.wave, j.part))  # fmt: skip
        target = ledger.target
    if as_json:
        doc = {
            "ledger": str(target),
            "waves": [dict(dataclasses.asdict(w), tiers=list(w.tiers), created_at=_iso(w.created_at),
                           ended_at=_iso(w.ended_at)) for w in waves],  # fmt: skip
            "parts": [_part(j) for j in jobs],
            "open_parts": sum(1 for j in jobs if j.status not in ("ingested", "abandoned")),
        }
        print(json.dumps(doc, indent=2))
        raise typer.Exit(EXIT_OK)
    if not waves:
        out.print(f"no batch waves in {target}" + (" for this chain" if schema_hash else ""), highlight=False)
        raise typer.Exit(EXIT_OK)
    table = _narrow_table("waves")
    for col in ("wave", "tiers", "parts", "open", "lines", "completed", "failed", "docs", "pending", "unrun"):
        table.add_column(col, justify="left" if col == "tiers" else "right")
    for w in waves:
        table.add_row(str(w.wave), ",".join(w.tiers), str(w.parts), str(w.open_parts), str(w.lines),
                      str(w.completed), str(w.failed), str(w.documents), str(w.pending + w.sent),
                      str(w.unrun))  # fmt: skip
    out.print(table)
    for w in waves:
        dropped = [f"{n} {what}" for n, what in ((w.cancelled, "cancelled before it was submitted"),
                   (w.superseded, "made final another way before it was sent")) if n]  # fmt: skip
        if dropped:
            out.print(f"wave {w.wave}: " + ", ".join(dropped) + " (not sent)", highlight=False)
        if w.abandoned:
            out.print(f"wave {w.wave}: {w.abandoned} abandoned (sent, no answer: the provider lost the"
                      " batch or it was given up with `batch cancel --abandon`; freed)",
                      highlight=False)  # fmt: skip
    for j in jobs:  # one line per part: ids and times do not fit a table in 80 columns
        when = (("submitted", j.submitted_at), ("ended", j.ended_at))
        times = ", ".join(f"{k} {_iso(v)}" for k, v in when if v)
        line = (f"wave {j.wave} part {j.part}: {j.tier} ({j.model}) {j.status}, {plural(j.n_lines, 'line')}, "
                f"{j.n_completed} completed, {j.n_failed} failed, "
                f"batch {j.provider_batch_id or '-'}")  # fmt: skip
        line += f"; {times}" if times else ""
        if j.errors:  # the provider failed it: its reasons (``errors.data``), as `--json` has them
            line += f"; the provider failed this batch: {_reasons(j.errors)}"
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    out.print(f"ledger: {target}", highlight=False)


@batch_app.command("cancel")
def cancel(
    config: ConfigOpt = None,
    schema: Annotated[str | None, typer.Option(help="module:Model, overrides the config.")] = None,
    ledger_path: LedgerOpt = None,
    wave: Annotated[int | None, typer.Option("--wave", min=1, help="Cancel this wave's open batches.")] = (
        None
    ),
    all_: Annotated[bool, typer.Option("--all", help="Cancel every open batch of the chain.")] = False,
    abandon: Annotated[bool, typer.Option(
        "--abandon", help="Whatever the provider answers (it lost the batch, its output cannot be read): mark"
        " every unfinished part abandoned and free its documents that have no recorded answer.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Cancel the config's open provider batches (a wave, or all). The next `extract --via batch`
    with the same config reads what they answered and sends the lines they did not run again, in
    the next wave. Parts never submitted (e.g. the provider has no Batch API) and documents still
    waiting for a wave are dropped: those documents are free for a live `extract` or a later
    `--via batch` run (the output says how many). A batch the provider will not cancel any more
    (already finalizing or ended) is reported as it is, and the others are still cancelled. A
    batch the provider no longer knows (HTTP 404) is abandoned: its unanswered documents are freed.

    --abandon: the way out that always works, when the provider lost a batch or its output cannot
    be read: every unfinished part of the scope is cancelled if the provider still can, then marked
    abandoned whatever it answered, and its documents with no recorded answer are freed (the
    provider may have billed the lines it ran; an answer arriving later is ignored, never
    ingested twice).

    Example: extractkit batch cancel -c extractkit.toml --all
    """
    from ..batch import BatchProvider
    from ._build import build
    from ._ledger_opt import open_ledger

    if (wave is None) == (not all_):
        raise fail_usage("say which batches to cancel: --wave N or --all")
    extractor, cfg = build(config, schema)  # the keys: the provider is called
    keys = (extractor.schema_hash, extractor.config_hash)
    rows: list[dict[str, Any]] = []
    lost: list[str] = []  # parts the provider no longer knows (HTTP 404), or any with --abandon
    with open_ledger(ledger_path, cfg, must_exist=True) as ledger:
        jobs = [j for j in ledger.open_batch_jobs(*keys) if wave is None or j.wave == wave]
        waiting = sum(w.pending for w in ledger.wave_summary(*keys) if wave is None or w.wave == wave)
        if wave is not None and not jobs and not waiting:
            raise ConfigError(f"wave {wave} has no open batch and no document waiting for this chain "
                              "(`extractkit batch status` lists them)")  # fmt: skip

        async def run() -> None:
            async with extractor:
                providers: dict[str, BatchProvider] = {}
                for job in jobs:
                    row = {"wave": job.wave, "part": job.part, "tier": job.tier,
                           "provider_batch_id": job.provider_batch_id, "was": job.status}  # fmt: skip
                    rows.append(row)
                    if job.provider_batch_id is None or job.terminal:
                        # never submitted ('building' ones are dropped below) or ended: nothing to cancel
                        unsent = job.status == "building" and job.input_file_id is None
                        row["status"] = "dropped" if unsent else job.status
                        continue
                    p = providers.get(job.tier)
                    if p is None:
                        client = await extractor._client(extractor.tier(job.tier))
                        p = providers[job.tier] = BatchProvider(client, retry_policy=extractor.policy.retry,
                                                                breaker=extractor._breaker)  # fmt: skip
                    batch, refused, gone = await p.cancel_or_lose(job.provider_batch_id, abandon=abandon)
                    if refused is not None:
                        row["refused"] = refused
                    if batch is None:
                        row["status"], row["said"] = "abandoned", gone  # it is given up below
                        lost.append(job.id)
                        continue
                    await asyncio.to_thread(ledger.batch_job_polled, job.id, batch.status)
                    row["status"] = batch.status

        asyncio.run(run())
        dropped, freed = ledger.cancel_unsent(*keys, wave)
        if abandon:  # every part of the scope not read back, whatever the provider said
            gone = ledger.abandon_batch_jobs(*keys, wave=wave)
            for r in rows:
                if r["status"] != "dropped":
                    r["status"] = "abandoned"
        else:
            gone = ledger.abandon_batch_jobs(*keys, job_ids=lost)
        abandoned, freed_lost = gone
    if as_json:
        print(json.dumps({"parts": rows, "parts_dropped": dropped, "documents_freed": freed,
                          "parts_abandoned": abandoned, "documents_abandoned": freed_lost},
                         indent=2))  # fmt: skip
        raise typer.Exit(EXIT_OK)
    if not rows and not freed:
        out.print("no open batch and no document waiting for this chain", highlight=False)
        raise typer.Exit(EXIT_OK)
    for r in rows:
        said = (f"wave {r['wave']} part {r['part']} ({r['tier']}) {r['provider_batch_id'] or '-'}: "
                f"{r['was']} -> {r['status']}")  # fmt: skip
        if r["status"] == "dropped":
            said += " (never submitted)"
        if r["status"] == "abandoned":
            said += f" (given up: {r['said']})" if r.get("said") else " (given up)"
        elif r.get("refused"):
            said += f" (not cancelled: the provider refused, the batch is {r['status']}: {r['refused']})"
        out.print(said, highlight=False, markup=False, soft_wrap=True)
    out.print(f"{plural(freed, 'document')} freed (never submitted to the provider): a live `extractkit "
              "extract` or the next `--via batch` run takes them", highlight=False)  # fmt: skip
    if abandoned:
        out.print(f"{plural(freed_lost, 'document')} freed from {plural(abandoned, 'abandoned part')}"
                  " (sent, no answer recorded; the provider may have billed the lines it ran, and an"
                  " answer arriving later is ignored): a live `extractkit extract` or the next"
                  " `--via batch` run sends them again", highlight=False)  # fmt: skip
    stuck = [r for r in rows if r["status"] in ("completed", "failed", "expired")]
    if stuck and not abandon:
        out.print(f"{plural(len(stuck), 'part')} ended at the provider but not read back yet: the next "
                  "`extract --via batch` reads them; if their output cannot be read, `extractkit batch "
                  "cancel --all --abandon` frees their documents", highlight=False)  # fmt: skip
    if any(r["status"] in ("cancelling", "cancelled") for r in rows):
        out.print("run the same `extractkit extract --via batch` again: it reads what the cancelled batches "
                  "answered and sends the rest in the next wave", highlight=False)  # fmt: skip
    raise typer.Exit(EXIT_OK)
