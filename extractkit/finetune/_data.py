"""Training data from the ledger: the validated answers the chain already paid for.

One selection feeds both uses of that data — a fine-tuning export and a harvested few-shot pool —
so the two can be compared fairly:

1. validated (``ok``) extractions of the schema from the ledger, filtered by tier, run and date;
   the latest per document;
2. optionally a gold file (its expected values, which must validate as a whole object);
3. human corrections (JSON Lines of ``{"document": sha256-or-path, "value": {...}}``) override
   both;
4. de-duplicated by the document's content hash; documents used by any eval run (the
   ``eval_items`` table) or listed in ``exclude_gold`` files are left out unless
   ``include_eval_documents`` (no leakage into the numbers that judge the model);
5. text not stored in the ledger is re-read from the document's path when its hash still
   matches; otherwise the example is skipped and counted;
6. split into train and validation by document, deterministically from ``seed``: a document's
   side depends only on its hash and the seed, so adding documents never moves old ones.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .._errors import DocumentError, TrainingDataError
from .._schema import schema_hash
from ..batch import TEXT_TYPES, as_source, is_uri, load
from ..evaluate import load_gold
from ..ledger import Ledger, TrainingRow


@dataclass(frozen=True)
class Selection:
    """Which validated extractions to use. Times are Unix seconds."""

    tiers: tuple[str, ...] = ()  # only extractions these tiers won; empty = any
    run_id: str | None = None
    since: float | None = None
    until: float | None = None
    gold: tuple[Path, ...] = ()  # gold files used as sources
    corrections: Path | None = None
    exclude_gold: tuple[Path, ...] = ()  # gold files whose documents must not be trained on
    include_eval_documents: bool = False
    validation_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1:
            raise TrainingDataError("validation_fraction must be in [0, 1)")


@dataclass
class TrainingExample:
    document_sha256: str
    text: str
    value: dict[str, Any]
    source: str  # the winning tier, "gold" or "correction"
    path: str | None = None


@dataclass
class Collected:
    train: list[TrainingExample]
    validation: list[TrainingExample]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    sources: Counter[str] = field(default_factory=Counter)  # tier / gold / correction -> count

    @property
    def all(self) -> list[TrainingExample]:
        return self.train + self.validation


def _side(doc: str, seed: int) -> float:
    """A document's place in [0, 1): the same for the same seed, whatever else is in the set."""
    h = hashlib.sha256(f"{seed}:{doc}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _ledger_rows(ledger: Ledger, schema: type[BaseModel], sel: Selection) -> list[TrainingRow]:
    return ledger.training_rows(schema_hash(schema), tiers=sel.tiers, run_id=sel.run_id, since=sel.since,
                                until=sel.until)  # fmt: skip


def _reread(paths: Sequence[str | None], sha: str) -> str | None:
    for p in paths:
        if not p:
            continue
        path = as_source(p)  # a file, or an object (s3://...) as extract read it
        doc_type = TEXT_TYPES.get(path.suffix.lower())
        if doc_type is None or (isinstance(path, Path) and not path.is_file()):
            continue
        try:
            doc = load(path, doc_type)
        except DocumentError:
            continue
        if doc.sha256 == sha:
            return doc.text
    return None


def _validated(schema: type[BaseModel], value: Any) -> dict[str, Any] | None:
    try:
        return schema.model_validate(value).model_dump(mode="json")
    except ValidationError:
        return None


def _corrections(path: Path, schema: type[BaseModel]) -> list[tuple[str, dict[str, Any], int]]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TrainingDataError(f"cannot read corrections {path}: {exc}") from None
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TrainingDataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("document"), str) or "value" not in obj:
            raise TrainingDataError(
                f'{path}:{n}: expected {{"document": "<sha256 or path>", "value": {{...}}}}'
            )
        value = _validated(schema, obj["value"])
        if value is None:
            try:
                schema.model_validate(obj["value"])
            except ValidationError as exc:
                raise TrainingDataError(f"{path}:{n}: the corrected value does not validate: {exc}") from None
        assert value is not None
        out.append((obj["document"], value, n))
    return out


def collect(ledger: Ledger, schema: type[BaseModel], sel: Selection) -> Collected:
    """Select, correct, de-duplicate, exclude and split (see the module docstring)."""
    skipped: Counter[str] = Counter()
    chosen: dict[str, TrainingExample] = {}
    stored_paths: dict[str, list[str | None]] = {}
    for r in _ledger_rows(ledger, schema, sel):  # in time order: the latest answer per document wins
        value = _validated(schema, json.loads(r.value_json))
        if value is None:
            skipped["no longer validates against the schema"] += 1
            continue
        sha = r.document_sha256
        stored_paths[sha] = [r.path, r.doc_path]
        chosen[sha] = TrainingExample(
            sha, r.text or "", value, r.tier or "?", r.path or r.doc_path
        )
    for gold_path in sel.gold:
        for item in load_gold(gold_path, schema):
            value = _validated(schema, item.expected)
            if value is None:
                skipped["gold value incomplete for the schema"] += 1
                continue
            try:
                doc = item.load()
            except DocumentError:
                skipped["gold document unreadable"] += 1
                continue
            chosen[doc.sha256] = TrainingExample(doc.sha256, doc.text, value, "gold", doc.path)
    if sel.corrections is not None:
        for key, value, n in _corrections(sel.corrections, schema):
            where = f"{sel.corrections}:{n}"
            if len(key) == 64 and all(c in "0123456789abcdef" for c in key):
                sha = key
                if sha in chosen:
                    text, path = chosen[sha].text, chosen[sha].path
                else:
                    stored = ledger.document(sha)
                    if stored is None:
                        raise TrainingDataError(f"{where}: no document {sha} in the ledger")
                    text, path = stored.text or "", stored.path
                    stored_paths[sha] = [path]
            else:  # a path or a URI: the document as it is now
                p = as_source(key) if is_uri(key) or Path(key).is_absolute() else sel.corrections.parent / key
                doc_type = TEXT_TYPES.get(p.suffix.lower())
                if doc_type is None:
                    raise TrainingDataError(f"{where}: {key!r} is neither a sha256 nor a supported file")
                try:
                    doc = load(p, doc_type)
                except DocumentError as exc:
                    raise TrainingDataError(f"{where}: {exc}") from None
                sha, text, path = doc.sha256, doc.text, doc.path
            chosen[sha] = TrainingExample(sha, text, value, "correction", path)

    excluded: set[str] = set()
    if not sel.include_eval_documents:
        excluded |= ledger.eval_document_hashes()
    for gold_path in sel.exclude_gold:
        for item in load_gold(gold_path):
            try:
                excluded.add(item.load().sha256)
            except DocumentError:
                continue
    examples: list[TrainingExample] = []
    for sha, ex in chosen.items():
        if sha in excluded:
            skipped["in an eval gold set (leakage)"] += 1
            continue
        if not ex.text:
            reread = _reread(stored_paths.get(sha, [ex.path]), sha)
            if reread is None:
                skipped["text not stored and the file changed or is gone"] += 1
                continue
            ex.text = reread
        examples.append(ex)
    examples.sort(key=lambda e: _side(e.document_sha256, sel.seed))
    cut = sum(1 for e in examples if _side(e.document_sha256, sel.seed) < sel.validation_fraction)
    if sel.validation_fraction > 0 and cut == 0 and len(examples) >= 2:
        cut = 1  # a validation file needs at least one example
    return Collected(
        train=examples[cut:],
        validation=examples[:cut],
        skipped=skipped,
        sources=Counter(e.source for e in examples),
    )
