"""Fine-tuning export and few-shot harvest from one selection (see ``_data``).

The export writes OpenAI chat-format JSON Lines, ``{"messages": [system, user, assistant]}``,
where system and user are exactly what the fine-tuned tier sends at inference time (its
template, no few-shot examples) and the assistant message is the validated JSON. Checks: fewer
than 10 examples is an error, fewer than 50 a warning; tokens are counted per example
(tiktoken, cl100k), examples over the model's training context are dropped and counted; the
training cost is estimated for N epochs at the base model's training price.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .._errors import TrainingDataError
from .._files import write_atomic
from .._pricing import PRICES, base_model
from .._redact import redact_json
from .._tiers import BoundTier, FineTuned, Tier
from .._tokens import count_request_tokens
from .._words import plural
from ..ledger import Ledger
from ._data import Collected, Selection, TrainingExample, collect

MIN_EXAMPLES = 10  # OpenAI refuses fewer
FEW_EXAMPLES = 50  # below this, fine-tuning rarely beats a good few-shot prompt

# Longest training example, in tokens, per base model (OpenAI's documented limits).
TRAINING_CONTEXT = {
    "gpt-4o-mini": 65_536,
    "gpt-4o": 65_536,
    "gpt-4.1": 65_536,
    "gpt-4.1-mini": 65_536,
    "gpt-4.1-nano": 65_536,
    "gpt-3.5-turbo": 16_385,
}


@dataclass
class ExportReport:
    """What an export wrote and what it found; also written as ``manifest.json``."""

    base_model: str
    train_file: str | None
    validation_file: str | None
    train_examples: int
    validation_examples: int
    sources: dict[str, int]
    skipped: dict[str, int]
    train_tokens: int
    longest_tokens: int
    longest_document: str | None
    context_limit: int | None
    epochs: int
    estimated_cost_usd: float | None
    warnings: list[str] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chat_example(bound: BoundTier, ex: TrainingExample) -> dict[str, Any]:
    messages = bound.messages(ex.text)
    answer = json.dumps(ex.value, ensure_ascii=False, separators=(",", ":"))
    return {"messages": [*messages, {"role": "assistant", "content": answer}]}


def _tier_for(schema: type[BaseModel], tier: Tier | None, model: str) -> BoundTier:
    """The fine-tuned tier's prompt: the configured tier's template, else the default one."""
    return BoundTier(tier or FineTuned(model=model, api_key="unused"), schema)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    # a document re-read from disk (no stored text) may hold a key
    write_atomic(path, "".join(json.dumps(redact_json(r), ensure_ascii=False) + "\n" for r in rows))


def _selection_dict(sel: Selection) -> dict[str, Any]:
    d = asdict(sel)
    return {
        k: ([str(x) for x in v] if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
        for k, v in d.items()
    }


def export_finetune(
    ledger: Ledger,
    schema: type[BaseModel],
    out_dir: str | Path,
    *,
    selection: Selection | None = None,
    base: str = "gpt-4o-mini-2024-07-18",
    tier: Tier | None = None,
    epochs: int = 3,
) -> ExportReport:
    """Write ``train.jsonl``, ``validation.jsonl`` and ``manifest.json`` into ``out_dir``."""
    sel = selection or Selection()
    got = collect(ledger, schema, sel)
    bound = _tier_for(schema, tier, base)
    limit = TRAINING_CONTEXT.get(base_model(base))
    warnings: list[str] = []
    rows: dict[str, list[tuple[dict[str, Any], int, TrainingExample]]] = {"train": [], "validation": []}
    too_long = 0
    for side, examples in (("train", got.train), ("validation", got.validation)):
        for ex in examples:
            row = chat_example(bound, ex)
            tokens = count_request_tokens(row["messages"])
            if limit is not None and tokens > limit:
                too_long += 1
                continue
            rows[side].append((row, tokens, ex))
    skipped = dict(got.skipped)
    if too_long:
        skipped[f"longer than the {limit:,}-token training context"] = too_long
    n_train = len(rows["train"])
    if n_train < MIN_EXAMPLES:
        raise TrainingDataError(_too_few(n_train, got, skipped))
    if n_train < FEW_EXAMPLES:
        warnings.append(
            f"only {n_train} training examples: under about {FEW_EXAMPLES}, fine-tuning rarely beats "
            "few-shot with the same examples (try `extractkit examples harvest` and compare in eval)"
        )
    if not rows["validation"]:
        warnings.append("no validation examples: the job will report no validation loss")
    all_rows = rows["train"] + rows["validation"]
    longest = max(all_rows, key=lambda r: r[1])
    if limit is not None and longest[1] > 0.8 * limit:
        warnings.append(
            f"the longest example ({longest[1]:,} tokens, {longest[2].path or longest[2].document_sha256}) "
            f"is close to the {limit:,}-token training context"
        )
    train_tokens = sum(t for _, t, _ in rows["train"])
    price = PRICES.get(base_model(base))
    cost = (
        train_tokens * epochs * price.training / 1_000_000 if price and price.training is not None else None
    )
    if cost is None:
        warnings.append(f"no training price known for {base}: cost not estimated")
    out = Path(out_dir)
    train_file = out / "train.jsonl"
    _write_jsonl(train_file, [r for r, _, _ in rows["train"]])
    val_file = out / "validation.jsonl" if rows["validation"] else None
    if val_file is not None:
        _write_jsonl(val_file, [r for r, _, _ in rows["validation"]])
    report = ExportReport(
        base_model=base,
        train_file=str(train_file),
        validation_file=str(val_file) if val_file else None,
        train_examples=n_train,
        validation_examples=len(rows["validation"]),
        sources=dict(got.sources),
        skipped=skipped,
        train_tokens=train_tokens,
        longest_tokens=longest[1],
        longest_document=longest[2].path or longest[2].document_sha256,
        context_limit=limit,
        epochs=epochs,
        estimated_cost_usd=round(cost, 6) if cost is not None else None,
        warnings=warnings,
        selection=_selection_dict(sel),
    )
    (out / "manifest.json").write_text(json.dumps(redact_json(report.to_dict()), indent=2), encoding="utf-8")
    return report


def _too_few(n: int, got: Collected, skipped: dict[str, int], need: str = "") -> str:
    why = "; ".join(f"{v} {k}" for k, v in skipped.items()) or "none"
    if need:
        return (f"{n} examples; {need}. Selected {len(got.all)} validated documents; skipped: {why}. "
                "Extract more documents, add a gold file or corrections, or widen the filters.")
    return (
        f"{plural(n, 'training example')}; fine-tuning needs at least {MIN_EXAMPLES} (OpenAI's minimum). "
        f"Selected {len(got.all)} validated documents ({len(got.validation)} went to validation); "
        f"skipped: {why}. Extract more documents, add a gold file or corrections, or widen the filters."
    )


@dataclass
class HarvestReport:
    path: str
    examples: int
    withheld: int  # the validation side, kept out like the export keeps it out of training
    sources: dict[str, int]
    skipped: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def harvest_examples(
    ledger: Ledger,
    schema: type[BaseModel],
    out: str | Path,
    *,
    selection: Selection | None = None,
    include_validation: bool = False,
) -> HarvestReport:
    """Write a few-shot examples file (``{"input", "output"}`` lines) from the same selection, split
    and leakage rules as the export: the pool a FewShot tier retrieves from, to set beside a
    model fine-tuned on the same data."""
    sel = selection or Selection()
    got = collect(ledger, schema, sel)
    chosen = got.all if include_validation else got.train
    if not chosen:
        raise TrainingDataError(_too_few(0, got, dict(got.skipped), "a few-shot pool needs at least 1"))
    warnings = []
    if len(chosen) < 3:
        warnings.append(f"only {len(chosen)} examples: a FewShot tier with k=3 will use fewer")
    _write_jsonl(Path(out), [{"input": e.text, "output": e.value} for e in chosen])
    return HarvestReport(
        str(out),
        len(chosen),
        0 if include_validation else len(got.validation),
        dict(got.sources),
        dict(got.skipped),
        warnings,
    )
