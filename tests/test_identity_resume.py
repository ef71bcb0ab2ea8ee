"""Resume follows content (issue 12, item 4), end to end through the CLI: a moved project folder
resumes without paying again; an edited example is extracted again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .fakes import FakeLLMServer, echo_invoice_responder
from .test_batch import cli

EXAMPLES = [
    {"input": "From: ACME Tools Ltd\nTotal: 1,249.50\n", "output": {"issuer": "ACME Tools Ltd", "total": 1249.5}},
    {"input": "From: Beta GmbH\nTotal: 10.00\n", "output": {"issuer": "Beta GmbH", "total": 10.0}},
]  # fmt: skip


def write_project(root: Path, base_url: str) -> Path:
    root.mkdir(parents=True)
    (root / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    cfg = root / "extractkit.toml"
    cfg.write_text(
        'schema = "tests.conftest:Invoice"\n'
        f'[[tiers]]\nkind = "few_shot"\nmodel = "gpt-4o-mini"\nbase_url = "{base_url}"\n'
        'examples = "examples.jsonl"\nk = 1\nmax_reasks = 0\n'
    )
    return cfg


def test_a_moved_project_resumes_and_an_edited_example_is_paid_again(tmp_path, ledger_target):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("From: Gamma SA\nTotal: 7.50\n")
    (docs / "b.txt").write_text("From: Delta AG\nTotal: 99.00\n")
    ledger, out = ledger_target, tmp_path / "out.jsonl"
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = write_project(tmp_path / "project", server.base_url)

        def extract(config: Path) -> dict:
            args = ["extract", str(docs), "--config", str(config), "--out", str(out), "--ledger", str(ledger)]
            done = cli(*args, "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        extract(cfg)
        paid = len(server.requests)
        assert paid == 2

        moved = tmp_path / "moved" / "renamed-project"
        shutil.copytree(cfg.parent, moved)
        shutil.rmtree(cfg.parent)  # the old folder is gone
        summary = extract(moved / "extractkit.toml")
        assert summary["resumed"] == 2 and len(server.requests) == paid  # nothing paid again

        edited = [EXAMPLES[0], {**EXAMPLES[1], "output": {"issuer": "Beta GmbH", "total": 10.5}}]
        (moved / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edited))
        summary = extract(moved / "extractkit.toml")
        assert summary["resumed"] == 0 and len(server.requests) == paid + 2  # no stale answers
