"""Secrets never leave the process: a provider that echoes the API key into every field it can,
driven through the CLI (a real server on 127.0.0.1, the CLI in subprocesses) and the library;
then a grep of everything stored, printed or written: 0 hits."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from extractkit import Extractor, ZeroShot
from extractkit.ledger import Ledger

from .conftest import Invoice
from .fakes import BASE_URL, FakeLLMServer, completion, error_body

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_KEY = "gw_live_Q7hT2mVx9LkP4sRz"  # looks like no known key: only the registry can catch it
OPENAI_STYLE_KEY = "sk-proj-Zt5Yw8Qe3Rn6Ua1Ib0"
N_OK = 18


def ok_text(i: int, key: str) -> str:
    issuer = f"Firm {i} Ltd {key}" if i == 0 else f"Firm {i} Ltd"  # one extracted value holds the key
    return f"Doc-{i}\nFrom: {issuer}\nTotal: {i}.50\nAPI reference: {key}\n"


FAILING = {  # document number -> what the provider does with it
    20: "403", 21: "500", 22: "refusal", 23: "prose", 24: "schema_invalid", 25: "ungrounded",
}  # fmt: skip


def echoing_responder(key: str):  # type: ignore[no-untyped-def]
    """The worst provider: the key in error bodies, refusals, content, tool arguments, ``model``
    and ``system_fingerprint``."""

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        i = int(re.findall(r"Doc-(\d+)", user)[-1])
        kind = FAILING.get(i, "ok")
        if kind == "403":  # (a 401 stops the whole run: tests/test_refused.py)
            return 403, error_body(f"Permission denied for key: Bearer {key}", "permission_denied"), {}
        if kind == "500":
            return (
                500,
                error_body(f"upstream rejected Authorization: Bearer {key}", type_="server_error"),
                {"retry-after-ms": "1"},
            )
        if kind == "refusal":
            answer = completion(refusal=f"I will not use the key {key}.", content=None)
        elif kind == "prose":
            answer = completion(content=f"Here is your key back: {key}")
        elif kind == "schema_invalid":
            answer = completion({"issuer": key, "total": f"{key} dollars"})
        elif kind == "ungrounded":
            answer = completion({"issuer": f"Nowhere {key} Inc", "total": 1.0})
        else:
            issuer = f"Firm {i} Ltd {key}" if i == 0 else f"Firm {i} Ltd"
            answer = completion({"issuer": issuer, "total": i + 0.5, "note": f"Authorization: Bearer {key}"})
        answer["model"] = f"gpt-4o-mini {key}"
        answer["system_fingerprint"] = f"fp_{key}"
        return 200, answer, {}

    return respond


def cli(*args: str, key: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "EXTRACTKIT_LEDGER")}
    env.update(GW_KEY=key, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "extractkit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def dump_ledger(path: Path) -> str:
    """Every row of every table (sqlite_master), as text."""
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        parts = []
        for t in tables:
            for row in con.execute(f'SELECT * FROM "{t}"'):
                parts.append(f"{t}: " + " | ".join(str(v) for v in row))
        return "\n".join(parts)
    finally:
        con.close()


def test_an_echoing_provider_leaks_the_key_nowhere_through_the_cli(tmp_path: Path) -> None:
    key = GATEWAY_KEY  # in $GW_KEY, named by the tier's api_key_env: only the registry knows it
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(N_OK):
        (docs / f"ok{i:02}.txt").write_text(ok_text(i, key))
    for i in FAILING:
        (docs / f"bad{i}.txt").write_text(f"Doc-{i}\nFrom: Acme Ltd\nTotal: 5\n")
    led = tmp_path / "ledger.sqlite3"
    outputs: list[tuple[str, str]] = []  # (what, text) to grep
    with FakeLLMServer(echoing_responder(key)) as server:
        cfg = tmp_path / "extractkit.toml"
        cfg.write_text(
            f'schema = "tests.conftest:Invoice"\n[ledger]\npath = "{led}"\n\n[[tiers]]\nkind = "zero_shot"\n'
            f'model = "gpt-4o-mini"\nbase_url = "{server.base_url}"\napi_key_env = "GW_KEY"\nmax_reasks = 1\n'
        )

        def run(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
            proc = cli(*args, key=key, cwd=tmp_path)
            outputs.append((f"stdout of {args}", proc.stdout))
            outputs.append((f"stderr of {args}", proc.stderr))
            assert proc.returncode in ok, (args, proc.stdout, proc.stderr)
            return proc

        run("extract", str(docs), "-c", str(cfg), "--out", "out.jsonl", ok=(1,))
        run("extract", str(docs), "-c", str(cfg), "--out", "out-json.jsonl", "--json", ok=(1,))  # resumed
        run("report", "--ledger", str(led))
        run("report", "--ledger", str(led), "--json", "--csv", "report.csv", "--html", "report.html")
        run("finetune", "export", "-c", str(cfg), "-o", "ft", "--json")
        run("finetune", "export", "-c", str(cfg), "-o", "ft-text")
        run("examples", "harvest", "-c", str(cfg), "-o", "pool.jsonl")
        run("examples", "harvest", "-c", str(cfg), "-o", "pool-json.jsonl", "--json")
        gold = tmp_path / "gold.jsonl"
        gold.write_text("".join(
            json.dumps({"document": ok_text(i, key), "expected": {"issuer": f"Firm {i} Ltd {key}", "total": i + 0.5}})
            + "\n" for i in range(3)
        ) + json.dumps({"document": "Doc-20\nFrom: Acme Ltd\nTotal: 5\n", "expected": {"issuer": key, "total": 5}})
          + "\n")  # fmt: skip
        run("eval", str(gold), "-c", str(cfg), "--csv", "eval.csv", "--html", "eval.html", ok=(0, 1))
        evaluated = run("eval", str(gold), "-c", str(cfg), "--json", ok=(0, 1))  # reused from the ledger
        run("report", "--ledger", str(led), "--json")
    assert len(server.requests) > N_OK  # the provider was really asked, and answered with the key

    # the run happened as scripted: every failure kind reached the ledger
    rows = sqlite3.connect(led).execute("SELECT outcome, served_model FROM attempts").fetchall()
    outcomes = {r[0] for r in rows}
    assert {"ok", "api_error", "refusal", "invalid_json", "schema_invalid", "ungrounded"} <= outcomes, (
        outcomes
    )
    assert json.loads(evaluated.stdout[evaluated.stdout.index("{") :])["tiers"]

    files = [tmp_path / n for n in ("out.jsonl", "out-json.jsonl", "report.csv", "report.html", "pool.jsonl",
                                    "pool-json.jsonl", "eval.csv", "eval.html")]  # fmt: skip
    files += sorted((tmp_path / "ft").iterdir()) + sorted((tmp_path / "ft-text").iterdir())
    assert len(files) >= 14
    for f in files:
        outputs.append((str(f.relative_to(tmp_path)), f.read_text(encoding="utf-8")))
    outputs.append(("the ledger", dump_ledger(led)))
    leaks = [what for what, text in outputs if key in text]
    assert leaks == []
    assert any(r[1] and "[REDACTED]" in r[1] for r in rows)  # redacted, not dropped
    # what is left is still useful: the values, with the key cut out
    first = next(json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines() if "ok00" in x)
    assert first["status"] == "ok" and first["value"]["issuer"] == "Firm 0 Ltd [REDACTED]"
    unauthorized = next(
        json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines() if "bad20" in x
    )
    assert "Permission denied for key" in unauthorized["error"] and "[REDACTED]" in unauthorized["error"]


def _echo(key: str):  # type: ignore[no-untyped-def]
    responder = echoing_responder(key)

    def respond(request: httpx.Request) -> httpx.Response:
        status, body, headers = responder(json.loads(request.content))
        return httpx.Response(status, json=body, headers=headers)

    return respond


@pytest.mark.parametrize(
    "key", [GATEWAY_KEY, OPENAI_STYLE_KEY], ids=["its-own-key", "an-unregistered-sk-key"]
)
def test_library_results_and_ledger_hold_no_key(
    mock_api: Any, sleeps: list[float], key: str, ledger_target: str
) -> None:
    """The provider echoes the tier's own key, or (a proxy) a key extractkit was never given."""
    mock_api.post("/chat/completions").mock(side_effect=_echo(key))
    ledger = Ledger(ledger_target)
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, api_key=GATEWAY_KEY, max_reasks=1)
    with Extractor(Invoice, [tier], ledger=ledger) as ex:
        results = [ex.extract(ok_text(0, key))]
        results += [ex.extract(f"Doc-{i}\nFrom: Acme Ltd\nTotal: 5\n") for i in FAILING]
    assert results[0].ok and not any(r.ok for r in results[1:])
    seen = []
    for r in results:
        seen.append(str(r.error))
        for a in r.attempts:
            seen += [
                str(a.error),
                str(a.output),
                str(a.served_model),
                str(a.fingerprint),
                json.dumps(a.errors),
            ]
    assert all(key not in s for s in seen)
    assert any("[REDACTED]" in s for s in seen)
    tables = ledger.tables()
    assert {"runs", "extractions", "attempts", "documents"} <= set(tables)
    for t in tables:
        for row in ledger.query(f'SELECT * FROM "{t}"'):
            assert key not in " ".join(str(v) for v in row), t
    ledger.close()


