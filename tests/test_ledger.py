from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3

import httpx
import pytest

from extractkit import Extractor, ZeroShot
from extractkit.batch import RateLimiter
from extractkit.ledger import MIGRATIONS, Ledger, migrate

from .conftest import Invoice
from .fakes import BASE_URL, completion, error_body

DOC = "From: ACME Tools Ltd\nTotal: 1,249.50\n"


def test_migrations_on_an_empty_database():
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        assert migrate(conn) == [name for name, _ in MIGRATIONS]
        assert migrate(conn) == []  # applied once
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "documents", "extractions", "attempts", "schemas", "prompts"} <= tables


def test_migrations_on_an_older_database(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite3"
    with Ledger(path) as old:  # a ledger as the first release wrote it
        old.start_run("batch")
    newer = [*MIGRATIONS, ("0002_test_column", "ALTER TABLE runs ADD COLUMN note TEXT")]
    monkeypatch.setattr("extractkit.ledger._migrations.MIGRATIONS", newer)
    with Ledger(path) as ledger:
        assert ledger.applied == ["0002_test_column"]
        assert ledger.query("SELECT COUNT(*) AS n, MAX(note) AS note FROM runs")[0]["n"] == 1
        assert ledger.query("PRAGMA journal_mode")[0][0] == "wal"


def test_a_first_release_ledger_upgrades_to_eval_and_reports(tmp_path, monkeypatch):
    from extractkit.report import build_report

    from .ledger_fixtures import populate

    path = tmp_path / "v1.sqlite3"
    monkeypatch.setattr("extractkit.ledger._migrations.MIGRATIONS", MIGRATIONS[:1])
    conn = sqlite3.connect(path)
    migrate(conn)
    conn.close()
    monkeypatch.undo()
    with Ledger(path) as ledger:  # 0001 only on disk: 0002 is applied on open, then data goes in
        assert ledger.applied == [name for name, _ in MIGRATIONS[1:]]  # every later one
        populate(ledger, {"zero": 3, "few": 1})
        assert ledger.query("SELECT COUNT(*) FROM extractions WHERE forced_tier IS NULL")[0][0] == 4
        assert build_report(ledger)["totals"]["documents"] == 4


def test_library_extract_is_recorded(mock_api, ledger_target):
    mock_api.post("/chat/completions").mock(
        side_effect=[httpx.Response(200, json=completion({"issuer": "Nope", "total": 1249.5})),
                     httpx.Response(200, json=completion({"issuer": "ACME Tools Ltd", "total": 1249.5}))]
    )  # fmt: skip
    ledger = Ledger(ledger_target)
    ex = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)], ledger=ledger)
    result = ex.extract(DOC)
    [row] = ledger.query("SELECT * FROM extractions")
    assert (row["status"], row["tier"], row["n_attempts"]) == ("ok", "zero_shot", 2)
    assert row["document_sha256"] == result.document_sha256
    attempts = ledger.query("SELECT outcome, number, schema_hash, prompt_hash FROM attempts ORDER BY id")
    assert [(a["outcome"], a["number"]) for a in attempts] == [("ungrounded", 1), ("ok", 2)]
    assert attempts[0]["schema_hash"] == result.schema_hash
    assert ledger.query("SELECT text FROM documents")[0]["text"] == DOC
    assert ledger.query("SELECT kind FROM runs")[0]["kind"] == "library"
    # schema and prompt versions are stored once, with their source
    mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion({"issuer": "ACME Tools Ltd", "total": 1249.5}))
    )
    ex.extract(DOC + "again")
    assert ledger.query("SELECT COUNT(*) FROM extractions")[0][0] == 2
    [schema_row] = ledger.query("SELECT hash, name FROM schemas")
    assert tuple(schema_row) == (result.schema_hash, "Invoice")
    [prompt_row] = ledger.query("SELECT hash, source FROM prompts")
    assert prompt_row["hash"] == attempts[0]["prompt_hash"] and "{% block system" in prompt_row["source"]
    # one library run from the first call to close(), which marks it done with its counts
    [run] = ledger.query("SELECT status, n_documents, n_ok, n_failed, ended_at FROM runs")
    assert run["status"] == "running" and run["ended_at"] is None
    ex.close()
    [run] = ledger.query("SELECT status, n_documents, n_ok, n_failed FROM runs")
    assert tuple(run) == ("done", 2, 2, 0)
    ex.extract(DOC + "later")  # a new run
    assert [r["status"] for r in ledger.query("SELECT status FROM runs ORDER BY id")] == ["done", "running"]
    ex.close()
    ledger.close()


