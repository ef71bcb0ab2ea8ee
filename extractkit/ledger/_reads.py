"""What eval, fine-tuning and the CLI read from (and write to) the ledger, as typed methods.

``LedgerReads`` is mixed into ``Ledger``: each method is one statement, written once in the
ledger's dialect (SQLite style, translated on PostgreSQL), so ``evaluate/``, ``finetune/`` and
``cli/`` hold no SQL. The eval report's queries are named SQL (``EVAL_SQL``), returned with the
report as they are today; everything else returns small value objects.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# -- value objects ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredDocument:
    """A document as the ledger keeps it: its text (None with ``store_text = false``) and the
    path it was last seen at."""

    sha256: str
    text: str | None
    path: str | None


@dataclass(frozen=True)
class ReviewDocument:
    """A final extraction a reviewer should look at (unresolved, or resolved only after re-asks or
    escalation), with what it found and where (``spans_json``), the document's text (None with
    ``store_text = false``; at most the first ``max_chars`` characters, ``text_chars`` in all) and
    the values its failed attempts were refused for (``rejected``: tier, attempt number, outcome
    and Pydantic's error, which names the field and the value)."""

    extraction_id: str
    document_sha256: str | None
    path: str | None
    status: str
    tier: str | None
    outcome: str | None
    error: str | None
    n_attempts: int
    value_json: str | None
    spans_json: str | None
    text: str | None
    text_chars: int | None
    rejected: tuple[tuple[str, int, str, dict[str, Any]], ...]
    # what it took: its chunks (a long document's; None: not chunked), its re-asks and retries
    # (``attempts.follows``), the tiers it went through (more than one: escalated)
    n_chunks: int | None = None
    n_reasks: int = 0
    n_tiers: int = 1
    # its OCR'd pages to check (``document_sources.low_pages``: low confidence or little text read)
    low_pages: tuple[int, ...] = ()


def _page_numbers(raw: str | None) -> tuple[int, ...]:
    """``document_sources.low_pages`` (a JSON list of page numbers) as a tuple; () when absent."""
    import json

    try:
        pages = json.loads(raw) if raw else []
    except ValueError:
        return ()
    return tuple(int(p) for p in pages if isinstance(p, int)) if isinstance(pages, list) else ()


@dataclass(frozen=True)
class TrainingRow:
    """A valid final extraction with its document, a candidate training example."""

    id: str
    document_sha256: str
    tier: str | None
    value_json: str
    path: str | None  # the path the extraction was made from
    text: str | None  # the stored document text (None when not stored)
    doc_path: str | None  # where the document was last seen


@dataclass(frozen=True)
class UnfinishedExtraction:
    """A document of a run that did not end ``ok``: how it ended."""

    path: str | None
    status: str
    outcome: str | None
    error: str | None


@dataclass(frozen=True)
class FinetuneJobRecord:
    """A fine-tuning job as the provider last described it (written on launch and on each poll)."""

    id: str
    created_at: float
    base_model: str
    status: str
    base_url: str | None = None
    suffix: str | None = None
    seed: int | None = None
    n_epochs: int | None = None
    training_file: str | None = None
    validation_file: str | None = None
    manifest_json: str | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class FinetuneEvent:
    id: str
    created_at: float | None
    level: str | None
    message: str | None


# -- the eval report's queries (named, returned with the report) ----------------------------------

# counts are SUM(CASE ...): portable (SQLite's TOTAL(x = 'tp') sums booleans PostgreSQL does not add)
_N = "COALESCE(SUM(CASE WHEN {col} = '{v}' THEN 1 ELSE 0 END), 0) AS {v}"


def _counts(col: str) -> str:
    return ", ".join(_N.format(col=col, v=v) for v in ("tp", "tn", "fp", "fn", "wrong"))


EVAL_SQL: dict[str, str] = {
    "run": "SELECT id, kind, config_json, started_at, ended_at, status FROM runs WHERE id = ?",
    "items": "SELECT gold_id, document_sha256, path FROM eval_items WHERE run_id = ? ORDER BY seq",
    "results": f"""
SELECT r.gold_id, r.tier, r.reused, e.status, e.outcome, e.error, e.cost_usd, e.latency_s, e.n_attempts,
       {_counts("s.result")}
FROM eval_results r JOIN extractions e ON e.id = r.extraction_id
LEFT JOIN eval_scores s ON s.run_id = r.run_id AND s.gold_id = r.gold_id AND s.tier = r.tier
WHERE r.run_id = ? GROUP BY r.run_id, r.gold_id, r.tier, e.id""",
    "fields": f"""
SELECT tier, field, {_counts("result")}
FROM eval_scores WHERE run_id = ? GROUP BY tier, field ORDER BY field, tier""",
    "scores": """
SELECT gold_id, tier, field, expected_json, got_json, result
FROM eval_scores WHERE run_id = ? ORDER BY seq""",
    "text_stored": """
SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN d.text IS NOT NULL THEN 1 ELSE 0 END), 0) AS stored
FROM eval_items i JOIN documents d ON d.sha256 = i.document_sha256 WHERE i.run_id = ?""",
}


class LedgerReads:
    """Typed reads and the small writes of eval, fine-tuning and the CLI (mixed into ``Ledger``)."""

    if TYPE_CHECKING:

        def query(self, sql: str, params: Iterable[Any] | Mapping[str, Any] = ()) -> list[Any]: ...

        def transaction(self) -> AbstractContextManager[Any]: ...

    # -- eval ----------------------------------------------------------------------------------------
    def latest_eval_run(self) -> str | None:
        """The id of the latest eval run, or None."""
        rows = self.query("SELECT id FROM runs WHERE kind = 'eval' ORDER BY id DESC LIMIT 1")
        return str(rows[0]["id"]) if rows else None

    def eval_rows(self, name: str, run_id: str) -> list[dict[str, Any]]:
        """The rows of the eval report's query ``name`` (``EVAL_SQL``) for one eval run."""
        return [dict(r) for r in self.query(EVAL_SQL[name], [run_id])]

    def eval_document_hashes(self) -> set[str]:
        """Every document any eval run scored (kept out of training data by default)."""
        rows = self.query("SELECT DISTINCT document_sha256 FROM eval_items WHERE document_sha256 IS NOT NULL")
        return {str(r[0]) for r in rows}

    # -- documents and extractions --------------------------------------------------------------------
    def document(self, sha256: str) -> StoredDocument | None:
        rows = self.query("SELECT sha256, text, path FROM documents WHERE sha256 = ?", [sha256])
        return StoredDocument(rows[0]["sha256"], rows[0]["text"], rows[0]["path"]) if rows else None

    def review_documents(
        self, where: str, params: Sequence[Any], *, limit: int, max_chars: int
    ) -> list[ReviewDocument]:
        """The current final extractions matching ``where`` (a condition on ``extractions e``,
        ``?`` parameters: the report's scope) that a reviewer should see: every unresolved one,
        then those resolved after a re-ask, a retry or an escalation, newest first, at most
        ``limit``. A long document's chunks are not re-asks: its attempts count one per chunk,
        so it is selected by its attempts' ``follows`` and tiers, not by their number."""
        import json

        rows = self.query(
            "SELECT e.id, e.document_sha256, e.path, e.status, e.tier, e.outcome, e.error, e.n_attempts,"
            " e.value_json, e.spans_json, substr(d.text, 1, ?) AS text, length(d.text) AS text_chars,"
            " e.n_chunks, (SELECT COUNT(*) FROM attempts a WHERE a.extraction_id = e.id"
            "  AND a.follows IN ('reask', 'retry')) AS n_reasks,"
            " (SELECT COUNT(DISTINCT a.tier) FROM attempts a WHERE a.extraction_id = e.id) AS n_tiers,"
            " s.low_pages"
            " FROM extractions e LEFT JOIN documents d ON d.sha256 = e.document_sha256"
            " LEFT JOIN document_sources s ON s.document_sha256 = e.document_sha256"
            " WHERE e.status IN ('ok', 'failed') AND e.superseded_by IS NULL AND (e.status = 'failed'"
            " OR (e.n_attempts > 1 AND (e.n_chunks IS NULL OR EXISTS (SELECT 1 FROM attempts a"
            "  WHERE a.extraction_id = e.id AND (a.follows IN ('reask', 'retry') OR a.tier <> e.tier))))"
            " OR (s.low_pages IS NOT NULL AND s.low_pages <> '[]'))"
            f" AND {where}"
            " ORDER BY CASE WHEN e.status = 'failed' THEN 0 ELSE 1 END, e.id DESC LIMIT ?",
            [max_chars, *params, limit],
        )
        ids = [r["id"] for r in rows]
        rejected: dict[str, list[tuple[str, int, str, dict[str, Any]]]] = {i: [] for i in ids}
        if ids:
            marks = ",".join("?" * len(ids))
            for a in self.query(
                "SELECT extraction_id, tier, number, outcome, errors_json FROM attempts"
                f" WHERE extraction_id IN ({marks}) AND errors_json IS NOT NULL ORDER BY extraction_id, id",
                ids,
            ):
                try:
                    errors = json.loads(a["errors_json"])
                except ValueError:
                    continue
                for e in errors if isinstance(errors, list) else ():
                    if isinstance(e, dict):
                        rejected[a["extraction_id"]].append((a["tier"], int(a["number"]), a["outcome"], e))
        return [
            ReviewDocument(
                extraction_id=r["id"], document_sha256=r["document_sha256"], path=r["path"],
                status=r["status"], tier=r["tier"], outcome=r["outcome"], error=r["error"],
                n_attempts=int(r["n_attempts"]),
                value_json=r["value_json"], spans_json=r["spans_json"], text=r["text"],
                text_chars=r["text_chars"], rejected=tuple(rejected[r["id"]]),
                n_chunks=r["n_chunks"], n_reasks=int(r["n_reasks"] or 0), n_tiers=int(r["n_tiers"] or 1),
                low_pages=_page_numbers(r["low_pages"]),
            )  # fmt: skip
            for r in rows
        ]

    def training_rows(
        self,
        schema_hash: str,
        *,
        tiers: Sequence[str] = (),
        run_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[TrainingRow]:
        """Every valid final extraction of this schema (optionally by these tiers, of one run, made
        in [since, until)), with its document, oldest first."""
        clauses = ["e.status = 'ok'", "e.schema_hash = ?", "e.value_json IS NOT NULL"]
        params: list[Any] = [schema_hash]
        if tiers:
            clauses.append(f"e.tier IN ({', '.join('?' * len(tiers))})")
            params += list(tiers)
        if run_id:
            clauses.append("e.run_id = ?")
            params.append(run_id)
        if since is not None:
            clauses.append("e.created_at >= ?")
            params.append(since)
        if until is not None:
            clauses.append("e.created_at < ?")
            params.append(until)
        rows = self.query(
            "SELECT e.id, e.document_sha256, e.tier, e.value_json, e.path, d.text, d.path AS doc_path"
            " FROM extractions e JOIN documents d ON d.sha256 = e.document_sha256"
            f" WHERE {' AND '.join(clauses)} ORDER BY e.id",
            params,
        )
        return [TrainingRow(r["id"], r["document_sha256"], r["tier"], r["value_json"], r["path"], r["text"],
                            r["doc_path"]) for r in rows]  # fmt: skip

    def unfinished(self, run_id: str) -> list[UnfinishedExtraction]:
        """The extractions of a run that did not end ``ok`` (failed, or unreadable documents)."""
        rows = self.query(
            "SELECT path, status, outcome, error FROM extractions WHERE run_id = ? AND status != 'ok'"
            " ORDER BY id", [run_id],
        )  # fmt: skip
        return [UnfinishedExtraction(r["path"], r["status"], r["outcome"], r["error"]) for r in rows]

    # -- fine-tuning jobs ----------------------------------------------------------------------------
    def record_finetune_job(self, job: FinetuneJobRecord) -> None:
        """Insert a job, or refresh its state (status, model, tokens, error, updated_at)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO finetune_jobs (id, created_at, updated_at, base_url, base_model, suffix, seed,"
                " n_epochs, training_file, validation_file, manifest_json, status, fine_tuned_model,"
                " trained_tokens, error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at, status = excluded.status,"
                " fine_tuned_model = excluded.fine_tuned_model,"
                " trained_tokens = excluded.trained_tokens, error = excluded.error",
                (job.id, job.created_at, time.time(), job.base_url, job.base_model, job.suffix, job.seed,
                 job.n_epochs, job.training_file, job.validation_file, job.manifest_json, job.status,
                 job.fine_tuned_model, job.trained_tokens, job.error),
            )  # fmt: skip

    def record_finetune_events(self, job_id: str, events: Iterable[FinetuneEvent]) -> None:
        """A job's events; one seen before is left as it is."""
        rows = [(e.id, job_id, e.created_at, e.level, e.message) for e in events]
        if not rows:
            return
        with self.transaction() as tx:
            tx.executemany(
                "INSERT INTO finetune_events (id, job_id, created_at, level, message)"
                " VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                rows,
            )

    def latest_finetune_job(self) -> str | None:
        """The id of the job launched last from this ledger, or None."""
        rows = self.query("SELECT id FROM finetune_jobs ORDER BY created_at DESC LIMIT 1")
        return str(rows[0]["id"]) if rows else None

    def finetune_events(self, job_id: str) -> Iterator[FinetuneEvent]:
        for r in self.query("SELECT id, created_at, level, message FROM finetune_events WHERE job_id = ?"
                            " ORDER BY created_at, id", [job_id]):  # fmt: skip
            yield FinetuneEvent(r["id"], r["created_at"], r["level"], r["message"])
