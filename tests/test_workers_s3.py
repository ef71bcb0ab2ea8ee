"""Workers on other machines read documents from object storage: an ``s3://`` prefix enqueued into a
PostgreSQL ledger is extracted by a worker process (the moto S3 server and PostgreSQL are real)."""

from __future__ import annotations

import json
from pathlib import Path

from .fakes import FakeLLMServer, echo_invoice_responder
from .test_workers import cli, current_extractions, project, totals


def test_an_s3_prefix_is_enqueued_and_worked_from_its_uris(s3, pg_url, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    for i in range(3):
        s3.put(bucket, f"in/d{i}.txt", f"From: Company {i}\nTotal: {i}.25\n")
    s3.put(bucket, "in/empty.txt", b"")
    uri = f"s3://{bucket}/in/"
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg, _ = project(tmp_path, server.base_url, 0)
        queued = cli(tmp_path, "enqueue", uri, "-c", str(cfg), "--ledger", pg_url, "--json")
        assert queued.returncode == 1, queued.stderr  # an unreadable document: exit 1, the rest queued
        q = json.loads(queued.stdout)
        assert q["new"] == 3 and len(q["unreadable"]) == 1, q  # the empty object is named, not queued
        assert q["unreadable"][0]["path"] == f"{uri}empty.txt"
        worked = cli(tmp_path, "worker", "-c", str(cfg), "--ledger", pg_url, "--json")
        assert worked.returncode == 0, worked.stderr
        assert len(server.requests) == 3
        # the same prefix through `extract` on the shared ledger: all resumed, nothing paid again
        again = cli(tmp_path, "extract", uri, "-c", str(cfg), "--ledger", pg_url, "--json")
        assert json.loads(again.stdout)["resumed"] == 3, again.stdout
        assert len(server.requests) == 3
    assert totals(pg_url)["done"] == 3
    assert len(current_extractions(pg_url)) == 3
    from extractkit.ledger import Ledger

    with Ledger(pg_url) as ledger:
        paths = sorted(r["path"] for r in ledger.query("SELECT path FROM extractions WHERE status = 'ok'"))
    assert paths == [f"{uri}d{i}.txt" for i in range(3)]
