"""Few-shot examples: load and validate an examples file; pick the first k or the k most similar."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ._errors import ConfigError, ExamplesError


@dataclass(frozen=True)
class Example:
    input: str
    output: dict[str, Any]

    @property
    def output_json(self) -> str:
        return json.dumps(self.output, ensure_ascii=False)


def _validated(raw: Any, schema: type[BaseModel], where: str) -> Example:
    if not isinstance(raw, dict) or not isinstance(raw.get("input"), str) or "output" not in raw:
        raise ExamplesError(f'{where}: expected {{"input": "<text>", "output": {{...}}}}')
    try:
        value = schema.model_validate(raw["output"])
    except ValidationError as exc:
        raise ExamplesError(f"{where}: output does not match {schema.__name__}:\n{exc}") from exc
    return Example(input=raw["input"], output=value.model_dump(mode="json"))


def load_examples(path: str | Path, schema: type[BaseModel]) -> list[Example]:
    """Read a JSON Lines examples file; every line is validated against ``schema``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        msg = f"cannot read examples file {path}: {exc.strerror}"
        raise ExamplesError(msg, path=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ExamplesError(f"{path}: not UTF-8 text ({exc.reason})", path=str(path)) from exc
    examples: list[Example] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            msg = f"{where}: not JSON: {exc.msg}"
            raise ExamplesError(msg, path=str(path), line=number) from exc
        try:
            examples.append(_validated(raw, schema, where))
        except ExamplesError as exc:
            raise ExamplesError(str(exc), path=str(path), line=number) from exc.__cause__
    if not examples:
        raise ExamplesError(f"{path}: no examples in file", path=str(path))
    return examples


def coerce_examples(
    examples: str | Path | Iterable[Example | dict[str, Any]], schema: type[BaseModel]
) -> list[Example]:
    if isinstance(examples, (str, Path)):
        return load_examples(examples, schema)
    out = []
    for i, ex in enumerate(examples):
        raw = {"input": ex.input, "output": ex.output} if isinstance(ex, Example) else ex
        out.append(_validated(raw, schema, f"examples[{i}]"))
    if not out:
        raise ExamplesError("the examples list is empty")
    return out


class ExampleSelector:
    """Chooses examples for a document. ``strategy`` is "similar" (BM25) or "first"."""

    def __init__(self, examples: Sequence[Example], k: int, strategy: str = "similar"):
        if strategy not in ("similar", "first"):
            raise ConfigError(f"example selection must be 'similar' or 'first', not {strategy!r}")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        self.examples = list(examples)
        self.k = min(k, len(self.examples))
        self.strategy = strategy
        self._retriever: Any = None
        if strategy == "similar" and len(self.examples) > self.k:
            self._build_index()

    def _build_index(self) -> None:
        import bm25s

        corpus = bm25s.tokenize([e.input for e in self.examples], stopwords="en", show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        self._retriever = retriever

    def select(self, document: str) -> list[Example]:
        if self._retriever is None:
            return self.examples[: self.k]
        import bm25s

        query = bm25s.tokenize([document], stopwords="en", return_ids=False, show_progress=False)
        if not query or not query[0]:
            return self.examples[: self.k]
        ids, _scores = self._retriever.retrieve(query, k=self.k, show_progress=False)
        # most similar last, nearest the document; ties keep file order
        return [self.examples[int(i)] for i in reversed(ids[0])]
