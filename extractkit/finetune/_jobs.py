"""Fine-tuning jobs: upload the files, create the job, record it, poll it, write the model into the
config. Async core (``alaunch``, ``astatus``) with sync wrappers; the OpenAI client is the SDK's,
so any OpenAI-compatible provider with the fine-tuning endpoints works."""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from .._errors import ConfigError, FinetuneJobError
from ..ledger import FinetuneEvent, FinetuneJobRecord, Ledger, scrub

TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Job:
    id: str
    status: str
    base_model: str
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None
    training_file: str | None = None
    validation_file: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def make_client(api_key: str | None = None, base_url: str | None = None) -> openai.AsyncOpenAI:
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ConfigError(
            "no API key for fine-tuning: set OPENAI_API_KEY in the environment (or pass api_key=...)"
        )
    return openai.AsyncOpenAI(api_key=key, base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None)


def _fail(what: str, exc: Exception, key: str | None) -> FinetuneJobError:
    msg = scrub(str(exc), [key] if key else []) or type(exc).__name__
    return FinetuneJobError(f"{what}: {msg}")


def _error_text(job: Any) -> str | None:
    err = getattr(job, "error", None)
    if not err or not (getattr(err, "message", None) or getattr(err, "code", None)):
        return None
    return f"{err.code or 'error'}: {err.message or ''}".strip()


def _job(job: Any, events: list[dict[str, Any]] | None = None) -> Job:
    return Job(job.id, job.status, job.model, job.fine_tuned_model, job.trained_tokens, _error_text(job),
               job.training_file, job.validation_file, events or [])  # fmt: skip


def _record(
    ledger: Ledger,
    job: Any,
    *,
    base_url: str | None = None,
    manifest: dict[str, Any] | None = None,
    n_epochs: int | None = None,
    suffix: str | None = None,
) -> None:
    ledger.record_finetune_job(FinetuneJobRecord(
        id=job.id, created_at=float(job.created_at or time.time()), base_url=base_url, base_model=job.model,
        suffix=suffix, seed=job.seed, n_epochs=n_epochs, training_file=job.training_file,
        validation_file=job.validation_file, manifest_json=json.dumps(manifest) if manifest else None,
        status=job.status, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
        error=_error_text(job),
    ))  # fmt: skip


async def alaunch(
    ledger: Ledger,
    train_file: str | Path,
    validation_file: str | Path | None = None,
    *,
    model: str = "gpt-4o-mini-2024-07-18",
    suffix: str | None = None,
    seed: int | None = None,
    n_epochs: int | None = None,
    client: openai.AsyncOpenAI | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
) -> Job:
    """Upload the files (purpose ``fine-tune``), create the job and record it in the ledger."""
    paths = [Path(train_file)] + ([Path(validation_file)] if validation_file else [])
    for p in paths:
        if not p.is_file():
            raise ConfigError(f"no such file: {p}")
    manifest_path = Path(train_file).with_name("manifest.json")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    own = client is None
    client = client or make_client(api_key, base_url)
    key = client.api_key
    try:
        ids = []
        for p in paths:
            try:
                with p.open("rb") as f:
                    uploaded = await client.files.create(file=(p.name, f.read()), purpose="fine-tune")
            except openai.OpenAIError as exc:
                raise _fail(f"uploading {p}", exc, key) from None
            ids.append(uploaded.id)
        params: dict[str, Any] = {"model": model, "training_file": ids[0]}
        if len(ids) > 1:
            params["validation_file"] = ids[1]
        if suffix:
            params["suffix"] = suffix
        if seed is not None:
            params["seed"] = seed
        if n_epochs is not None:
            params["method"] = {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": n_epochs}},
            }
        try:
            job = await client.fine_tuning.jobs.create(**params)
        except openai.OpenAIError as exc:
            raise _fail("creating the fine-tuning job", exc, key) from None
        _record(
            ledger, job, base_url=str(client.base_url), manifest=manifest, n_epochs=n_epochs, suffix=suffix
        )
        return _job(job)
    finally:
        if own:
            await client.close()


