"""A worker process collects garbage as ``extract`` does: the objects alive when its run starts
(modules, the schema, the clients) are frozen out of the collector's scans (issue 17, section 6:
CPU per document)."""

from __future__ import annotations

from types import SimpleNamespace

from extractkit.batch import Worker

from .ledger_fixtures import chain


def test_a_worker_freezes_what_is_alive_before_its_run_out_of_garbage_collection():
    queue = SimpleNamespace(target="postgresql://db/ek")  # the worker names its ledger by the queue's target
    w = Worker(chain(), ledger=None, queue=queue)  # type: ignore[arg-type]
    assert w.runner.freeze_gc is True
