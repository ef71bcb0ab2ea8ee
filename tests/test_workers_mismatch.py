"""A worker started with another config than the documents were enqueued with says so (exit 2)
instead of finding nothing and exiting 0 (found by a new user's trial)."""

from __future__ import annotations

import json

from .fakes import FakeLLMServer, echo_invoice_responder
from .test_workers import cli, here, project  # noqa: F401  (here: the fixture)


def test_a_worker_of_another_chain_says_what_waits_instead_of_exiting_0(here, pg_url):  # noqa: F811
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, docs = project(here, server.base_url, 2)
        queued = cli(here, "enqueue", str(docs), "-c", str(cfg), "--ledger", pg_url, "--json")
        assert queued.returncode == 0, queued.stderr
        other = here / "other.toml"
        other.write_text(cfg.read_text().replace("gpt-4o-mini", "gpt-4o"))  # another chain config
        wrong = cli(here, "worker", "-c", str(other), "--ledger", pg_url)
        assert wrong.returncode == 2, wrong.stderr
        assert "2 documents of other chains" in wrong.stderr and "Traceback" not in wrong.stderr
        assert len(server.requests) == 0
        right = cli(here, "worker", "-c", str(cfg), "--ledger", pg_url, "--json")
        assert right.returncode == 0, right.stderr
        assert json.loads(right.stdout)["batch"]["documents"] == 2
