"""Issue 14, section 3 and 6: the library API a new user meets first.

``from extractkit import Ledger``; ``Extractor(..., ledger=path)``; unknown keywords to
``extract`` / ``aextract`` are a ``TypeError``; a server on this machine needs no API key.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import respx

import extractkit
from extractkit import ConfigError, Extractor, ZeroShot

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, completion

DOC = "ACME Tools Ltd\nInvoice 7\nDate: 2024-03-15\nTotal due: 1,249.50 EUR\n"
GOOD = {"issuer": "ACME Tools Ltd", "total": 1249.5, "date": "2024-03-15"}


def zero(**kw) -> ZeroShot:
    kw.setdefault("model", "gpt-4o-mini")
    kw.setdefault("base_url", BASE_URL)
    return ZeroShot(**kw)


def answer_ok(route) -> None:
    route.mock(return_value=httpx.Response(200, json=completion(GOOD)))


# -- Ledger is exported, and a path is a ledger ----------------------------------------------


def test_ledger_is_importable_from_the_package():
    from extractkit import Ledger

    assert Ledger is extractkit.ledger.Ledger
    assert "Ledger" in extractkit.__all__


@pytest.mark.parametrize("as_path", [str, Path])
def test_extractor_opens_a_ledger_given_as_a_path_and_closes_it(mock_api, tmp_path, as_path):
    answer_ok(mock_api.post("/chat/completions"))
    db = tmp_path / "x.sqlite3"
    ex = Extractor(Invoice, [zero()], ledger=as_path(db))
    assert isinstance(ex.ledger, extractkit.Ledger) and ex.ledger.path == db
    result = ex.extract(DOC, path="invoices/7.txt", size=len(DOC), doc_type="txt")
    assert result.ok and result.extraction_id is not None
    opened = ex.ledger
    ex.close()
    with pytest.raises(Exception, match="closed"):  # closed by the extractor that opened it
        opened.conn.execute("SELECT 1")
    assert db_rows(db, "SELECT id, path FROM extractions") == [(result.extraction_id, "invoices/7.txt")]
    assert db_rows(db, "SELECT path, size, type FROM documents") == [("invoices/7.txt", len(DOC), "txt")]
    assert db_rows(db, "SELECT kind, status, n_documents, n_ok FROM runs") == [("library", "done", 1, 1)]
    # a later call reopens the file, as a later call starts a new event loop
    again = ex.extract(DOC)
    assert again.extraction_id is not None and again.extraction_id != result.extraction_id
    ex.close()
    assert len(db_rows(db, "SELECT id FROM extractions")) == 2


def test_a_ledger_given_as_an_object_is_left_open(mock_api, tmp_path):
    answer_ok(mock_api.post("/chat/completions"))
    with extractkit.Ledger(tmp_path / "l.sqlite3") as ledger:
        ex = Extractor(Invoice, [zero()], ledger=tmp_path / "l.sqlite3")
        assert isinstance(ex.ledger, extractkit.Ledger) and ex.ledger is not ledger
        ex.ledger = ledger  # replaced by its owner (the batch and eval pass theirs per call instead): not closed by ex
        ex.extract(DOC)
        ex.close()
        assert tuple(ledger.conn.execute("SELECT count(*) FROM extractions").fetchone()) == (1,)


async def test_aclose_closes_a_ledger_it_opened(mock_api, tmp_path):
    answer_ok(mock_api.post("/chat/completions"))
    db = tmp_path / "a.sqlite3"
    async with Extractor(Invoice, [zero()], ledger=str(db)) as ex:
        result = await ex.aextract(DOC)
        opened = ex.ledger
    assert result.extraction_id is not None and ex.ledger is None
    with pytest.raises(Exception, match="closed"):
        opened.conn.execute("SELECT 1")


@pytest.mark.parametrize("bad", [42, object(), {"path": "x.sqlite3"}, b"x.sqlite3"])
def test_anything_else_as_a_ledger_fails_at_construction(bad):
    with pytest.raises(TypeError, match="ledger must be a Ledger, a path or None"):
        Extractor(Invoice, [zero()], ledger=bad)


# -- unknown keywords are an error, not a ledger column ---------------------------------------


@pytest.mark.parametrize("with_ledger", [False, True])
def test_a_misplaced_keyword_to_extract_is_a_type_error(mock_api, tmp_path, with_ledger):
    route = mock_api.post("/chat/completions")
    answer_ok(route)
    ledger = tmp_path / "k.sqlite3" if with_ledger else None
    with Extractor(Invoice, [zero()], ledger=ledger) as ex:
        with pytest.raises(TypeError, match="raise_on_failure"):
            ex.extract(DOC, raise_on_failure=True)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="document_id"):
            asyncio.run(ex.aextract(DOC, document_id="d1"))  # type: ignore[call-arg]
    assert route.call_count == 0  # refused before anything was sent


# -- a server on this machine needs no key ----------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8080/v1", "http://localhost:11434/v1", "http://[::1]:8000/v1", "http://127.0.0.2/v1",
     "HTTP://LOCALHOST/v1"],
)  # fmt: skip
def test_a_loopback_server_needs_no_key(monkeypatch, base_url):
    monkeypatch.delenv("OPENAI_API_KEY")
    key = zero(base_url=base_url).resolve_api_key()
    assert key and key.isascii()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-set")  # a key that is set is still sent
    assert zero(base_url=base_url).resolve_api_key() == "sk-set"
    assert zero(base_url=base_url, api_key="sk-own").resolve_api_key() == "sk-own"


def test_a_loopback_openai_base_url_needs_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
    assert ZeroShot(model="m").resolve_api_key()


def test_any_other_server_still_needs_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    for base_url in [None, BASE_URL, "https://api.openai.com/v1", "http://10.0.0.5:8000/v1",
                     "http://127.0.0.1.example.com/v1"]:  # fmt: skip
        with pytest.raises(ConfigError, match="no API key"):
            ZeroShot(model="m", base_url=base_url).resolve_api_key()
    assert ZeroShot(model="m", base_url="http://127.0.0.1/v1").resolve_api_key()  # but this one not


def test_extracting_from_a_loopback_server_without_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    local = "http://127.0.0.1:8080/v1"
    with respx.mock(base_url=local, using="httpx") as router:
        route = router.post("/chat/completions")
        answer_ok(route)
        with Extractor(Invoice, [zero(base_url=local)]) as ex:
            result = ex.extract(DOC)
    assert result.ok and route.call_count == 1
    assert route.calls[0].request.headers["authorization"].startswith("Bearer ")
    assert json.loads(route.calls[0].request.content)["model"] == "gpt-4o-mini"


def test_the_cli_builds_a_loopback_tier_without_a_key(monkeypatch, tmp_path):
    from extractkit.cli._build import build

    monkeypatch.delenv("OPENAI_API_KEY")
    cfg = tmp_path / "extractkit.toml"
    cfg.write_text(
        'schema = "tests.conftest:Invoice"\n[[tiers]]\nkind = "zero_shot"\nmodel = "m"\n'
        'base_url = "http://localhost:8080/v1"\n'
    )
    ex, _ = build(cfg)  # checks every key before any request
    assert ex.tiers[0].resolve_api_key()
    cfg.write_text(cfg.read_text().replace("http://localhost:8080/v1", BASE_URL))
    with pytest.raises(ConfigError, match="no API key"):
        build(cfg)
