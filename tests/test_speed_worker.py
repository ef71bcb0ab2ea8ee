"""A worker process collects garbage as ``extract`` does: the objects alive when its run starts
(modules, the schema, the clients) are frozen out of the collector's scans (issue 17, section 6:
CPU per document)."""

from __future__ import annotations

from extractkit.batch import Worker

from .ledger_fixtures import chain


def test_a_worker_freezes_what_is_alive_before_its_run_out_of_garbage_collection():
    w = Worker(chain(), ledger=None, queue=None)  # type: ignore[arg-type]
    assert w.runner.freeze_gc is True
