"""What the chain needs of a ledger: the ``RecordingLedger`` protocol.

``Extractor`` records into any object with these methods, not only the SQLite ``Ledger`` (a test
double, or the shared store of a later issue). It is the whole of what the chain and its batch
runner (``extract_many``, ``extractkit extract``) call: they write a run, its extractions and
its unreadable documents, and look up a document's final result to resume. The reports, eval and
fine-tuning read more (``query``, ...) and take a ``Ledger``. ``Ledger``
satisfies it (checked by mypy in ``tests/test_ownership.py``); ``isinstance(x, RecordingLedger)``
checks that the methods are there (not their signatures).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from .._results import Result


@runtime_checkable
class RecordingLedger(Protocol):
    """A ledger the chain can record into: a run's start and end, each extraction with its
    attempts, a document that could not be read, the paths a document was seen at; and the
    latest final result of a document (a row with ``status``, ``outcome``, ``value_json``, ...,
    or None), by which a batch resumes."""

    def start_run(self, kind: str, config: dict[str, Any] | None = None,
                  config_hash: str | None = None, schema_hash: str | None = None) -> str: ...  # fmt: skip

    def finish_run(self, run_id: str, status: str, **counts: int) -> None: ...

    async def arecord(self, extractor: Any, result: Result[Any], **kwargs: Any) -> str: ...

    def record_error(
        self, *, run_id: str | None, path: str, kind: str, message: str, schema_hash: str,
        config_hash: str, document_sha256: str | None = None,
    ) -> str: ...  # fmt: skip

    def add_document_paths(self, seen: Iterable[tuple[str, str, bytes, str | None]]) -> None: ...

    def find_final(
        self, document_sha256: str, schema_hash: str, config_hash: str, *, forced_tier: str | None = None
    ) -> Any: ...
