"""`extractkit finetune export|launch|status` and `extractkit examples harvest`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from .._redact import redact_json
from ._app import EXIT_FAILED, app, check_writable, err, fail_usage, out
from ._ledger_opt import ConfigOpt, LedgerOpt
from ._report import parse_when

finetune_app = typer.Typer(
    help="Fine-tuning: export training data, launch the job, poll it.", no_args_is_help=True
)
examples_app = typer.Typer(help="Few-shot example pools.", no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")
app.add_typer(examples_app, name="examples")

FromTier = Annotated[
    list[str] | None, typer.Option("--from-tier", help="Only answers this tier won (repeatable).")
]
Run = Annotated[str | None, typer.Option(help="Only this run id.")]
Since = Annotated[str | None, typer.Option(help="From: 2026-11-01 or 30d ago.")]
Until = Annotated[str | None, typer.Option(help="Until (exclusive).")]
Gold = Annotated[list[Path] | None, typer.Option("--gold", help="Gold file to use as a source (repeatable).")]
Corrections = Annotated[
    Path | None, typer.Option(help='JSON Lines of {"document": sha256-or-path, "value": {...}}: they win.')
]
ExcludeGold = Annotated[
    list[Path] | None, typer.Option("--exclude-gold", help="Keep these gold documents out (repeatable).")
]
IncludeEval = Annotated[
    bool, typer.Option(help="Allow documents used by eval runs (they are left out by default: leakage).")
]
Validation = Annotated[float, typer.Option(help="Share of documents held out for validation.")]
Seed = Annotated[int, typer.Option(help="Seed of the train/validation split.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _setup(config: Path | None, ledger_path: str | Path | None) -> tuple[Any, Any, Any]:
    """The config (required: its schema and fine-tuned tier) and the ledger it reads (must exist)."""
    from ._build import build
    from ._ledger_opt import open_ledger

    extractor, cfg = build(config, None, resolve_keys=False)
    return extractor, cfg, open_ledger(ledger_path, cfg, must_exist=True)


def _selection(
    from_tier: list[str] | None,
    run: str | None,
    since: str | None,
    until: str | None,
    gold: list[Path] | None,
    corrections: Path | None,
    exclude_gold: list[Path] | None,
    include_eval_documents: bool,
    validation: float,
    seed: int,
) -> Any:
    from ..finetune import Selection

    now = time.time()
    return Selection(
        tiers=tuple(from_tier or ()),
        run_id=run,
        since=parse_when(since, now, "--since"),
        until=parse_when(until, now, "--until"),
        gold=tuple(gold or ()),
        corrections=corrections,
        exclude_gold=tuple(exclude_gold or ()),
        include_eval_documents=include_eval_documents,
        validation_fraction=validation,
        seed=seed,
    )


@finetune_app.command("export")
def export(
    config: ConfigOpt = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for train/validation/manifest.")
    ] = Path("finetune"),
    base: Annotated[str, typer.Option(help="Base model to fine-tune.")] = "gpt-4o-mini-2024-07-18",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs, for the cost estimate (and launch).")] = 3,
    ledger_path: LedgerOpt = None,
    from_tier: FromTier = None,
    run: Run = None,
    since: Since = None,
    until: Until = None,
    gold: Gold = None,
    corrections: Corrections = None,
    exclude_gold: ExcludeGold = None,
    include_eval_documents: IncludeEval = False,
    validation: Validation = 0.2,
    seed: Seed = 0,
    as_json: AsJson = False,
) -> None:
    """Write OpenAI chat-format training data from validated extractions in the ledger.

    The system and user messages are exactly what the config's fine-tuned tier sends (its
    template, no examples); the assistant message is the validated JSON.

    Example: extractkit finetune export -c extractkit.toml -o finetune/ --corrections fixes.jsonl
    """
    from ..finetune import export_finetune

    if out_dir.exists() and not out_dir.is_dir():
        raise fail_usage(f"cannot write --out {out_dir}: not a folder (it gets train.jsonl, validation.jsonl "
                         "and manifest.json)")  # fmt: skip
    try:
        out_dir.mkdir(parents=True, exist_ok=True)  # before any work, as every other output is checked
    except OSError as exc:
        raise fail_usage(f"cannot write --out {out_dir}: {exc.strerror or exc}") from None
    sel = _selection(from_tier, run, since, until, gold, corrections, exclude_gold, include_eval_documents,
                     validation, seed)  # fmt: skip
    extractor, _cfg, ledger = _setup(config, ledger_path)
    ft = next((t for t in extractor.tiers if t.kind == "fine_tuned"), None)
    with ledger:
        rep = export_finetune(
            ledger, extractor.schema, out_dir, selection=sel, base=base, tier=ft, epochs=epochs
        )
    if as_json:
        print(json.dumps(redact_json(rep.to_dict()), indent=2))
        return
    out.print(
        f"wrote {rep.train_examples} training and {rep.validation_examples} validation examples to "
        f"{out_dir}/ (manifest.json says how they were chosen)",
        highlight=False,
    )
    out.print("from: " + ", ".join(f"{k} {v}" for k, v in rep.sources.items()), highlight=False)
    if rep.skipped:
        out.print("skipped: " + ", ".join(f"{v} {k}" for k, v in rep.skipped.items()), highlight=False)
    cost = f"${rep.estimated_cost_usd:.4f}" if rep.estimated_cost_usd is not None else "unknown"
    limit = f"{rep.context_limit:,}" if rep.context_limit else "unknown"
    out.print(
        f"{rep.train_tokens:,} training tokens (longest example {rep.longest_tokens:,}, limit "
        f"{limit}); estimated training cost for {rep.epochs} epochs of "
        f"{rep.base_model}: {cost}",
        highlight=False,
    )
    for w in rep.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    out.print(f"next: extractkit finetune launch --dir {out_dir} --model {rep.base_model}", highlight=False)


@finetune_app.command("launch")
def launch_(
    directory: Annotated[
        Path, typer.Option("--dir", help="An export folder (train.jsonl, validation.jsonl).")
    ] = Path("finetune"),
    model: Annotated[str, typer.Option(help="Base model.")] = "gpt-4o-mini-2024-07-18",
    suffix: Annotated[str | None, typer.Option(help="Suffix of the new model's name.")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the provider's).")] = None,
    ledger_path: LedgerOpt = None,
    config: ConfigOpt = None,
    as_json: AsJson = False,
) -> None:
    """Upload the export and create the fine-tuning job; the job is recorded in the ledger.

    Example: extractkit finetune launch --dir finetune/ --suffix invoices --seed 7
    """
    from ..finetune import launch
    from ._ledger_opt import load_cli_config, open_ledger

    cfg = load_cli_config(config, required=False)
    train = directory / "train.jsonl"
    val = directory / "validation.jsonl"
    if not train.is_file():
        raise fail_usage(f"no {train}: run `extractkit finetune export -o {directory}` first")
    with open_ledger(ledger_path, cfg) as ledger:  # the job is recorded in it
        job = launch(ledger, train, val if val.is_file() else None, model=model, suffix=suffix, seed=seed,
                     n_epochs=epochs)  # fmt: skip
    if as_json:
        print(json.dumps(redact_json(job.__dict__), indent=2))
        return
    out.print(
        f"job {job.id}: {job.status} (training file {job.training_file}"
        f"{', validation file ' + job.validation_file if job.validation_file else ''})",
        highlight=False,
    )
    out.print(f"next: extractkit finetune status {job.id}", highlight=False)


@finetune_app.command("status")
def status_(
    job_id: Annotated[str | None, typer.Argument(help="Job id (default: the latest launched).")] = None,
    ledger_path: LedgerOpt = None,
    watch: Annotated[bool, typer.Option(help="Poll until the job ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch.")] = 30.0,
    write_config: Annotated[
        Path | None, typer.Option("--write-config", help="When it succeeded: put the model into this config.")
    ] = None,
    tier: Annotated[
        str | None, typer.Option(help="Tier name to update (default: the fine_tuned one).")
    ] = None,
    config: ConfigOpt = None,
    as_json: AsJson = False,
) -> None:
    """Poll a fine-tuning job; when it succeeded, optionally write the model into the config.

    Example: extractkit finetune status --watch --write-config extractkit.toml

    --write-config shows the diff, keeps the old file as .bak and writes the new one.
    """
    from ..finetune import config_diff, status, with_finetuned_model
    from ._ledger_opt import load_cli_config, open_ledger

    cfg = load_cli_config(config or write_config, required=False)
    with open_ledger(ledger_path, cfg, must_exist=job_id is None) as ledger:  # a polled job is recorded
        while True:
            job = status(ledger, job_id)  # a provider failure is a RunError: exit 1 (see _app.error_exit)
            if not watch or job.done:
                break
            if not as_json:
                err.print(f"{job.id}: {job.status}", highlight=False)
            time.sleep(interval)
    if as_json:
        print(json.dumps(redact_json(job.__dict__), indent=2))
    else:
        out.print(f"job {job.id} ({job.base_model}): {job.status}", highlight=False)
        for e in job.events[-10:]:
            out.print(
                f"  {time.strftime('%H:%M:%S', time.gmtime(e['created_at']))} {e['level']}: {e['message']}",
                markup=False,
                highlight=False,
            )
        if job.error:
            out.print(f"error: {job.error}", markup=False, highlight=False)
        if job.fine_tuned_model:
            out.print(f"model: {job.fine_tuned_model}", highlight=False)
    if job.status in ("failed", "cancelled"):
        raise typer.Exit(EXIT_FAILED)
    if write_config is not None:
        if job.status != "succeeded" or not job.fine_tuned_model:
            raise fail_usage(f"job {job.id} is {job.status}: nothing to write into {write_config} yet")
        if not write_config.is_file():
            raise fail_usage(f"no such config: {write_config}")
        new = with_finetuned_model(write_config.read_text(encoding="utf-8"), job.fine_tuned_model, tier)
        diff = config_diff(write_config, new)
        if not diff:
            err.print(f"{write_config} already uses {job.fine_tuned_model}", highlight=False)
            return
        err.print(diff, markup=False, highlight=False)
        backup = write_config.with_name(write_config.name + ".bak")
        backup.write_text(write_config.read_text(encoding="utf-8"), encoding="utf-8")
        write_config.write_text(new, encoding="utf-8")
        err.print(
            f"wrote {write_config} (old version in {backup}); next: extractkit eval GOLD -c {write_config}",
            highlight=False,
        )


@examples_app.command("harvest")
def harvest(
    config: ConfigOpt = None,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Examples file to write.")] = Path(
        "harvested.jsonl"
    ),
    include_validation: Annotated[
        bool, typer.Option(help="Also use the documents the export would hold out for validation.")
    ] = False,
    ledger_path: LedgerOpt = None,
    from_tier: FromTier = None,
    run: Run = None,
    since: Since = None,
    until: Until = None,
    gold: Gold = None,
    corrections: Corrections = None,
    exclude_gold: ExcludeGold = None,
    include_eval_documents: IncludeEval = False,
    validation: Validation = 0.2,
    seed: Seed = 0,
    as_json: AsJson = False,
) -> None:
    """Build a few-shot examples file from the ledger, with the export's filters, split and leakage rules.

    Use it as a FewShot tier's examples and set it beside the fine-tuned model in `extractkit eval`:
    the same data used two ways.

    Example: extractkit examples harvest -c extractkit.toml -o harvested.jsonl
    """
    from ..finetune import harvest_examples

    check_writable(out_path, "--out")
    sel = _selection(from_tier, run, since, until, gold, corrections, exclude_gold, include_eval_documents,
                     validation, seed)  # fmt: skip
    extractor, _cfg, ledger = _setup(config, ledger_path)
    with ledger:
        rep = harvest_examples(
            ledger, extractor.schema, out_path, selection=sel, include_validation=include_validation
        )
    if as_json:
        print(json.dumps(redact_json(rep.to_dict()), indent=2))
        return
    out.print(
        f"wrote {rep.examples} examples to {out_path} ({rep.withheld} held out like the export's "
        "validation set)",
        highlight=False,
    )
    if rep.skipped:
        out.print("skipped: " + ", ".join(f"{v} {k}" for k, v in rep.skipped.items()), highlight=False)
    for w in rep.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
