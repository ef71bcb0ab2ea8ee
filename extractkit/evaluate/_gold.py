"""Gold files: JSON Lines of ``{"document": path-or-URI-or-text, "expected": {...}}`` (optional ``"id"``).

``document`` is read as a URI (``s3://bucket/key.pdf``, as ``extract`` takes) when it is one; as a
path (relative to the gold file) when it names a file that exists or looks like a file name (one
line, ending in a known extension); otherwise it is the document's text. A path that does not exist
is an error on that line, not silently treated as text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .._chain import document_sha256
from .._errors import DocumentError, GoldError
from .._files import write_atomic
from ..batch import TEXT_TYPES, URI, Document, is_uri, load


@dataclass(frozen=True)
class GoldItem:
    gold_id: str
    expected: dict[str, Any]
    path: Path | URI | None = None  # a document file or object
    text: str | None = None  # or the document's text, inline
    line: int = 0

    def load(self) -> Document:
        """The document's text (raises DocumentError for a file that cannot be read)."""
        if self.path is None:
            assert self.text is not None
            return Document(
                path=f"gold:{self.gold_id}",
                text=self.text,
                sha256=document_sha256(self.text),
                size=len(self.text.encode()),
                type="text",
            )
        doc_type = TEXT_TYPES.get(self.path.suffix.lower())
        if doc_type is None:
            raise DocumentError(
                f"{self.path}: unsupported file type {self.path.suffix!r}",
                path=str(self.path),
                kind="unsupported",
            )
        return load(self.path, doc_type)


def _looks_like_path(s: str) -> bool:
    return "\n" not in s and len(s) < 1024 and Path(s).suffix.lower() in TEXT_TYPES


def load_gold(path: str | Path, schema: type[BaseModel] | None = None) -> list[GoldItem]:
    """Read a gold file; every problem is reported with its line number. With ``schema``, expected
    values naming fields the schema lacks are an error (a typo would otherwise never be scored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GoldError(f"gold file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldError(f"cannot read gold file {path}: {exc}") from None
    items: list[GoldItem] = []
    seen: set[str] = set()
    fields = set(schema.model_fields) if schema is not None else None
    for n, raw in enumerate(lines, 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise GoldError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict) or "document" not in obj or "expected" not in obj:
            raise GoldError(f'{where}: expected {{"document": "<path or text>", "expected": {{...}}}}')
        doc, expected = obj["document"], obj["expected"]
        if not isinstance(doc, str) or not doc.strip():
            raise GoldError(f'{where}: "document" must be a non-empty string (a path or the text)')
        if not isinstance(expected, dict):
            raise GoldError(f'{where}: "expected" must be an object of field values')
        if fields is not None and (unknown := sorted(set(expected) - fields)):
            raise GoldError(
                f"{where}: expected names fields the schema does not have: {', '.join(unknown)} "
                f"(schema fields: {', '.join(sorted(fields))})"
            )
        gold_id = str(obj.get("id") or n)
        if gold_id in seen:
            raise GoldError(f"{where}: duplicate id {gold_id!r}")
        seen.add(gold_id)
        if is_uri(doc):  # read when scored, as extract reads it
            try:
                items.append(GoldItem(gold_id, expected, path=URI(doc), line=n))
            except ValueError as exc:
                raise GoldError(f"{where}: {exc}") from None
            continue
        candidate = (path.parent / doc).resolve() if not os.path.isabs(doc) else Path(doc)
        if _looks_like_path(doc) or candidate.is_file():
            if not candidate.exists():
                raise GoldError(f"{where}: document file not found: {doc} (looked for {candidate})")
            items.append(GoldItem(gold_id, expected, path=candidate, line=n))
        else:
            items.append(GoldItem(gold_id, expected, text=doc, line=n))
    if not items:
        raise GoldError(f"{path}: no gold items (expected JSON Lines of document + expected)")
    return items


def convert_invoice2data(
    folder: str | Path, out: str | Path, *, schema: type[BaseModel] | None = None
) -> tuple[int, list[str]]:
    """Write a gold file from invoice2data's layout: ``NAME.json`` (a list with one object) beside
    ``NAME.pdf`` or ``NAME.txt``. With ``schema``, only the schema's fields are kept. Paths in the
    gold file are relative to it. Returns (items written, problems skipped)."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        where = "" if folder.is_absolute() else f" (relative to {Path.cwd()}: {folder.resolve()})"
        raise GoldError(f"not a folder: {folder}{where}")
    fields = set(schema.model_fields) if schema is not None else None
    rows, skipped = [], []
    for gold in sorted(folder.glob("*.json")):
        doc = next((gold.with_suffix(s) for s in (".pdf", ".txt") if gold.with_suffix(s).exists()), None)
        if doc is None:
            skipped.append(f"{gold.name}: no {gold.stem}.pdf or {gold.stem}.txt beside it")
            continue
        try:
            data = json.loads(gold.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            skipped.append(f"{gold.name}: {exc}")
            continue
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, dict):
            skipped.append(f"{gold.name}: expected an object or a list with one object")
            continue
        expected = {k: v for k, v in data.items() if fields is None or k in fields}
        if fields is not None:
            for k in sorted(fields - set(expected)):
                skipped.append(f"{gold.name}: no gold value for {k!r} (not scored)")
        rel = os.path.relpath(doc.resolve(), out.resolve().parent)
        rows.append({"id": gold.stem, "document": rel, "expected": expected})
    if not rows:  # an empty gold file scores nothing: say why instead of writing one
        why = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        raise GoldError(
            f"no gold item in {folder}: invoice2data's layout is NAME.json (the expected values) beside "
            f"NAME.pdf or NAME.txt" + (f" ({why})" if why else ", and there is no NAME.json there")
        )
    write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return len(rows), skipped