def test_an_unregistered_key_is_caught_by_its_shape() -> None:
    from extractkit import _redact

    stray = "sk-ant-api03-Xy7Qw2Lm9Np4Rs8Tu1"  # never registered: another provider's key
    text = f"HTTP 401: bad key {stray}; header was Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"
    out = _redact.redact(text)
    assert stray not in out and "eyJhbGciOiJIUzI1NiJ9" not in out
    assert out == "HTTP 401: bad key [REDACTED]; header was Authorization: [REDACTED]"
    plain = "risk-free task-manager desk-top sk-8 plain text"
    assert _redact.redact(plain) == plain
    assert _redact.redact("fp_sk-live-abcdefgh1234") == "fp_[REDACTED]"


def test_registry_redacts_any_shape_and_ignores_short_placeholders() -> None:
    from extractkit import _redact

    _redact.register("local")  # the local server's placeholder key: not a secret
    _redact.register("gw_test_registry_value_42")
    assert _redact.redact("the local server") == "the local server"
    assert _redact.redact_json({"k gw_test_registry_value_42": ["x gw_test_registry_value_42", 3, None]}) == {
        "k [REDACTED]": ["x [REDACTED]", 3, None]
    }


def test_every_ledger_statement_is_redacted_whoever_writes_it(ledger_target: str) -> None:
    from extractkit import _redact

    _redact.register("gw_test_written_by_anyone_7")
    with Ledger(ledger_target) as ledger:
        run_id = ledger.start_run("batch", {"note": "gw_test_written_by_anyone_7"})
        with ledger.transaction() as c:  # a writer outside the ledger's own methods (fine-tune jobs do this)
            c.execute("UPDATE runs SET status = ? WHERE id = ?", ("done gw_test_written_by_anyone_7", run_id))
            c.executemany("UPDATE runs SET config_hash = :h WHERE id = :id",
                          [{"h": "Bearer gw_test_written_by_anyone_7", "id": run_id}])  # fmt: skip
        [row] = ledger.query("SELECT status, config_json, config_hash FROM runs")
    assert tuple(row) == ("done [REDACTED]", '{"note":"[REDACTED]"}', "Bearer [REDACTED]")


