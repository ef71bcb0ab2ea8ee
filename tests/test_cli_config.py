"""Issue 14, section 3: every ledger subcommand takes the same `-c/--config` and `--ledger`, and finds
the ledger one way (--ledger > $EXTRACTKIT_LEDGER > the config's [ledger] path > the default); the
config says `max_reasks` like the library (`retries` still read, with a warning); the CLI's one
error handler is the only place errors are caught. Providers are a FakeLLMServer on 127.0.0.1."""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from extractkit import ConfigError
from extractkit._config import load_config, parse_config
from extractkit.cli import app

from .conftest import db_rows
from .fakes import FakeLLMServer, echo_invoice_responder

CLI = Path(__file__).resolve().parents[1] / "extractkit" / "cli"
# Subcommands that neither read nor write a ledger; every other one must take -c and --ledger.
NO_LEDGER = {"version", "init", "gold from-invoice2data", "local serve"}


def run(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def subcommands() -> dict[str, Any]:
    group = typer.main.get_command(app)
    found = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        found.update({f"{name} {s}": c for s, c in subs.items()} if subs else {name: cmd})
    return found


def test_every_ledger_subcommand_takes_config_and_ledger() -> None:
    """Introspects the app: a new subcommand without -c/--config and --ledger fails here (or is
    added to NO_LEDGER on purpose)."""
    commands = subcommands()
    assert {"extract", "report", "eval", "finetune export", "finetune launch", "finetune status",
            "examples harvest"} <= set(commands)  # fmt: skip
    missing = []
    for name, cmd in sorted(commands.items()):
        if name in NO_LEDGER:
            continue
        opts = {o for p in cmd.params for o in p.opts}
        by_name = {p.name: p for p in cmd.params}
        for opt in ("-c", "--config", "--ledger"):
            if opt not in opts:
                missing.append(f"{name}: {opt}")
        if "config" in by_name and by_name["config"].default is not None:
            missing.append(f"{name}: -c defaults to {by_name['config'].default!r}, not to ./extractkit.toml if present")
    assert not missing, missing


def reached(report_json: str) -> int:
    """Documents the first tier saw, from `report --json`."""
    return int(json.loads(report_json)["tiers"][0]["reached"])


def write_project(root: Path, base_url: str, ledger: str = "led/ledger.sqlite3") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "cfg.toml"
    cfg.write_text(
        f'schema = "tests.conftest:Invoice"\n\n[ledger]\npath = "{ledger}"\n\n'
        f'[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\nbase_url = "{base_url}"\nmax_reasks = 0\n'
    )
    return cfg


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A config whose [ledger] path is relative to it, run from another folder; 12 documents."""
    monkeypatch.delenv("EXTRACTKIT_LEDGER", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"{i}.txt").write_text(f"INVOICE\nIssuer: Company {i} Ltd\nTotal: {i + 10}.50\n")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = write_project(tmp_path / "proj", server.base_url)
        done = run("extract", docs, "-c", cfg, "--json")
        assert done.exit_code == 0, done.output
        yield cfg
    assert not (elsewhere / ".extractkit").exists()  # nothing went to the default ledger


def test_report_eval_and_export_read_the_ledger_extract_wrote(project: Path) -> None:
    cfg = project
    ledger = cfg.parent / "led" / "ledger.sqlite3"
    assert db_rows(ledger, "SELECT count(*) FROM extractions")[0][0] == 12

    report = run("report", "-c", cfg, "--json")
    assert report.exit_code == 0, report.output
    assert reached(report.stdout) == 12

    export = run("finetune", "export", "-c", cfg, "-o", cfg.parent / "ft", "--validation", "0", "--json")
    assert export.exit_code == 0, export.output
    assert json.loads(export.stdout)["train_examples"] == 12

    harvest = run("examples", "harvest", "-c", cfg, "-o", cfg.parent / "pool.jsonl", "--validation", "0")
    assert harvest.exit_code == 0, harvest.output
    assert len((cfg.parent / "pool.jsonl").read_text().splitlines()) == 12

    gold = cfg.parent / "gold.jsonl"
    gold.write_text(json.dumps({"document": "Issuer: Acme Ltd\nTotal: 3.00\n",
                                "expected": {"issuer": "Acme Ltd", "total": 3.0}}) + "\n")  # fmt: skip
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg.write_text(cfg.read_text().replace(cfg.read_text().split('base_url = "')[1].split('"')[0],
                                               server.base_url))  # fmt: skip
        ev = run("eval", gold, "-c", cfg, "--json")
        assert ev.exit_code == 0, ev.output
    eval_run = db_rows(ledger, "SELECT id FROM runs WHERE kind = 'eval'")[0][0]
    shown = run("eval", "--run", eval_run, "-c", cfg, "--json")  # no gold, no requests: the config's ledger
    assert shown.exit_code == 0, shown.output

    # finetune status reads it too: there is no job in it (not "no ledger at ...")
    status = run("finetune", "status", "-c", cfg)
    assert status.exit_code == 2 and "no fine-tuning job in this ledger" in status.output, status.output


def test_ledger_precedence(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--ledger > $EXTRACTKIT_LEDGER > [ledger] path (relative to the config) > the default."""
    from extractkit.cli._ledger_opt import ledger_choice

    cfg = load_config(project)
    configured = project.parent / "led" / "ledger.sqlite3"
    assert ledger_choice(None, None).path == Path(".extractkit") / "ledger.sqlite3"
    assert ledger_choice(None, cfg).path == configured
    monkeypatch.setenv("EXTRACTKIT_LEDGER", "")  # empty is unset
    assert ledger_choice(None, cfg).path == configured
    monkeypatch.setenv("EXTRACTKIT_LEDGER", str(tmp_path / "env.sqlite3"))
    assert ledger_choice(None, cfg).path == tmp_path / "env.sqlite3"
    assert ledger_choice(tmp_path / "flag.sqlite3", cfg).path == tmp_path / "flag.sqlite3"

    # the CLI: $EXTRACTKIT_LEDGER has no ledger yet, so report says where it looked and why
    missing = run("report", "-c", project)
    assert missing.exit_code == 2 and "env.sqlite3" in missing.output and "$EXTRACTKIT_LEDGER" in missing.output
    assert run("report", "-c", project, "--ledger", configured, "--json").exit_code == 0
    # extract too: $EXTRACTKIT_LEDGER wins over the config's [ledger] path (it used to lose)
    done = run("extract", tmp_path / "docs", "-c", project, "--json")
    assert done.exit_code == 0, done.output
    assert db_rows(tmp_path / "env.sqlite3", "SELECT count(*) FROM extractions")[0][0] == 12
    assert reached(run("report", "-c", project, "--json").stdout) == 12


def test_config_default_and_a_missing_config(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No -c: ./extractkit.toml when it exists; -c naming a missing file is an error, never a silent
    fall back to another ledger."""
    (project.parent / "train.jsonl").write_text('{"messages": []}\n')
    for args in (["report"], ["finetune", "status"], ["finetune", "launch", "--dir", project.parent],
                 ["eval", "--run", "x"]):  # fmt: skip
        result = run(*args, "-c", "missing.toml")
        assert result.exit_code == 2 and "missing.toml" in result.output, (args, result.output)
    nothing = run("report")  # no ./extractkit.toml, no ledger here
    assert nothing.exit_code == 2 and "no ledger at" in nothing.output
    monkeypatch.chdir(project.parent)
    project.rename(project.parent / "extractkit.toml")
    found = run("report", "--json")
    assert found.exit_code == 0, found.output
    assert reached(found.stdout) == 12


# -- re-asks vs retries ----------------------------------------------------------------------------


def tier(**keys: Any) -> dict[str, Any]:
    return {"schema": "m:C", "tiers": [{"kind": "zero_shot", "model": "gpt-4o-mini", **keys}]}


def test_config_key_is_max_reasks_and_retries_is_a_deprecated_alias(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_config(tier(max_reasks=4), root=tmp_path).tiers[0].max_reasks == 4
    with pytest.warns(FutureWarning, match=r"tiers\.0\.retries is deprecated, rename it to max_reasks"):
        assert parse_config(tier(retries=1), root=tmp_path).tiers[0].max_reasks == 1
    with pytest.raises(ConfigError, match="both retries and max_reasks"):
        parse_config(tier(retries=1, max_reasks=2), root=tmp_path)
    with pytest.raises(ConfigError, match=r"tiers\.0\.max_reasks"):
        parse_config(tier(max_reasks=-1), root=tmp_path)


def test_cli_prints_the_deprecation_as_one_warning_line(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("INVOICE\nIssuer: Acme Ltd\nTotal: 12.50\n")
    with FakeLLMServer(echo_invoice_responder) as server:
        cfg = write_project(tmp_path, server.base_url)
        cfg.write_text(cfg.read_text().replace("max_reasks = 0", "retries = 0"))
        result = run("extract", "docs", "-c", cfg)
    assert result.exit_code == 0, result.output
    assert "tiers.0.retries is deprecated, rename it to max_reasks" in result.output
    assert "FutureWarning" not in result.output  # a line for a person, not Python's warning format


def test_help_and_config_docs_keep_reasks_and_retries_apart() -> None:
    """`retries` is no config key any more; the config's documentation says max_reasks."""
    import extractkit._config as config_module

    doc = config_module.__doc__ or ""
    assert "max_reasks" in doc and "\nretries" not in doc
    assert "retries" not in config_module.TierConfig.model_fields
    for command in (["report"], ["extract"], ["finetune", "export"]):  # rich markup must not eat it
        assert "[ledger]" in run(*command, "--help").output, command


# -- one error handler ---------------------------------------------------------------------------


def test_no_command_catches_extractkit_errors_itself() -> None:
    """The CLI's one handler (`_Group.invoke` / `error_exit`) turns every ExtractkitError into
    `error: ...` with its exit code (a RunError exits 1); a command-level `except ExtractkitError`
    would turn a run failure into a usage error (exit 2)."""
    import extractkit._errors as errors

    names = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.ExtractkitError)}
    found = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                caught |= {n.attr for n in ast.walk(node.type) if isinstance(n, ast.Attribute)}
                if caught & names and not (path.name == "_app.py" and "OSError" in caught):
                    found.append(f"{path.name}:{node.lineno} except {sorted(caught & names)}")
    assert not found, found