async def astatus(
    ledger: Ledger,
    job_id: str | None = None,
    *,
    client: openai.AsyncOpenAI | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    events: int = 20,
) -> Job:
    """Poll a job (default: the latest launched from this ledger), record its state and events."""
    if job_id is None:
        job_id = ledger.latest_finetune_job()
        if job_id is None:
            raise ConfigError("no fine-tuning job in this ledger: launch one first, or pass its id")
    own = client is None
    client = client or make_client(api_key, base_url)
    try:
        try:
            job = await client.fine_tuning.jobs.retrieve(job_id)
            page = await client.fine_tuning.jobs.list_events(job_id, limit=events)
        except openai.OpenAIError as exc:
            raise _fail(f"polling {job_id}", exc, client.api_key) from None
        _record(ledger, job)
        evs = [
            {"id": e.id, "created_at": e.created_at, "level": e.level, "message": e.message}
            for e in page.data
        ]
        ledger.record_finetune_events(job_id, [
            FinetuneEvent(e.id, e.created_at, e.level, scrub(str(e.message))) for e in page.data
        ])  # fmt: skip
        return _job(job, sorted(evs, key=lambda e: e["created_at"]))
    finally:
        if own:
            await client.close()


def launch(
    ledger: Ledger, train_file: str | Path, validation_file: str | Path | None = None, **kw: Any
) -> Job:
    return asyncio.run(alaunch(ledger, train_file, validation_file, **kw))


def status(ledger: Ledger, job_id: str | None = None, **kw: Any) -> Job:
    return asyncio.run(astatus(ledger, job_id, **kw))


# -- the config -------------------------------------------------------------------------------

_TIERS_HEADER = re.compile(r"^\s*\[\[tiers\]\]\s*(#.*)?$")
_TABLE_HEADER = re.compile(r"^\s*\[")


def with_finetuned_model(config_text: str, model: str, tier_name: str | None = None) -> str:
    """The config with ``model`` as the fine-tuned tier: the ``[[tiers]]`` block with
    ``kind = "fine_tuned"`` (or ``name = tier_name``) gets the new model line; with none, a new
    fine-tuned tier is appended (last, as the chain's last resort). Comments and layout are kept."""
    lines = config_text.splitlines(keepends=True)
    blocks: list[tuple[int, int]] = []
    start = None
    for i, line in enumerate(lines):
        if _TABLE_HEADER.match(line):
            if start is not None:
                blocks.append((start, i))
                start = None
            if _TIERS_HEADER.match(line):
                start = i
    if start is not None:
        blocks.append((start, len(lines)))

    def value(block: tuple[int, int], key: str) -> str | None:
        for line in lines[block[0] + 1 : block[1]]:
            m = re.match(rf'^\s*{key}\s*=\s*"([^"]*)"', line)
            if m:
                return m.group(1)
        return None

    target = next(
        (
            b
            for b in blocks
            if (value(b, "name") == tier_name if tier_name else value(b, "kind") == "fine_tuned")
        ),
        None,
    )
    entry = json.dumps(model)
    if target is None:
        sep = "" if config_text.endswith("\n") or not config_text else "\n"
        name = f"name = {json.dumps(tier_name)}\n" if tier_name else ""
        return config_text + sep + f'\n[[tiers]]\nkind = "fine_tuned"\n{name}model = {entry}\n'
    for i in range(target[0] + 1, target[1]):
        m = re.match(r"^(\s*model\s*=\s*)\"[^\"]*\"(.*)$", lines[i].rstrip("\n"))
        if m:
            lines[i] = f"{m.group(1)}{entry}{m.group(2)}\n"
            return "".join(lines)
    lines.insert(target[0] + 1, f"model = {entry}\n")
    return "".join(lines)


def config_diff(path: str | Path, new_text: str) -> str:
    old = Path(path).read_text(encoding="utf-8")
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile=str(path),
            tofile=f"{path} (new)",
        )
    )