def test_cli_consoles_and_log_records_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    from extractkit import _redact
    from extractkit.cli._app import err, out

    _redact.register("gw_test_printed_value_99")
    out.print("value gw_test_printed_value_99 " * 10, highlight=False)
    err.print("[bold]error:[/] key gw_test_printed_value_99")
    record = logging.LogRecord(
        "openai", logging.WARNING, __file__, 1, "retrying with %s", ("gw_test_printed_value_99",), None
    )
    assert logging.lastResort is not None
    for f in logging.lastResort.filters:
        assert not isinstance(f, logging.Filter) or f.filter(record)
    captured = capsys.readouterr()
    assert "gw_test_printed_value_99" not in captured.out + captured.err
    assert "[REDACTED]" in captured.out and "[REDACTED]" in captured.err
    assert record.getMessage() == "retrying with [REDACTED]"


def test_an_uncaught_exception_in_the_cli_prints_no_key() -> None:
    code = (
        "import extractkit.cli._app\n"
        "raise RuntimeError('provider said: Incorrect API key provided: Bearer gw_live_crash_1234567')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)  # fmt: skip
    assert proc.returncode == 1
    assert "RuntimeError: provider said: Incorrect API key provided: [REDACTED]" in proc.stderr
    assert "gw_live_crash_1234567" not in proc.stderr