def test_store_text_off_keeps_no_text(mock_api, ledger_target):
    mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion({"issuer": "ACME Tools Ltd", "total": 1249.5}))
    )
    with Ledger(ledger_target, store_text=False) as ledger:
        Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)], ledger=ledger).extract(DOC)
        assert ledger.query("SELECT text FROM documents")[0]["text"] is None


def test_concurrent_writes_lose_nothing(mock_api, ledger_target):
    mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion({"issuer": "ACME Tools Ltd", "total": 1249.5}))
    )
    ledger = Ledger(ledger_target)
    ex = Extractor(Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)], ledger=ledger)

    async def many():
        async with ex:
            return await asyncio.gather(*(ex.aextract(DOC + f"ref {i}") for i in range(200)))

    results = asyncio.run(many())
    assert all(r.ok for r in results)
    assert ledger.query("SELECT COUNT(*) FROM extractions")[0][0] == 200
    assert ledger.query("SELECT COUNT(*) FROM attempts")[0][0] == 200
    assert ledger.query("SELECT COUNT(DISTINCT document_sha256) FROM extractions")[0][0] == 200
    assert ledger.integrity_check() == "ok"
    ledger.close()


def test_api_keys_are_never_stored(mock_api, monkeypatch, tmp_path):
    key = "sk-proj-SECRETSECRET1234567890"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(
            # 403: a 401 stops the extractor (ProviderRefused, tests/test_refused.py); any error body
            # may echo the key
            403, json=error_body(f"Permission denied for key: {key}", "permission_denied")
        )
    )
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    result = Extractor(
        Invoice, tiers=[ZeroShot(model="gpt-4o-mini", base_url=BASE_URL)], ledger=ledger
    ).extract(DOC)
    assert not result.ok
    ledger.close()
    with contextlib.closing(sqlite3.connect(path)) as con:
        dump = "\n".join(con.iterdump())
    assert "SECRETSECRET" not in dump and "[REDACTED]" in dump


@pytest.mark.parametrize(("rpm", "tpm", "tokens", "gaps"), [
    (600, None, 10, [0.1 / 0.97] * 4),          # one request every 60/rpm seconds
    (None, 60_000, 500, [0.5 / 0.97] * 4),      # 500 tokens at 1,000 tokens/s
])  # fmt: skip
def test_rate_limiter_paces_instead_of_bursting(monkeypatch, rpm, tpm, tokens, gaps):
    clock = [1000.0]
    slept: list[float] = []

    async def fake_sleep(s):
        slept.append(s)

    monkeypatch.setattr("extractkit.batch._limiter.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("extractkit.batch._limiter.asyncio.sleep", fake_sleep)
    limiter = RateLimiter(rpm, tpm)

    async def go():
        for _ in range(5):
            await limiter.acquire(tokens)

    asyncio.run(go())
    # with the clock standing still, request i waits i slots
    assert slept == pytest.approx([g * (i + 1) for i, g in enumerate(gaps)])


def test_an_extraction_and_its_attempts_are_written_together_or_not_at_all(ledger_target, monkeypatch):
    from .ledger_fixtures import COSTS, chain, result

    ex = chain()
    with Ledger(ledger_target) as ledger:

        def broken(*args, **kwargs):
            raise RuntimeError("disk on fire")

        monkeypatch.setattr("extractkit.ledger._ledger._attempt_row", broken)
        with pytest.raises(RuntimeError):
            ledger.record(ex, result(ex, "few", "ab", COSTS), text="doc")
        counts = [ledger.query(f"SELECT COUNT(*) FROM {t}")[0][0] for t in ("extractions", "documents", "attempts")]
        assert counts == [0, 0, 0]
        monkeypatch.undo()
        ledger.record(ex, result(ex, "few", "ab", COSTS), text="doc")  # the connection is usable again
        assert ledger.query("SELECT COUNT(*) FROM attempts")[0][0] == 3


def test_a_failing_query_is_a_ledger_error_naming_the_ledger(ledger_target):
    from extractkit import LedgerError

    with Ledger(ledger_target) as ledger, pytest.raises(LedgerError) as caught:
        ledger.query("SELECT nope FROM runs")
    assert ledger.target in str(caught.value) and "nope" in str(caught.value)


def test_result_carries_its_ledger_row(ledger_target, mock_api):
    mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion({"issuer": "ACME Ltd", "total": 5.0}))
    )
    tier = ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, api_key="sk-test")
    assert Extractor(Invoice, tiers=[tier]).extract("ACME Ltd total 5.00").extraction_id is None  # no ledger
    with Ledger(ledger_target) as ledger:
        result = Extractor(Invoice, tiers=[tier], ledger=ledger).extract("ACME Ltd total 5.00")
        [row] = ledger.query("SELECT id, value_json FROM extractions")
        assert result.extraction_id == row["id"] and json.loads(row["value_json"])["issuer"] == "ACME Ltd"
