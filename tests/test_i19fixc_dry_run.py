"""Audit 19, L3: `extract --dry-run --via batch` refuses a chain the batch waves cannot run, with
the run's own error and exit code (one rule: ``WaveRunner.check_tiers``), instead of printing an
estimate for a run that would refuse to start. Nothing is sent (respx blocks any request)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from extractkit.cli._app import app

from .fakes import BASE_URL


def run(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def write_cfg(tmp: Path, extra: str) -> Path:
    cfg = tmp / "cfg.toml"
    cfg.write_text(
        'schema = "tests.conftest:Invoice"\n[batch]\nconcurrency = 1\n'
        f'[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o"\nbase_url = "{BASE_URL}"\nretries = 0\n'
        f"max_output_tokens = 200\n{extra}\n"
    )
    return cfg


def error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if "sends page images" in ln]
    assert lines, output
    return lines[0]


@pytest.mark.parametrize("mode", ["text+images", "images"])
def test_dry_run_via_batch_refuses_a_vision_tier_as_the_run_does(tmp_path: Path, mock_api, mode: str):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("INVOICE 1\nIssuer: Acme Ltd\nTotal: 12.50\n")
    cfg = write_cfg(tmp_path, f'input = "{mode}"')
    ledger = tmp_path / "l.sqlite3"
    dry = run("extract", docs, "-c", cfg, "--ledger", ledger, "--dry-run", "--via", "batch")
    real = run("extract", docs, "-c", cfg, "--ledger", ledger, "--via", "batch", "--poll", "0")
    assert real.exit_code == 2, real.output
    assert dry.exit_code == 2, dry.output  # was 0, with an estimate of a run that cannot start
    assert error_line(dry.output) == error_line(real.output)  # the same words: one rule
    assert "without --via batch" in dry.output
    assert "dry run: nothing sent" not in dry.output  # no estimate printed
    # the JSON dry run refuses as well
    as_json = run("extract", docs, "-c", cfg, "--ledger", ledger, "--dry-run", "--via", "batch", "--json")
    assert as_json.exit_code == 2 and "sends page images" in as_json.output
    assert not mock_api.calls


def test_dry_run_live_still_estimates_a_vision_tier(tmp_path: Path, mock_api):
    """Without --via batch the vision chain runs live: the dry run estimates it as before."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("INVOICE 1\nIssuer: Acme Ltd\nTotal: 12.50\n")
    cfg = write_cfg(tmp_path, 'input = "text+images"')
    dry = run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.sqlite3", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing sent" in dry.output
    assert not mock_api.calls


def test_dry_run_a_text_chain_via_batch_still_estimates(tmp_path: Path, mock_api):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("INVOICE 1\nIssuer: Acme Ltd\nTotal: 12.50\n")
    cfg = write_cfg(tmp_path, "")
    dry = run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.sqlite3", "--dry-run", "--via", "batch")
    assert dry.exit_code == 0, dry.output
    assert "priced at the Batch API price" in dry.output
    assert not mock_api.calls
