"""Issue 14, section 7: `extract --max-cost USD` ( `[batch] max_cost`, `BatchRunner(max_cost=...)`)
stops sending once the run's spend reaches the ceiling, keeps what finished, marks the run
`stopped_max_cost`, exits 1 with the reason; a rerun continues. Every answer of the respx fake
costs a known amount: 100,000 prompt tokens of gpt-4o-mini ($0.15 per 1M) = $0.015."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import respx
from typer.testing import CliRunner

from extractkit import ConfigError, Extractor, ZeroShot
from extractkit.batch import BatchRunner
from extractkit.cli._app import app
from extractkit.ledger import Ledger

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, completion

ANSWER = {"issuer": "Acme Ltd", "total": 12.5}
PER_DOC = 0.015  # USD: one attempt per document


def run(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def write_cfg(tmp: Path, model: str = "gpt-4o-mini", batch: str = "") -> Path:
    cfg = tmp / "cfg.toml"
    cfg.write_text(
        f'schema = "tests.conftest:Invoice"\n[batch]\nconcurrency = 1\n{batch}\n'
        f'[[tiers]]\nkind = "zero_shot"\nmodel = "{model}"\nbase_url = "{BASE_URL}"\nretries = 0\n'
    )
    return cfg


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(6):
        (d / f"d{i}.txt").write_text(f"INVOICE {i}\nIssuer: Acme Ltd\nTotal: 12.50\n")
    return d


def _answer(mock_api: respx.MockRouter) -> respx.Route:
    return mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion(ANSWER, usage=(100_000, 0, 0)))
    )


def test_the_ceiling_stops_the_run_and_a_rerun_continues(tmp_path, docs, mock_api):
    route = _answer(mock_api)
    cfg, ledger, out = write_cfg(tmp_path), tmp_path / "l.sqlite3", tmp_path / "out.jsonl"
    args = ("extract", docs, "-c", cfg, "--ledger", ledger, "--out", out)
    # $0.04: after 3 documents ($0.045) the spend has reached it; nothing more is sent
    first = run(*args, "--max-cost", "0.04", "--json")
    assert first.exit_code == 1, first.output
    assert route.call_count == 3
    summary = json.loads(first.stdout)
    assert (summary["status"], summary["ok"], summary["unattempted"]) == ("stopped_max_cost", 3, 3)
    assert "max cost $0.04 reached" in first.output and "3 documents left unattempted" in first.output
    assert db_rows(ledger, "SELECT status FROM runs") == [("stopped_max_cost",)]
    # finished results are kept, in the ledger and in --out; the rest are not recorded (pending)
    assert db_rows(ledger, "SELECT COUNT(*) FROM extractions WHERE status = 'ok'") == [(3,)]
    assert [json.loads(x)["status"] for x in out.read_text().splitlines()] == ["ok"] * 3

    # the rerun reuses the three and sends the other three ($0.045 > $0.04 only after the last)
    second = run(*args, "--max-cost", "0.04", "--json")
    assert second.exit_code == 0, second.output
    assert route.call_count == 6
    summary = json.loads(second.stdout)
    assert (summary["status"], summary["ok"], summary["resumed"], summary["unattempted"]) == ("done", 6, 3, 0)


def test_max_cost_from_the_toml(tmp_path, docs, mock_api):
    route = _answer(mock_api)
    cfg = write_cfg(tmp_path, batch="max_cost = 0.02")
    result = run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.sqlite3")
    assert result.exit_code == 1, result.output
    assert route.call_count == 2  # $0.015 < $0.02 after one, $0.03 after two
    assert "max cost $0.02 reached" in result.output and "Traceback" not in result.output
    # the command line wins over the file
    more = run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.sqlite3", "--max-cost", "10")
    assert more.exit_code == 0, more.output
    assert route.call_count == 6


def test_an_unknown_price_with_a_ceiling_is_refused_before_sending(tmp_path, docs, mock_api):
    route = _answer(mock_api)
    ledger = tmp_path / "l.sqlite3"
    result = run("extract", docs, "-c", write_cfg(tmp_path, model="acme-gateway-model-7b"),
                 "--ledger", ledger, "--max-cost", "1")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "'zero_shot'" in result.output and "set `price`" in result.output
    assert route.call_count == 0
    assert not ledger.exists() or db_rows(ledger, "SELECT COUNT(*) FROM runs") == [(0,)]
    # without a ceiling the same config runs (its cost is unknown, not refused)
    assert run("extract", docs, "-c", write_cfg(tmp_path, model="acme-gateway-model-7b"),
               "--ledger", ledger).exit_code == 0  # fmt: skip


@pytest.mark.parametrize("bad", [0, -1.0])
def test_a_ceiling_must_be_positive(tmp_path, bad):
    ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)])
    with Ledger(tmp_path / "l.db") as ledger, pytest.raises(ConfigError, match="positive"):
        BatchRunner(ex, ledger, max_cost=bad)


def test_the_library_runner_stops_at_its_ceiling(tmp_path, docs, mock_api):
    route = _answer(mock_api)
    ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, max_reasks=0)])
    with Ledger(tmp_path / "l.db") as ledger:
        summary = asyncio.run(BatchRunner(ex, ledger, concurrency=1, max_cost=0.015).run([docs]))
    assert route.call_count == 1  # the first document reaches $0.015: the ceiling
    assert (summary.status, summary.ok, summary.unattempted) == ("stopped_max_cost", 1, 5)
    assert summary.error is not None and "max cost" in summary.error
