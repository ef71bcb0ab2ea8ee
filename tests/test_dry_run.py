"""Issue 14, section 7: `extract --dry-run` lists the documents, the input tokens per document and
tier, and the cost per tier (first attempt, worst case); it sends nothing and records nothing.
Providers are faked with respx (any request would be counted, none may be made)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
import respx
from typer.testing import CliRunner

from extractkit import Extractor, Price, ZeroShot
from extractkit._tokens import count_request_tokens
from extractkit.cli._app import app

from .conftest import Invoice, db_rows
from .fakes import BASE_URL, completion

ANSWER = {"issuer": "Acme Ltd", "total": 12.5}


def doc(i: int) -> str:
    return f"INVOICE {i}\nIssuer: Acme Ltd\nTotal: 12.50\n" + "line item\n" * i


def run(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [str(a) for a in args])


def write_cfg(tmp: Path, model: str = "gpt-4o-mini", extra: str = "", batch: str = "") -> Path:
    cfg = tmp / "cfg.toml"
    cfg.write_text(
        f'schema = "tests.conftest:Invoice"\n[batch]\nconcurrency = 1\n{batch}\n'
        f'[[tiers]]\nkind = "zero_shot"\nmodel = "{model}"\nbase_url = "{BASE_URL}"\nretries = 1\n'
        f"max_output_tokens = 200\n{extra}\n"
        f'[[tiers]]\nkind = "zero_shot"\nname = "big"\nmodel = "gpt-4o"\nbase_url = "{BASE_URL}"\n'
        "retries = 0\nmax_output_tokens = 300\n"
    )
    return cfg


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    for i in range(3):
        (d / f"d{i}.txt").write_text(doc(i))
    (d / "copy.txt").write_text(doc(0))  # identical content: sent once
    (d / "empty.txt").write_text("")  # unreadable: the batch records `empty`
    (d / "photo.gif").write_bytes(b"\x89PNG")  # unsupported type: skipped
    return d


def _answer(mock_api: respx.MockRouter) -> respx.Route:
    return mock_api.post("/chat/completions").mock(
        return_value=httpx.Response(200, json=completion(ANSWER, usage=(1000, 50, 0)))
    )


def test_dry_run_sends_nothing_records_nothing_and_shows_resumed(tmp_path, docs, mock_api):
    route = _answer(mock_api)
    cfg, ledger = write_cfg(tmp_path), tmp_path / "l.sqlite3"
    # no ledger yet: the dry run does not create one
    dry = run("extract", docs, "-c", cfg, "--ledger", ledger, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert route.call_count == 0 and not ledger.exists()
    data = json.loads(dry.stdout)
    assert (data["documents"], data["to_send"], data["duplicates"], data["errors"], data["skipped"]) == (5, 3, 1, 1, 1)
    by_name = {Path(d["path"]).name: d for d in data["document_list"]}
    assert by_name["empty.txt"]["status"] == "error" and by_name["empty.txt"]["outcome"] == "empty"
    assert by_name["empty.txt"]["error"].startswith(str(docs / "empty.txt"))
    # copy.txt comes first in the walk: d0.txt, with the same text, would not be sent again
    assert by_name["d0.txt"]["status"] == "duplicate" and by_name["d0.txt"]["duplicate_of"].endswith("copy.txt")

    # a real run of one document, then the dry run over all: that one is skipped (resume)
    real = run("extract", docs / "d1.txt", "-c", cfg, "--ledger", ledger)
    assert real.exit_code == 0, real.output
    sent = route.call_count
    runs = db_rows(ledger, "SELECT id, status FROM runs")
    extractions = db_rows(ledger, "SELECT COUNT(*) FROM extractions")
    dry = run("extract", docs, "-c", cfg, "--ledger", ledger, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert route.call_count == sent  # nothing sent
    assert db_rows(ledger, "SELECT id, status FROM runs") == runs  # no run recorded
    assert db_rows(ledger, "SELECT COUNT(*) FROM extractions") == extractions
    data = json.loads(dry.stdout)
    by_name = {Path(d["path"]).name: d for d in data["document_list"]}
    assert by_name["d1.txt"]["status"] == "resumed" and data["to_send"] == 2 and data["resumed"] == 1
    assert data["tiers"][0]["documents"] == 2  # the resumed one is not counted in the bill

    # the terminal form says the same in words; --force would send it again
    text = run("extract", docs, "-c", cfg, "--ledger", ledger, "--dry-run")
    assert text.exit_code == 0, text.output
    assert "skipped: resumed" in text.stdout and "unreadable: empty" in text.stdout
    assert "nothing sent" in text.stdout
    forced = json.loads(run("extract", docs, "-c", cfg, "--ledger", ledger, "--dry-run", "--json",
                            "--force").stdout)  # fmt: skip
    assert forced["to_send"] == 3 and forced["resumed"] == 0
    assert route.call_count == sent


def test_tokens_are_those_of_the_request_the_run_sends(tmp_path, mock_api):
    """The estimate renders the real prompt (template, schema tool): it matches the body sent."""
    route = _answer(mock_api)
    (tmp_path / "a.txt").write_text(doc(7))
    cfg, ledger = write_cfg(tmp_path), tmp_path / "l.sqlite3"
    data = json.loads(run("extract", tmp_path / "a.txt", "-c", cfg, "--ledger", ledger, "--dry-run",
                          "--json").stdout)  # fmt: skip
    estimated = data["document_list"][0]["tokens"]["zero_shot"]
    assert run("extract", tmp_path / "a.txt", "-c", cfg, "--ledger", ledger).exit_code == 0
    body = json.loads(route.calls[0].request.content)
    assert estimated == count_request_tokens(body["messages"], body.get("tools") or body.get("response_format"))
    assert estimated > 100  # the system prompt and the schema are in it, not only the document


def test_cost_first_attempt_and_worst_case(tmp_path, docs, mock_api):
    from extractkit.batch._estimate import REASK_TOKENS

    route = _answer(mock_api)
    cfg = write_cfg(tmp_path)
    data = json.loads(run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.db", "--dry-run",
                          "--json").stdout)  # fmt: skip
    assert route.call_count == 0
    small, big = data["tiers"]
    assert (small["name"], small["attempts"], small["max_output_tokens"]) == ("zero_shot", 2, 200)
    assert (big["name"], big["attempts"], big["max_output_tokens"]) == ("big", 1, 300)
    n, tokens = small["documents"], small["input_tokens"]
    assert n == 3 and tokens == sum(d["tokens"]["zero_shot"] for d in data["document_list"] if d["status"] == "send")
    # gpt-4o-mini: $0.15 / $0.60 per 1M tokens
    assert small["first_usd"] == pytest.approx((tokens * 0.15 + n * 200 * 0.60) / 1e6)
    assert data["first_attempt_usd"] == small["first_usd"]
    # worst case: the re-ask quotes the first answer (at the cap) and an error message
    worst_in = 2 * tokens + n * (200 + REASK_TOKENS)
    assert small["worst_usd"] == pytest.approx((worst_in * 0.15 + n * 2 * 200 * 0.60) / 1e6)
    # gpt-4o: $2.50 / $10.00; one attempt
    assert big["worst_usd"] == pytest.approx((big["input_tokens"] * 2.5 + n * 300 * 10.0) / 1e6)
    assert data["worst_case_usd"] == pytest.approx(small["worst_usd"] + big["worst_usd"])
    assert data["price_unknown"] == []
    # with a ceiling below the first attempt's estimate, the dry run says about where it would stop
    per_doc = small["first_usd"] / n
    text = run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.db", "--dry-run", "--max-cost",
               f"{per_doc * 1.5:.8f}")  # fmt: skip
    assert text.exit_code == 0, text.output
    assert "after about 1 document" in text.stdout
    assert route.call_count == 0


def test_an_unknown_price_is_said_not_zero(tmp_path, docs, mock_api):
    route = _answer(mock_api)
    cfg = write_cfg(tmp_path, model="acme-gateway-model-7b")
    data = json.loads(run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.db", "--dry-run",
                          "--json").stdout)  # fmt: skip
    assert data["price_unknown"] == ["zero_shot"]
    assert data["tiers"][0]["first_usd"] is None and data["first_attempt_usd"] is None
    assert data["worst_case_usd"] is None  # a sum with an unknown part is unknown
    assert data["tiers"][1]["worst_usd"] > 0  # the priced tier still has its estimate
    text = run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.db", "--dry-run")
    assert "price unknown" in text.stdout and "set `price`" in text.stdout
    assert "$0.0000" not in text.stdout
    # with a ceiling the run would refuse to start: the dry run says so, exit 2
    refused = run("extract", docs, "-c", cfg, "--ledger", tmp_path / "l.db", "--dry-run", "--max-cost", "1")
    assert refused.exit_code == 2 and "zero_shot" in refused.output and "price" in refused.output
    assert route.call_count == 0


def test_a_dry_run_needs_no_api_key(tmp_path, docs, mock_api, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    route = _answer(mock_api)
    dry = run("extract", docs, "-c", write_cfg(tmp_path), "--ledger", tmp_path / "l.db", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert route.call_count == 0


def test_a_document_over_a_context_window_is_not_billed_to_that_tier(tmp_path, mock_api):
    route = _answer(mock_api)
    (tmp_path / "long.txt").write_text("Issuer: Acme Ltd\nTotal: 12.50\n" + "lorem ipsum " * 3000)
    cfg = write_cfg(tmp_path, extra='context_window = 2048\nlong_documents = "refuse"')
    data = json.loads(run("extract", tmp_path / "long.txt", "-c", cfg, "--ledger", tmp_path / "l.db",
                          "--dry-run", "--json").stdout)  # fmt: skip
    small, big = data["tiers"]
    assert (small["documents"], small["too_long"], small["input_tokens"]) == (0, 1, 0)
    assert (big["documents"], big["too_long"]) == (1, 0)
    assert data["document_list"][0]["too_long"] == ["zero_shot"]
    assert route.call_count == 0


def test_a_thousand_documents_are_counted_off_the_event_loop(tmp_path, monkeypatch):
    """Tokenising is CPU work: it runs in worker threads; 1,000 documents, each counted once."""
    import extractkit.batch._estimate as est_mod
    from extractkit.batch._estimate import estimate

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(1000):
        (folder / f"{i:04}.txt").write_text(doc(i % 50) + f"ref {i}\n")
    threads: list[bool] = []
    real_count = est_mod._count

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread() is threading.main_thread())
        return real_count(*args, **kwargs)

    monkeypatch.setattr(est_mod, "_count", spy)
    ex = Extractor(Invoice, [ZeroShot(model="gpt-4o-mini", base_url=BASE_URL, price=Price(1.0, 2.0))])
    result = asyncio.run(estimate(ex, [folder]))
    assert len(result.documents) == 1000 and result.count("send") == 1000
    assert len(threads) == 1000 and not any(threads)  # never on the event loop's thread
    assert result.tiers[0].input_tokens == sum(d.tokens["zero_shot"] for d in result.documents)
