"""Issue 14, sections 1 and 2: every CLI error is one `error: ...` line with a meaningful exit code,
never a traceback; empty work is not success. No test reaches the internet (FakeLLMServer, respx)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from extractkit import __version__
from extractkit.cli._app import app
from extractkit.ledger import Ledger

from .fakes import BASE_URL, FakeLLMServer, echo_invoice_responder

DOC = "INVOICE\nIssuer: Acme Ltd\nTotal: 12.50\n"


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def no_traceback(result, code: int) -> str:  # type: ignore[no-untyped-def]
    """The exit code is ``code``, nothing is a traceback, the error is one `error:` line."""
    problems = []
    if result.exit_code != code:
        problems.append(f"exit {result.exit_code} != {code}")
    if "Traceback" in result.output or (result.exception and not isinstance(result.exception, SystemExit)):
        problems.append(f"traceback / uncaught {result.exception!r}")
    if code and "error:" not in result.output:
        problems.append("no `error:` line")
    return "; ".join(problems) + (f"\n{result.output}" if problems else "")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A folder with a config (no [ledger] path), one document, a gold file, a fine-tune export,
    a text file posing as a ledger, a folder posing as a ledger, and a good ledger."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("EXTRACTKIT_LEDGER", str(tmp_path / "default.sqlite3"))
    with FakeLLMServer(echo_invoice_responder) as server:
        (tmp_path / "cfg.toml").write_text(
            'schema = "tests.conftest:Invoice"\n\n[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\n'
            f'base_url = "{server.base_url}"\n'
        )
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "a.txt").write_text(DOC)
        (tmp_path / "gold.jsonl").write_text(
            json.dumps({"document": DOC, "expected": {"issuer": "Acme Ltd", "total": 12.5}}) + "\n"
        )
        (tmp_path / "ft").mkdir()
        (tmp_path / "ft" / "train.jsonl").write_text('{"messages": []}\n')
        (tmp_path / "notdb.sqlite3").write_text("not a database\n")
        (tmp_path / "somedir").mkdir()
        with Ledger(tmp_path / "good.sqlite3"):
            pass
        yield tmp_path


# Each subcommand: how to run it with a bad ledger / an unwritable output / a missing config
# (None where the subcommand has no such input), and the exit code expected.
BAD_LEDGER, BAD_OUT, NO_CONFIG = "bad ledger", "unwritable output", "missing config"
Cmd = Callable[[str], list[str]]
COMMANDS: dict[str, dict[str, Cmd | None]] = {
    "extract": {
        BAD_LEDGER: lambda led: ["extract", "docs", "-c", "cfg.toml", "--ledger", led],
        BAD_OUT: lambda out: ["extract", "docs", "-c", "cfg.toml", "--out", out],
        NO_CONFIG: lambda cfg: ["extract", "docs", "-c", cfg],
    },
    "report": {
        BAD_LEDGER: lambda led: ["report", "--ledger", led],
        BAD_OUT: lambda out: ["report", "--ledger", "good.sqlite3", "--html", out],
        NO_CONFIG: lambda cfg: ["report", "-c", cfg],
    },
    "eval": {
        BAD_LEDGER: lambda led: ["eval", "gold.jsonl", "-c", "cfg.toml", "--ledger", led],
        BAD_OUT: lambda out: ["eval", "gold.jsonl", "-c", "cfg.toml", "--html", out],
        NO_CONFIG: lambda cfg: ["eval", "gold.jsonl", "-c", cfg],
    },
    "gold from-invoice2data": {
        BAD_LEDGER: None,
        BAD_OUT: lambda out: ["gold", "from-invoice2data", "docs", "-o", out],
        NO_CONFIG: None,
    },
    "finetune export": {
        BAD_LEDGER: lambda led: ["finetune", "export", "-c", "cfg.toml", "--ledger", led],
        BAD_OUT: lambda out: ["finetune", "export", "-c", "cfg.toml", "--ledger", "good.sqlite3", "-o", out],
        NO_CONFIG: lambda cfg: ["finetune", "export", "-c", cfg],
    },
    "finetune launch": {
        BAD_LEDGER: lambda led: ["finetune", "launch", "--dir", "ft", "--ledger", led],
        BAD_OUT: None,
        NO_CONFIG: lambda cfg: ["finetune", "launch", "--dir", "ft", "-c", cfg],
    },
    "finetune status": {
        BAD_LEDGER: lambda led: ["finetune", "status", "--ledger", led],
        BAD_OUT: None,
        NO_CONFIG: lambda cfg: ["finetune", "status", "-c", cfg],
    },
    "init": {
        BAD_LEDGER: None,
        BAD_OUT: lambda out: ["init", out],
        NO_CONFIG: None,
    },
    # a shared queue needs a PostgreSQL ledger: a SQLite file (bad or good) is a usage error
    "enqueue": {
        BAD_LEDGER: lambda led: ["enqueue", "docs", "-c", "cfg.toml", "--ledger", led],
        BAD_OUT: None,
        NO_CONFIG: lambda cfg: ["enqueue", "docs", "-c", cfg],
    },
    "worker": {
        BAD_LEDGER: lambda led: ["worker", "-c", "cfg.toml", "--ledger", led],
        BAD_OUT: None,
        NO_CONFIG: lambda cfg: ["worker", "-c", cfg],
    },
    "status": {
        BAD_LEDGER: lambda led: ["status", "--ledger", led],
        BAD_OUT: None,
        NO_CONFIG: lambda cfg: ["status", "-c", cfg],
    },
    "batch status": {
        BAD_LEDGER: lambda led: ["batch", "status", "--ledger", led],
        BAD_OUT: None,
        NO_CONFIG: lambda cfg: ["batch", "status", "-c", cfg],
    },
    "batch cancel": {
        BAD_LEDGER: lambda led: ["batch", "cancel", "-c", "cfg.toml", "--all", "--ledger", led],
        BAD_OUT: None,
        NO_CONFIG: lambda cfg: ["batch", "cancel", "--all", "-c", cfg],
    },
    "examples harvest": {
        BAD_LEDGER: lambda led: ["examples", "harvest", "-c", "cfg.toml", "--ledger", led],
        BAD_OUT: lambda out: ["examples", "harvest", "-c", "cfg.toml", "--ledger", "good.sqlite3", "-o", out],
        NO_CONFIG: lambda cfg: ["examples", "harvest", "-c", cfg],
    },
}


def test_every_subcommand_is_covered() -> None:
    """A new subcommand must be added to COMMANDS (local serve needs the local extra: see below)."""
    import typer.main

    group = typer.main.get_command(app)
    names = set()
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        names |= {f"{name} {s}" for s in subs} if subs else {name}
    assert names - {"version", "local serve"} == set(COMMANDS)
    assert run("--version").stdout.strip() == __version__  # `extractkit --version`
    assert run("version").stdout.strip() == __version__


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_traceback_and_exit_2(env: Path, command: str) -> None:
    """A text file or a folder as the ledger, an output path that cannot be written, a missing
    config: `error: ...`, exit 2, no traceback, for every subcommand."""
    cases = {
        f"{BAD_LEDGER} (text file)": (COMMANDS[command][BAD_LEDGER], "notdb.sqlite3"),
        f"{BAD_LEDGER} (folder)": (COMMANDS[command][BAD_LEDGER], "somedir"),
        f"{BAD_OUT} (under a file)": (COMMANDS[command][BAD_OUT], "notdb.sqlite3/out.file"),
        NO_CONFIG: (COMMANDS[command][NO_CONFIG], "missing.toml"),
    }
    failures = []
    for case, (make, value) in cases.items():
        if make is None:
            continue
        problem = no_traceback(run(*make(value)), 2)
        if problem:
            failures.append(f"{command} / {case}: {problem}")
    assert not failures, "\n".join(failures)


def runs(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT kind, status FROM runs").fetchall()


def test_unwritable_out_fails_before_a_run_starts(env: Path) -> None:
    """`extract --out` to a path that cannot be written: exit 2 before any run, none left `running`."""
    result = run("extract", "docs", "-c", "cfg.toml", "--out", "notdb.sqlite3/x.jsonl", "--ledger", "l.sqlite3")
    assert not no_traceback(result, 2), result.output
    assert "notdb.sqlite3/x.jsonl" in result.output
    assert not [r for r in runs(env / "l.sqlite3") if r[1] == "running"]
    ok = run("extract", "docs", "-c", "cfg.toml", "--out", "new/x.jsonl", "--ledger", "l.sqlite3")
    assert ok.exit_code == 0, ok.output  # a missing folder is created, as before
    assert len((env / "new" / "x.jsonl").read_text().splitlines()) == 1


def test_eval_without_ledger_path_uses_the_default_ledger(env: Path) -> None:
    """A config without `[ledger] path`: eval resolves the ledger as extract does ($EXTRACTKIT_LEDGER)."""
    result = run("eval", "gold.jsonl", "-c", "cfg.toml", "--json")
    assert result.exit_code == 0, result.output
    assert ("eval", "done") in runs(env / "default.sqlite3")


@pytest.mark.parametrize(
    "args",
    [["empty"], ["docs", "--include", "*.pdf"], ["docs", "--include", "*.pdf", "--include", "*.html"]],
    ids=["empty folder", "include matches nothing", "two includes match nothing"],
)
def test_no_documents_matched_is_a_usage_error(env: Path, args: list[str]) -> None:
    (env / "empty").mkdir()
    result = run("extract", *args, "-c", "cfg.toml", "--ledger", "l.sqlite3")
    assert not no_traceback(result, 2), result.output
    assert "no documents matched" in result.output
    assert not [r for r in runs(env / "l.sqlite3") if r[1] == "done"]


def test_include_is_case_insensitive(env: Path) -> None:
    (env / "docs" / "B.TXT").write_text(DOC.replace("Acme", "Bolt"))
    result = run("extract", "docs", "-c", "cfg.toml", "--ledger", "l.sqlite3", "--include", "*.Txt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"] == 2
    assert "case-insensitive" in run("extract", "--help").output


def test_report_names_a_run_or_schema_that_does_not_exist(env: Path) -> None:
    assert run("extract", "docs", "-c", "cfg.toml", "--ledger", "l.sqlite3").exit_code == 0
    for option, value, what in (("--run", "nosuch", "no such run"), ("--schema", "Nope", "no such schema")):
        result = run("report", "--ledger", "l.sqlite3", option, value)
        assert not no_traceback(result, 2), result.output
        assert what in result.output and value in result.output
    assert run("report", "--ledger", "l.sqlite3", "--schema", "Invoice").exit_code == 0


def test_finetune_provider_failure_is_a_run_failure(env: Path, mock_api, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A provider that rejects the upload or the status poll: exit 1 (a run failure), not 2 (usage)."""
    monkeypatch.setenv("OPENAI_BASE_URL", BASE_URL)
    mock_api.post("/files").mock(return_value=httpx.Response(500, json={"error": {"message": "boom"}}))
    mock_api.get("/fine_tuning/jobs/ftjob-x").mock(return_value=httpx.Response(500, json={"error": {"message": "boom"}}))
    launched = run("finetune", "launch", "--dir", "ft", "--ledger", "good.sqlite3")
    assert not no_traceback(launched, 1), launched.output
    polled = run("finetune", "status", "ftjob-x", "--ledger", "good.sqlite3")
    assert not no_traceback(polled, 1), polled.output
