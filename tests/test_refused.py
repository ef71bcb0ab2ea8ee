"""A wrong API key (HTTP 401) stops the run at once, and a provider that stops answering stops an
eval cleanly (found by the new-user audit: `eval` exited 0 on 401s and printed a traceback when the
provider was down; `extract` sent every document through every tier to collect 401s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from extractkit import Extractor, FewShot, ProviderRefused, ProviderUnreachable, ZeroShot

from .conftest import Invoice, db_rows
from .fakes import FakeLLMServer, error_body

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-wrong-key-0123456789abcdef"


def refusing(body):  # an OpenAI-style 401 that echoes the key it was given
    return 401, error_body(f"Incorrect API key provided: {KEY}", code="invalid_api_key"), {}


def _docs(tmp: Path, n: int) -> Path:
    docs = tmp / "docs"
    docs.mkdir()
    for i in range(n):
        (docs / f"inv{i}.txt").write_text(f"ACME Tools Ltd\nInvoice {i}\nTotal due: 1,249.50 EUR\n")
    return docs


def _config(tmp: Path, url: str) -> Path:
    (tmp / "ex.jsonl").write_text(
        json.dumps({"input": "ACME Ltd total 5.00", "output": {"issuer": "ACME Ltd", "total": 5.0}}) + "\n"
    )
    cfg = tmp / "cfg.toml"
    cfg.write_text(
        f'schema = "tests.conftest:Invoice"\n[ledger]\npath = "ledger.sqlite3"\n'
        f'[[tiers]]\nkind = "zero_shot"\nmodel = "gpt-4o-mini"\nbase_url = "{url}"\nmax_reasks = 0\n'
        f'[[tiers]]\nkind = "few_shot"\nmodel = "gpt-4o-mini"\nbase_url = "{url}"\nexamples = "ex.jsonl"\nmax_reasks = 0\n'
    )
    return cfg


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "EXTRACTKIT_"))}
    env.update(OPENAI_API_KEY=KEY, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "extractkit", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_refused_key_stops_the_library_call_after_one_request(tmp_path):
    with FakeLLMServer(refusing) as server:
        tiers = [ZeroShot(model="gpt-4o-mini", base_url=server.base_url, api_key=KEY),
                 FewShot(model="gpt-4o-mini", base_url=server.base_url, api_key=KEY,
                         examples=[{"input": "ACME Ltd total 5.00", "output": {"issuer": "ACME Ltd", "total": 5.0}}])]  # fmt: skip
        with Extractor(Invoice, tiers=tiers, ledger=tmp_path / "l.sqlite3") as ex:
            with pytest.raises(ProviderRefused) as got:
                ex.extract("ACME Tools Ltd\nTotal due: 1,249.50 EUR")
            assert isinstance(got.value, ProviderUnreachable)  # handled wherever that is
            assert "refused the API key" in str(got.value) and "OPENAI_API_KEY" in str(got.value)
            assert got.value.result is not None and got.value.result.attempts[-1].status_code == 401
            with pytest.raises(ProviderRefused):  # later calls are not sent at all
                ex.extract("another document, Total 5.00")
        assert len(server.requests) == 1  # not one per tier, not one per document
    outcomes = db_rows(tmp_path / "l.sqlite3", "SELECT outcome, status_code FROM attempts")
    assert [tuple(r) for r in outcomes] == [("api_error", 401)]  # no invented attempt beside it


def test_a_refused_key_stops_a_batch_with_exit_3_and_the_key_is_not_printed(tmp_path):
    docs = _docs(tmp_path, 6)
    with FakeLLMServer(refusing) as server:
        proc = _cli("extract", docs, "-c", _config(tmp_path, server.base_url), "--concurrency", "1")
        sent = len(server.requests)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "refused the API key" in proc.stderr and "OPENAI_API_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert KEY not in proc.stdout + proc.stderr and KEY[-12:] not in proc.stdout + proc.stderr  # nor a piece
    assert sent == 1  # one request, not 6 documents x 2 tiers
    runs = db_rows(tmp_path / "ledger.sqlite3", "SELECT status FROM runs")
    assert [r[0] for r in runs] == ["provider_unreachable"]


def _gold(tmp: Path) -> Path:
    docs = _docs(tmp, 2)
    gold = tmp / "gold.jsonl"
    gold.write_text("".join(
        json.dumps({"id": f"g{i}", "document": str(docs / f"inv{i}.txt"),
                    "expected": {"issuer": "ACME Tools Ltd", "total": 1249.5}}) + "\n" for i in range(2)
    ))  # fmt: skip
    return gold


@pytest.mark.parametrize("provider", ["refused", "down"])
def test_eval_stops_with_exit_3_when_the_provider_refuses_or_is_down(tmp_path, provider):
    gold = _gold(tmp_path)
    if provider == "refused":
        with FakeLLMServer(refusing) as server:
            proc = _cli("eval", gold, "-c", _config(tmp_path, server.base_url), "--concurrency", "1")
        assert len(server.requests) == 1  # 2 documents x 2 tiers: the first 401 stops them all
        assert "refused the API key" in proc.stderr
    else:
        import socket

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = _cli("eval", gold, "-c", _config(tmp_path, f"http://127.0.0.1:{port}/v1"))
        assert "provider unreachable" in proc.stderr
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and KEY not in proc.stdout + proc.stderr
    runs = db_rows(tmp_path / "ledger.sqlite3", "SELECT status FROM runs WHERE kind = 'eval'")
    assert [r[0] for r in runs] == ["provider_unreachable"]


def test_the_traceback_of_a_refused_key_holds_no_piece_of_it(tmp_path):
    """The SDK's 401 error quotes the key: ProviderRefused is not chained to it, so an uncaught
    error (or logging.exception, an error tracker) shows none of it."""
    import traceback

    with FakeLLMServer(refusing) as server:
        tier = ZeroShot(model="gpt-4o-mini", base_url=server.base_url, api_key=KEY)
        with Extractor(Invoice, tiers=[tier]) as ex, pytest.raises(ProviderRefused) as got:
            ex.extract("ACME Tools Ltd\nTotal due: 1,249.50 EUR")
        with Extractor(Invoice, tiers=[tier]) as ex, pytest.raises(ProviderRefused) as many:
            list(ex.extract_many(["ACME Tools Ltd, Total 5.00"]))  # extract_many raises the same kind
    for exc in (got.value, many.value):
        shown = "".join(traceback.format_exception(exc))
        assert KEY[-12:] not in shown and KEY not in shown, shown


def test_eval_shows_no_empty_tables_when_nothing_was_scored(tmp_path):
    gold = _gold(tmp_path)
    with FakeLLMServer(refusing) as server:
        proc = _cli("eval", gold, "-c", _config(tmp_path, server.base_url), "--concurrency", "1")
    assert proc.returncode == 3
    assert "each tier alone" not in proc.stdout and "No gold document was scored" in proc.stdout, proc.stdout
    assert "stopped sending" not in proc.stderr or "once the key is right" in proc.stderr


def test_a_batch_stopped_by_a_refused_key_gives_one_piece_of_advice(tmp_path):
    docs = _docs(tmp_path, 3)
    with FakeLLMServer(refusing) as server:
        proc = _cli("extract", docs, "-c", _config(tmp_path, server.base_url), "--concurrency", "1")
    assert proc.returncode == 3
    assert "once the key is right" in proc.stderr and "when the provider answers" not in proc.stderr
    assert "extractor is closed" not in proc.stderr  # library wording, not for the CLI
